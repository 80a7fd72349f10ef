package flylocal_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/internal/testmachine"
)

func TestMain(m *testing.M) { testmachine.Main(m) }

// waitTimeout bounds every wait for a condition in these tests.
const waitTimeout = 20 * time.Second

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// app returns the config of an app whose machines run the test machine.
func app(name string, machines int) flylocal.AppConfig {
	cmd, _ := testmachine.Command()
	return flylocal.AppConfig{Name: name, Machines: machines, Command: cmd}
}

// testConfig returns a config for apps, listening on a free loopback port, with a fresh state directory. The
// first app is the edge app.
func testConfig(t *testing.T, apps ...flylocal.AppConfig) flylocal.Config {
	t.Helper()
	_, env := testmachine.Command()
	return flylocal.Config{
		Listen:   "127.0.0.1:0",
		StateDir: t.TempDir(),
		Env:      env,
		Apps:     apps,
	}
}

// testServer is a running flylocal with what it logged.
type testServer struct {
	*flylocal.Server
	output, logs *syncBuffer
	client       *http.Client
}

// newServer creates a server for cfg without opening it; it is closed when the test ends.
func newServer(t *testing.T, cfg flylocal.Config) *testServer {
	t.Helper()
	ts := &testServer{output: &syncBuffer{}, logs: &syncBuffer{}}
	logger := slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := flylocal.NewServer(cfg, logger, ts.output)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ts.Server = srv
	transport := &http.Transport{}
	ts.client = &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       waitTimeout,
	}
	t.Cleanup(func() {
		transport.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() || os.Getenv("FLYLOCAL_TEST_LOGS") != "" {
			t.Logf("flylocal log:\n%s", ts.logs.String())
			t.Logf("machine output:\n%s", ts.output.String())
		}
	})
	return ts
}

// openServer creates and opens a server for cfg.
func openServer(t *testing.T, cfg flylocal.Config) *testServer {
	t.Helper()
	ts := newServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := ts.Open(ctx); err != nil {
		t.Fatalf("Open: %v", err)
	}
	return ts
}

// do sends a request to the edge and returns the response with its body read.
func (ts *testServer) do(t *testing.T, method, path string, body io.Reader, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

// echo sends a request that must be answered 200 by a test machine and returns what the machine saw.
func (ts *testServer) echo(t *testing.T, method, path string, body io.Reader, header http.Header) testmachine.Echo {
	t.Helper()
	resp, b := ts.do(t, method, path, body, header)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: status %d, body %s", method, path, resp.StatusCode, b)
	}
	var e testmachine.Echo
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("%s %s: %v in %s", method, path, err, b)
	}
	return e
}

// proxyError sends a request that the proxy must answer itself with status and Fly error code.
func (ts *testServer) proxyError(t *testing.T, status int, code, path string, header http.Header) string {
	t.Helper()
	resp, b := ts.do(t, http.MethodGet, path, nil, header)
	var e struct{ Error, Code string }
	if err := json.Unmarshal(b, &e); err != nil || resp.StatusCode != status || e.Code != code {
		t.Fatalf("GET %s: status %d body %s, want status %d with code %s", path, resp.StatusCode, b, status, code)
	}
	if e.Error == "" {
		t.Fatalf("GET %s: error response without a message: %s", path, b)
	}
	return e.Error
}

// machines returns the machines of app.
func (ts *testServer) machines(t *testing.T, app string, n int) []flylocal.Machine {
	t.Helper()
	ms := ts.Supervisor.Machines(app)
	if len(ms) != n {
		t.Fatalf("app %s has %d machines, want %d", app, len(ms), n)
	}
	return ms
}

// waitState waits until machine id is in state.
func (ts *testServer) waitState(t *testing.T, id string, state flylocal.State) {
	t.Helper()
	waitFor(t, "machine "+id+" "+string(state), func() bool {
		st, err := ts.Supervisor.State(id)
		return err == nil && st == state
	})
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func boolPtr(b bool) *bool { return &b }
