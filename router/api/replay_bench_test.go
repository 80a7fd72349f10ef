package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/fly/replay"
	"github.com/spaceport-sync/spaceport/router/api"
	"github.com/spaceport-sync/spaceport/router/routecache"
)

// benchSpaces is how many spaces the replay benchmarks spread requests over.
const benchSpaces = 1024

// benchDatabaseEnv names a Postgres URL for the benchmarks (scripts/bench
// passes its durable cluster); unset, they use a throwaway test database.
const benchDatabaseEnv = "SPACEPORT_BENCH_DATABASE_URL"

// BenchmarkReplay measures replay decisions over real HTTP/1.1 keep-alive
// connections from many concurrent clients, as the edge sends them: the
// router with every answer in its cache ("hit"), the router with every
// lookup going to Postgres ("miss": a placement TTL of 1ns), and, as the
// ceiling of this machine, a bare chi handler that returns a constant
// fly-replay header ("bare-chi"); the router checks each request's token,
// as deployed ("hit-noauth" is the router without auth). Each runs with one connection (the latency
// of a request on an idle server) and with benchConnections (the most
// decisions per second). Besides ns/op it reports decisions/s and the p50
// and p99 latency of one request.
func BenchmarkReplay(b *testing.B) {
	ids, dir := benchDirectory(b)
	for _, bc := range benchHandlers(b, dir) {
		for _, conns := range []int{1, benchConnections} {
			b.Run(fmt.Sprintf("%s/conns=%d", bc.name, conns), func(b *testing.B) { benchHTTP(b, bc.handler, ids, conns) })
		}
	}
}

