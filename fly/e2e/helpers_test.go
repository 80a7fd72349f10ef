package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// waitTimeout bounds every wait for a condition: generous, because these tests run real processes built with
// -race on two cores beside other test binaries.
const waitTimeout = 60 * time.Second

// backendApp is the app new spaces are placed in: the router's default BACKEND_APP.
const backendApp = "spaceport-backend"

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freeAddrs returns n distinct loopback addresses whose ports are free now: all are held until all are chosen, so
// the kernel cannot hand out one port twice.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ln.Close() }()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// edge talks to the system's public URL, as a browser does.
type edge struct {
	base   string // http://host:port
	client *http.Client
	// admin is sent as a bearer token with every request when set (the router's ADMIN_TOKEN guards moves).
	admin string
}

func newEdge(t *testing.T, base string) *edge {
	t.Helper()
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	e := &edge{base: base, client: &http.Client{
		Transport:     transport,
		Timeout:       waitTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	// Ready means the router follows the directory's changes: a test that moves a space relies on the router
	// hearing of it (or, in TestFlylocal_StaleRouterCache, on its having heard everything before).
	stacktest.WaitUntil(t, waitTimeout, "the router's /readyz", func() error {
		status, b, err := e.call(http.MethodGet, "/readyz", nil)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("GET /readyz: status %d: %s", status, b)
		}
		return nil
	})
	return e
}

// call sends a request with an optional JSON body; it returns the status and the body, or an error if there was
// no answer.
func (e *edge) call(method, path string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.base+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.admin != "" {
		req.Header.Set("Authorization", "Bearer "+e.admin)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// mustCall sends a request that must be answered with status want and decodes the answer into out (if not nil).
func (e *edge) mustCall(t *testing.T, method, path string, body any, want int, out any) {
	t.Helper()
	status, b, err := e.call(method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

// wsURL is the WebSocket URL of a space on the edge, with a connection token when there is one.
func (e *edge) wsURL(spaceID, token string) string {
	u := "ws" + strings.TrimPrefix(e.base, "http") + "/api/replicache/websocket/" + spaceID
	if token != "" {
		u += "?token=" + url.QueryEscape(token)
	}
	return u
}

// token asks the router for a development token (POST /api/dev/token, served when the router runs with
// DEV_TOKENS=1), as the frontend does under `make dev`. It returns "" when the router serves none (auth off).
func (e *edge) token(t *testing.T) string {
	t.Helper()
	status, b, err := e.call(http.MethodPost, "/api/dev/token", map[string]string{})
	switch {
	case err != nil:
		t.Fatalf("POST /api/dev/token: %v", err)
	case status == http.StatusNotFound:
		return ""
	case status != http.StatusOK:
		t.Fatalf("POST /api/dev/token: status %d: %s", status, b)
	}
	var resp struct{ Token string }
	if err := json.Unmarshal(b, &resp); err != nil || resp.Token == "" {
		t.Fatalf("POST /api/dev/token answered %s (%v)", b, err)
	}
	return resp.Token
}

// space is a space as the router's API returns it.
type space struct {
	ID, App, Machine string
}

// machineInfo is a backend machine as GET /api/machines lists it.
type machineInfo struct {
	ID, App, State string
	Live           bool
}

// waitLiveMachines waits until the directory, read through the edge, lists exactly the backend machines ids as
// live: each has registered itself, so placement and moves can use it.
func (e *edge) waitLiveMachines(t *testing.T, ids ...string) {
	t.Helper()
	stacktest.WaitUntil(t, waitTimeout, fmt.Sprintf("backend machines %v live in the directory", ids), func() error {
		status, b, err := e.call(http.MethodGet, "/api/machines", nil)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("GET /api/machines: status %d: %s", status, b)
		}
		var resp struct{ Machines []machineInfo }
		if err := json.Unmarshal(b, &resp); err != nil {
			return fmt.Errorf("GET /api/machines: %w in %s", err, b)
		}
		live := map[string]bool{}
		for _, m := range resp.Machines {
			if m.App == backendApp && m.Live {
				live[m.ID] = true
			}
		}
		if len(live) != len(ids) {
			return fmt.Errorf("live machines %v", resp.Machines)
		}
		for _, id := range ids {
			if !live[id] {
				return fmt.Errorf("machine %s not live: %v", id, resp.Machines)
			}
		}
		return nil
	})
}

// createSpace creates a space through the edge. A 503 (no backend machine registered yet) is retried, as its
// Retry-After invites.
func (e *edge) createSpace(t *testing.T, id string) space {
	t.Helper()
	var sp space
	stacktest.WaitUntil(t, waitTimeout, "POST /api/spaces", func() error {
		status, b, err := e.call(http.MethodPost, "/api/spaces", map[string]string{"id": id})
		switch {
		case err != nil:
			return err
		case status == http.StatusServiceUnavailable:
			return fmt.Errorf("status %d: %s", status, b)
		case status != http.StatusCreated:
			t.Fatalf("POST /api/spaces: status %d, want 201: %s", status, b)
		}
		if err := json.Unmarshal(b, &sp); err != nil {
			t.Fatalf("POST /api/spaces: %v in %s", err, b)
		}
		return nil
	})
	if sp.ID != id || sp.App != backendApp || sp.Machine == "" {
		t.Fatalf("POST /api/spaces answered %+v", sp)
	}
	return sp
}

// getSpace reads a space's placement from the directory through the router.
func (e *edge) getSpace(t *testing.T, id string) space {
	t.Helper()
	var sp space
	e.mustCall(t, http.MethodGet, "/api/spaces/"+id, nil, http.StatusOK, &sp)
	return sp
}

// counter reads the number at key in a replica (0 when absent).
func counter(s *syncclient.State, key string) float64 {
	var n float64
	if raw, ok := s.Data[key]; ok {
		_ = json.Unmarshal(raw, &n)
	}
	return n
}

// sameData reports how two replicas' entries differ, or nil.
func sameData(a, b *syncclient.State) error {
	if len(a.Data) != len(b.Data) {
		return fmt.Errorf("%d entries against %d", len(a.Data), len(b.Data))
	}
	for k, va := range a.Data {
		vb, ok := b.Data[k]
		if !ok {
			return fmt.Errorf("%s missing from one replica", k)
		}
		if !jsonEqual(va, vb) {
			return fmt.Errorf("%s is %s against %s", k, va, vb)
		}
	}
	return nil
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

// testContext is a context for one test's client calls, ended with the test.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// waitMetric waits until the router's counter (a name without labels) on /metrics, read through the edge, is at
// least want.
func (e *edge) waitMetric(t *testing.T, name string, want float64) {
	t.Helper()
	stacktest.WaitUntil(t, waitTimeout, fmt.Sprintf("router metric %s >= %v", name, want), func() error {
		status, b, err := e.call(http.MethodGet, "/metrics", nil)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("GET /metrics: status %d", status)
		}
		for line := range strings.Lines(string(b)) {
			value, ok := strings.CutPrefix(strings.TrimSpace(line), name+" ")
			if !ok {
				continue
			}
			got, err := strconv.ParseFloat(value, 64)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if got < want {
				return fmt.Errorf("%s = %v", name, got)
			}
			return nil
		}
		return fmt.Errorf("/metrics has no %s", name)
	})
}
