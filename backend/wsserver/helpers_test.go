package wsserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/mutator/mutatortest"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/backend/todoapp"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// backend is one in-process backend machine on a real socket and a real
// Postgres.
type backend struct {
	t      testing.TB
	name   string
	pool   *pgxpool.Pool
	store  *store.Store
	spaces *space.Manager
	srv    *wsserver.Server
	http   *httptest.Server
}

type backendOpts struct {
	space space.Config
	ws    wsserver.Config
}

func quietLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(&testWriter{t}, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func startBackend(t testing.TB, dbURL, name string, opts backendOpts) *backend {
	t.Helper()
	st, pool := storetest.Open(t, dbURL)
	reg := mutator.NewRegistry()
	todoapp.Register(reg)
	mutatortest.Register(reg)
	log := quietLogger(t)
	opts.space.Owner, opts.space.Logger = name, log
	opts.ws.MachineID, opts.ws.Region, opts.ws.Logger = name, "test", log
	spaces := space.NewManager(opts.space, st, reg)
	srv := wsserver.New(opts.ws, spaces)
	b := &backend{t: t, name: name, pool: pool, store: st, spaces: spaces, srv: srv, http: httptest.NewServer(srv.Handler())}
	t.Cleanup(b.stop)
	return b
}

func (b *backend) stop() {
	if b.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.srv.Shutdown(ctx); err != nil {
		b.t.Errorf("shutdown %s: %v", b.name, err)
	}
	b.http.Close()
	b.pool.Close()
	b.http = nil
}

func (b *backend) url(spaceID string) string {
	return "ws" + strings.TrimPrefix(b.http.URL, "http") + "/api/replicache/websocket/" + spaceID
}

func (b *backend) dial(t testing.TB, spaceID string, o syncclient.Options) *syncclient.Client {
	t.Helper()
	c := b.dialWelcome(t, spaceID, o)
	// Wait for the session to be live: the first poke.
	if err := c.WaitPokes(testCtx(t), 1); err != nil {
		t.Fatalf("client never got its first poke: %v (errors %v)", err, c.Errors())
	}
	return c
}

// dialWelcome connects and waits only for the welcome (sessions that get no
// pokes: unserved schema, forgotten group).
func (b *backend) dialWelcome(t testing.TB, spaceID string, o syncclient.Options) *syncclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := syncclient.Dial(ctx, b.url(spaceID), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	if err := c.WaitWelcome(ctx); err != nil {
		t.Fatalf("no welcome: %v", err)
	}
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustMutate(t testing.TB, c *syncclient.Client, name string, args any) {
	t.Helper()
	ctx := testCtx(t)
	m, err := c.Mutate(ctx, name, args)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitLMID(ctx, m.ID); err != nil {
		t.Fatalf("mutation %d never confirmed: %v", m.ID, err)
	}
}

func noErrors(t testing.TB, cs ...*syncclient.Client) {
	t.Helper()
	for _, c := range cs {
		if errs := c.Errors(); len(errs) > 0 {
			t.Fatalf("client %s saw protocol errors: %v", c.ClientID, errs)
		}
	}
}

func todo(t testing.TB, s *syncclient.State, id string) todoapp.Todo {
	t.Helper()
	var td todoapp.Todo
	raw, ok := s.Data["todo/"+id]
	if !ok {
		t.Fatalf("todo %s missing from replica (keys %v)", id, keys(s))
	}
	if err := json.Unmarshal(raw, &td); err != nil {
		t.Fatal(err)
	}
	return td
}

func keys(s *syncclient.State) []string {
	var out []string
	for k := range s.Data {
		out = append(out, k)
	}
	return out
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// waitUntil polls cond until it holds, failing the test after a generous
// deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitClosed waits until the server closed c, failing the test after a
// generous deadline.
func waitClosed(t testing.TB, c *syncclient.Client) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("connection not closed")
	}
}