// BenchmarkReplayHandler measures the same three handlers in memory, without
// sockets: what a decision costs the router itself.
func BenchmarkReplayHandler(b *testing.B) {
	ids, dir := benchDirectory(b)
	for _, bc := range benchHandlers(b, dir) {
		b.Run(bc.name, func(b *testing.B) {
			reqs := make([]*http.Request, len(ids))
			for i, id := range ids {
				reqs[i] = httptest.NewRequest(http.MethodGet, "/api/replicache/websocket/"+id+"?token="+benchToken, nil)
			}
			warm(b, bc.handler, reqs)
			var next atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{h: http.Header{}}
				for pb.Next() {
					clear(w.h)
					w.status = 0
					bc.handler.ServeHTTP(w, reqs[next.Add(1)%uint64(len(reqs))])
					if w.status != http.StatusTemporaryRedirect {
						b.Errorf("status %d", w.status)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		})
	}
}

func warm(b *testing.B, h http.Handler, reqs []*http.Request) {
	b.Helper()
	for _, r := range reqs {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code != http.StatusTemporaryRedirect || rec.Header().Get(replay.Header) == "" {
			b.Fatalf("%s: status %d, fly-replay %q", r.URL.Path, rec.Code, rec.Header().Get(replay.Header))
		}
	}
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

// benchDirectory is a directory with one live machine and benchSpaces spaces
// placed on it.
func benchDirectory(b *testing.B) ([]string, *directory.Directory) {
	b.Helper()
	url := os.Getenv(benchDatabaseEnv)
	if url == "" {
		url = pgtest.NewDatabase(b)
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	dir, err := directory.Open(ctx, pool, directory.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if err := dir.RegisterMachine(ctx, directory.Machine{ID: m1, App: app, Region: "local"}); err != nil {
		b.Fatal(err)
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	ids := make([]string, benchSpaces)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%s-%d", run, i)
		if _, err := dir.CreateSpace(ctx, ids[i], app); err != nil {
			b.Fatal(err)
		}
	}
	return ids, dir
}

// benchSecret is the AUTH_SECRET of the benchmarks' routers, and benchToken
// a token it signed for every space, sent with every request.
const benchSecret = "bench-secret-bench-secret-bench-secret"

var benchToken = func() string {
	k, err := auth.NewKeys(benchSecret)
	if err != nil {
		panic(err)
	}
	t, err := k.Issue(auth.Grant{UserID: "bench", Spaces: "*", Role: mutator.RoleEditor, TTL: 24 * time.Hour})
	if err != nil {
		panic(err)
	}
	return t
}()

type benchHandler struct {
	name    string
	handler http.Handler
}

// benchHandlers are the handlers compared: the bare chi ceiling; the router
// as deployed (token checked, replay secret in the answer) at cache hit and
// at cache miss; and the router without auth at cache hit, which shows what
// the token check costs.
func benchHandlers(b *testing.B, dir *directory.Directory) []benchHandler {
	bare := chi.NewRouter()
	bareReplay := replay.Replay{App: app, Instance: m1}.String()
	bare.Get("/api/replicache/websocket/{spaceID}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(replay.Header, bareReplay)
		w.WriteHeader(http.StatusTemporaryRedirect)
		_, _ = io.WriteString(w, "replay to "+m1+"\n")
	})
	keys, err := auth.NewKeys(benchSecret)
	if err != nil {
		b.Fatal(err)
	}
	deployed := api.Config{Directory: dir, App: app, Auth: keys, ReplaySecret: "bench-replay-secret"}
	miss := deployed
	miss.Cache = routecache.Config{TTL: time.Nanosecond}
	noAuth := deployed
	noAuth.Auth, noAuth.ReplaySecret = nil, ""
	return []benchHandler{
		{"bare-chi", bare},
		{"hit", benchRouter(b, deployed)},
		{"miss", benchRouter(b, miss)},
		{"hit-noauth", benchRouter(b, noAuth)},
	}
}

// benchRouter is the router's handler; its invalidation goroutine runs as
// in production.
func benchRouter(b *testing.B, cfg api.Config) http.Handler {
	b.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := api.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.RunInvalidation(ctx) })
	b.Cleanup(func() { cancel(); wg.Wait() })
	return srv
}

// benchConnections is the number of keep-alive connections sending requests
// one after another, enough to keep the server busy.
const benchConnections = 32

// benchHTTP serves h on a real socket and sends it b.N requests from conns
// concurrent keep-alive connections, with a minimal HTTP/1.1 client so that
// the client's own cost stays small next to the server's.
func benchHTTP(b *testing.B, h http.Handler, ids []string, conns int) {
	ts := httptest.NewUnstartedServer(h)
	ts.Config.ErrorLog = nil
	ts.Start()
	defer ts.Close()
	addr := strings.TrimPrefix(ts.URL, "http://")
	reqs := make([][]byte, len(ids))
	for i, id := range ids {
		reqs[i] = []byte("GET /api/replicache/websocket/" + id + "?token=" + benchToken + " HTTP/1.1\r\nHost: " + addr +
			"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	}
	// Warm the cache (and the connections' code paths).
	c, err := dialRaw(addr)
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range reqs {
		status, replayHeader, err := c.do(r)
		if err != nil || status != http.StatusTemporaryRedirect || !strings.Contains(replayHeader, m1) {
			b.Fatalf("warm-up: status %d, fly-replay %q, err %v", status, replayHeader, err)
		}
	}
	c.close()

	clients := make([]*rawClient, conns)
	for i := range clients {
		if clients[i], err = dialRaw(addr); err != nil {
			b.Fatal(err)
		}
		defer clients[i].close()
	}
	var (
		sent atomic.Int64
		mu   sync.Mutex
		lat  []time.Duration
		wg   sync.WaitGroup
	)
	b.ResetTimer()
	for w, c := range clients {
		wg.Go(func() {
			local := make([]time.Duration, 0, 1024)
			for i := w; sent.Add(1) <= int64(b.N); i += conns {
				start := time.Now()
				status, _, err := c.do(reqs[i%len(reqs)])
				local = append(local, time.Since(start))
				if err != nil || status != http.StatusTemporaryRedirect {
					b.Errorf("status %d, err %v", status, err)
					return
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
		b.ReportMetric(q(0.50), "p50-µs")
		b.ReportMetric(q(0.99), "p99-µs")
	}
}

// rawClient speaks just enough HTTP/1.1 to send a GET and read an answer
// with a Content-Length.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(addr string) (*rawClient, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &rawClient{conn: conn, br: bufio.NewReaderSize(conn, 4096)}, nil
}

func (c *rawClient) close() { _ = c.conn.Close() }

func (c *rawClient) do(req []byte) (status int, replayHeader string, err error) {
	if _, err := c.conn.Write(req); err != nil {
		return 0, "", err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, "", err
	}
	if len(line) < 12 {
		return 0, "", fmt.Errorf("bad status line %q", line)
	}
	status, _ = strconv.Atoi(string(line[9:12]))
	length := -1
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return 0, "", err
		}
		if len(line) <= 2 {
			break
		}
		name, value, _ := strings.Cut(string(line), ":")
		switch strings.ToLower(name) {
		case "content-length":
			length, _ = strconv.Atoi(strings.TrimSpace(value))
		case strings.ToLower(replay.Header):
			replayHeader = strings.TrimSpace(value)
		}
	}
	if length < 0 {
		return 0, "", fmt.Errorf("answer without Content-Length")
	}
	_, err = c.br.Discard(length)
	return status, replayHeader, err
}
