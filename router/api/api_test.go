package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/fly/replay"
	"github.com/spaceport-sync/spaceport/router/api"
	"github.com/spaceport-sync/spaceport/router/routecache"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Machine IDs in Fly's form (14 lowercase hex), so the fly-replay headers the
// router writes also pass replay.Validate.
const (
	m1  = "148ed193b95068"
	m2  = "e784079b449483"
	app = "spaceport-backend"
)

// testRouter is one router process: its own pool, directory, server and
// invalidation goroutine, on a shared database.
type testRouter struct {
	t   *testing.T
	dir *directory.Directory
	srv *api.Server
	url string
}

type routerOpts struct {
	auth        *auth.Keys
	devTokens   bool
	replaySec   string
	cache       routecache.Config
	staticDir   string
	adminAuth   func(http.Handler) http.Handler
	noListening bool
	clusters    []string // placement clusters of the router's directory
}

func newRouter(t *testing.T, dbURL string, o routerOpts) *testRouter {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	dir, err := directory.Open(ctx, pool, directory.Config{
		Logger: log, ListenRetryMin: 10 * time.Millisecond, ListenRetryMax: 100 * time.Millisecond, Clusters: o.clusters,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Config{
		Directory: dir, App: app, StaticDir: o.staticDir, Cache: o.cache, AdminAuth: o.adminAuth, Logger: log,
		Auth: o.auth, DevTokens: o.devTokens, ReplaySecret: o.replaySec,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if !o.noListening {
			srv.RunInvalidation(ctx)
		}
	}()
	t.Cleanup(func() {
		stop()
		<-done
		ts.Close()
		pool.Close()
	})
	r := &testRouter{t: t, dir: dir, srv: srv, url: ts.URL}
	if !o.noListening {
		r.waitMetric("spaceport_router_directory_listen_resets_total", 1)
	}
	return r
}

func (r *testRouter) register(ids ...string) {
	r.t.Helper()
	for _, id := range ids {
		if err := r.dir.RegisterMachine(context.Background(), directory.Machine{ID: id, App: app, Region: "local"}); err != nil {
			r.t.Fatal(err)
		}
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r *testRouter) do(method, path, body string) response {
	r.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, r.url+path, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// connect asks for a WebSocket to space id the way a browser does, and
// returns the router's answer.
func (r *testRouter) connect(id string) response {
	r.t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.url+"/api/replicache/websocket/"+id, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// replayTarget asserts a 307 replay answer and returns the machine it names.
func (r *testRouter) replayTarget(id string) string {
	r.t.Helper()
	resp := r.connect(id)
	if resp.status != http.StatusTemporaryRedirect {
		r.t.Fatalf("connect %s: status %d (%s), want 307", id, resp.status, resp.body)
	}
	rp, err := replay.Parse(resp.header.Get(replay.Header))
	if err != nil {
		r.t.Fatalf("connect %s: fly-replay %q: %v", id, resp.header.Get(replay.Header), err)
	}
	if err := rp.Validate(); err != nil {
		r.t.Fatalf("connect %s: fly-replay %q: %v", id, resp.header.Get(replay.Header), err)
	}
	if rp.App != app {
		r.t.Fatalf("connect %s: replay app %q, want %q", id, rp.App, app)
	}
	return rp.Instance
}

// metric scrapes /metrics and returns the value of the series whose name
// and labels are exactly series (e.g. `x_total{outcome="replayed"}`).
func (r *testRouter) metric(series string) float64 {
	r.t.Helper()
	resp := r.do(http.MethodGet, "/metrics", "")
	sc := bufio.NewScanner(strings.NewReader(string(resp.body)))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if ok && name == series {
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				r.t.Fatalf("metric %s: %v", series, err)
			}
			return v
		}
	}
	r.t.Fatalf("metric %s not found in /metrics", series)
	return 0
}

func (r *testRouter) waitMetric(series string, want float64) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.metric(series) < want {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s >= %v", series, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func wantError(t *testing.T, resp response, status int, code string) {
	t.Helper()
	if resp.status != status {
		t.Fatalf("status %d (%s), want %d %s", resp.status, resp.body, status, code)
	}
	if ct := resp.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q, want application/json", ct)
	}
	var e struct{ Error, Message string }
	if err := json.Unmarshal(resp.body, &e); err != nil {
		t.Fatalf("error body %q: %v", resp.body, err)
	}
	if e.Error != code || e.Message == "" {
		t.Fatalf("error body %s, want code %q and a message", resp.body, code)
	}
}

type spaceBody struct {
	ID, App, Machine  string
	CreatedAt         time.Time
	Cluster, MovingTo string
}

func decode[T any](t *testing.T, resp response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(resp.body, &v); err != nil {
		t.Fatalf("decode %s: %v", resp.body, err)
	}
	return v
}

func TestReplay_HitNeverUpgrades(t *testing.T) {
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{})
	r.register(m1)
	if resp := r.do(http.MethodPost, "/api/spaces", `{"id":"todo-1"}`); resp.status != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.status, resp.body)
	}

	// A real WebSocket client gets the replay answer, not an upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, r.url+"/api/replicache/websocket/todo-1", nil)
	if err == nil {
		conn.CloseNow()
		t.Fatal("router upgraded a WebSocket; it must only answer with fly-replay")
	}
	if resp == nil || resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("dial: %v, response %+v; want 307", err, resp)
	}
	rp, err := replay.Parse(resp.Header.Get(replay.Header))
	if err != nil || rp.App != app || rp.Instance != m1 {
		t.Fatalf("fly-replay %q = %+v, %v; want app=%s;instance=%s", resp.Header.Get(replay.Header), rp, err, app, m1)
	}

	// Repeated asks are cache hits. (The creation's own NOTIFY may arrive
	// after the first ask and evict the entry, as it must, and a reconnect
	// of the change feed purges the cache; so a round that missed is tried
	// again, and some round must hit.)
	asks := 1
	for attempt := 0; ; attempt++ {
		misses := r.metric("spaceport_router_cache_misses_total")
		for range 2 {
			asks++
			if got := r.replayTarget("todo-1"); got != m1 {
				t.Fatalf("replay to %s, want %s", got, m1)
			}
		}
		got := r.metric("spaceport_router_cache_misses_total")
		if got == misses {
			break
		}
		if attempt == 5 {
			t.Fatalf("cache misses went from %v to %v on repeated asks", misses, got)
		}
	}
	if got := r.metric(`spaceport_router_replay_decisions_total{outcome="replayed"}`); got != float64(asks) {
		t.Fatalf("replayed decisions = %v, want %d", got, asks)
	}
	// Every directory read was a cache miss: hits never read.
	if got, misses := r.metric(`spaceport_router_directory_lookup_duration_seconds_count{result="found"}`), r.metric("spaceport_router_cache_misses_total"); got != misses {
		t.Fatalf("directory lookups = %v, cache misses = %v", got, misses)
	}
	body := r.connect("todo-1").body
	if len(body) > 64 {
		t.Fatalf("replay body is %d bytes, want a tiny one", len(body))
	}
}

func TestReplay_UnknownSpace(t *testing.T) {
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{
		cache: routecache.Config{NegativeTTL: time.Hour}, noListening: true,
	})
	r.register(m1)
	wantError(t, r.connect("ghost"), http.StatusNotFound, "space_not_found")

	// Created behind this router's back (it follows no notifications here):
	// the negative answer is cached and still served.
	if _, err := r.dir.CreateSpace(context.Background(), "ghost", app); err != nil {
		t.Fatal(err)
	}
	wantError(t, r.connect("ghost"), http.StatusNotFound, "space_not_found")
	if got := r.metric(`spaceport_router_directory_lookup_duration_seconds_count{result="not_found"}`); got != 1 {
		t.Fatalf("directory reads for the unknown space = %v, want 1 (second answer from the cache)", got)
	}
	if got := r.metric(`spaceport_router_replay_decisions_total{outcome="not_found"}`); got != 2 {
		t.Fatalf("not_found decisions = %v, want 2", got)
	}
}

func TestReplay_CreatedSpaceFoundAtOnceByOtherRouter(t *testing.T) {
	db := pgtest.NewDatabase(t)
	a := newRouter(t, db, routerOpts{})
	b := newRouter(t, db, routerOpts{cache: routecache.Config{NegativeTTL: time.Hour}})
	a.register(m1)
	wantError(t, b.connect("later"), http.StatusNotFound, "space_not_found")
	if resp := a.do(http.MethodPost, "/api/spaces", `{"id":"later"}`); resp.status != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.status, resp.body)
	}
	// B cached "no such space" for an hour; the create's NOTIFY drops it.
	deadline := time.Now().Add(10 * time.Second)
	for b.connect("later").status != http.StatusTemporaryRedirect {
		if time.Now().After(deadline) {
			t.Fatal("router B still answers 404 for a space created through router A")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReplay_InvalidIDs(t *testing.T) {
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{})
	for _, id := range []string{"", "a%20b", "a/b", "bad.id", "%C3%BC", strings.Repeat("x", 65), "a;b"} {
		wantError(t, r.connect(id), http.StatusBadRequest, "invalid_space_id")
	}
	if got := r.metric("spaceport_router_cache_misses_total"); got != 0 {
		t.Fatalf("invalid IDs reached the cache: %v misses", got)
	}
	if got := r.metric(`spaceport_router_replay_decisions_total{outcome="invalid_id"}`); got != 7 {
		t.Fatalf("invalid_id decisions = %v, want 7", got)
	}
}

func TestReplay_DirectoryDown(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	r := newRouter(t, cluster.URL("spaceport"), routerOpts{})
	r.register(m1)
	if resp := r.do(http.MethodPost, "/api/spaces", `{"id":"warm"}`); resp.status != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.status, resp.body)
	}
	// The creation's NOTIFY evicts "warm"; let it arrive before caching it.
	r.waitMetric("spaceport_router_directory_changes_total", 1)
	if got := r.replayTarget("warm"); got != m1 {
		t.Fatalf("replay to %s, want %s", got, m1)
	}

	if err := cluster.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	resp := r.connect("cold")
	wantError(t, resp, http.StatusServiceUnavailable, "directory_unavailable")
	if ra := resp.header.Get("Retry-After"); ra != "2" {
		t.Fatalf("Retry-After %q, want 2", ra)
	}
	// Known placements keep routing from the cache while Postgres is away.
	if got := r.replayTarget("warm"); got != m1 {
		t.Fatalf("cached replay to %s, want %s", got, m1)
	}
	resp = r.do(http.MethodGet, "/readyz", "")
	wantError(t, resp, http.StatusServiceUnavailable, "directory_unavailable")
	if resp.header.Get("Retry-After") == "" {
		t.Fatal("readyz 503 without Retry-After")
	}
	if resp := r.do(http.MethodGet, "/healthz", ""); resp.status != http.StatusOK {
		t.Fatalf("healthz with Postgres down: %d, want 200 (the process is up)", resp.status)
	}
	wantError(t, r.do(http.MethodPost, "/api/spaces", ""), http.StatusServiceUnavailable, "directory_unavailable")
	wantError(t, r.do(http.MethodGet, "/api/spaces", ""), http.StatusServiceUnavailable, "directory_unavailable")
	if got := r.metric(`spaceport_router_replay_decisions_total{outcome="unavailable"}`); got != 1 {
		t.Fatalf("unavailable decisions = %v, want 1", got)
	}
}

func TestInvalidation_MoveSeenByOtherRouterAtOnce(t *testing.T) {
	db := pgtest.NewDatabase(t)
	// A TTL of an hour: only the NOTIFY can make B answer differently.
	a := newRouter(t, db, routerOpts{cache: routecache.Config{TTL: time.Hour}})
	b := newRouter(t, db, routerOpts{cache: routecache.Config{TTL: time.Hour}})
	a.register(m1, m2)
	if resp := a.do(http.MethodPost, "/api/spaces", `{"id":"doc"}`); resp.status != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.status, resp.body)
	}
	if got := b.replayTarget("doc"); got != m1 {
		t.Fatalf("B replays doc to %s, want %s", got, m1)
	}
	if got := b.replayTarget("doc"); got != m1 {
		t.Fatalf("B replays doc to %s, want %s", got, m1)
	}

	resp := a.do(http.MethodPut, "/api/spaces/doc/machine", `{"machine":"`+m2+`"}`)
	if resp.status != http.StatusOK {
		t.Fatalf("move: %d %s", resp.status, resp.body)
	}
	if sp := decode[spaceBody](t, resp); sp.Machine != m2 {
		t.Fatalf("move answered %+v, want machine %s", sp, m2)
	}
	if got := a.replayTarget("doc"); got != m2 {
		t.Fatalf("A replays doc to %s right after moving it, want %s", got, m2)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.replayTarget("doc") != m2 {
		if time.Now().After(deadline) {
			t.Fatal("router B still replays doc to its old machine")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := b.metric("spaceport_router_directory_listen_resets_total"); got != 1 {
		t.Fatalf("B's listener reset %v times, want 1: the eviction must come from the NOTIFY, not a purge", got)
	}
}

func TestSpacesAPI(t *testing.T) {
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{})
	r.register(m1, m2)

	// Create: generated ID, chosen ID, duplicate, bad input.
	resp := r.do(http.MethodPost, "/api/spaces", "")
	if resp.status != http.StatusCreated {
		t.Fatalf("create without body: %d %s", resp.status, resp.body)
	}
	gen := decode[spaceBody](t, resp)
	if gen.ID == "" || gen.App != app || gen.Machine != m1 || gen.CreatedAt.IsZero() {
		t.Fatalf("create without body = %+v", gen)
	}
	if loc := resp.header.Get("Location"); loc != "/api/spaces/"+gen.ID {
		t.Fatalf("Location %q", loc)
	}
	resp = r.do(http.MethodPost, "/api/spaces", `{"id":"todo-1"}`)
	if resp.status != http.StatusCreated {
		t.Fatalf("create todo-1: %d %s", resp.status, resp.body)
	}
	if sp := decode[spaceBody](t, resp); sp.ID != "todo-1" || sp.Machine != m2 {
		t.Fatalf("create todo-1 = %+v, want on %s (fewest spaces)", sp, m2)
	}
	wantError(t, r.do(http.MethodPost, "/api/spaces", `{"id":"todo-1"}`), http.StatusConflict, "space_exists")
	wantError(t, r.do(http.MethodPost, "/api/spaces", `{"id":"no spaces"}`), http.StatusBadRequest, "invalid_space_id")
	wantError(t, r.do(http.MethodPost, "/api/spaces", `{"id":`), http.StatusBadRequest, "invalid_json")
	wantError(t, r.do(http.MethodPost, "/api/spaces", `[1,2]`), http.StatusBadRequest, "invalid_json")
	wantError(t, r.do(http.MethodPost, "/api/spaces", `{"id":"`+strings.Repeat("x", 100<<10)+`"}`),
		http.StatusRequestEntityTooLarge, "body_too_large")

	// List, with pages.
	list := decode[struct {
		Spaces []spaceBody
		Next   string
	}](t, r.do(http.MethodGet, "/api/spaces", ""))
	if len(list.Spaces) != 2 || list.Next != "" {
		t.Fatalf("list = %+v, want 2 spaces and no next page", list)
	}
	for _, sp := range list.Spaces {
		if sp.ID == "" || sp.App != app || sp.Machine == "" || sp.CreatedAt.IsZero() {
			t.Fatalf("listed space %+v lacks a field", sp)
		}
	}
	page := decode[struct {
		Spaces []spaceBody
		Next   string
	}](t, r.do(http.MethodGet, "/api/spaces?limit=1", ""))
	if len(page.Spaces) != 1 || page.Next != page.Spaces[0].ID {
		t.Fatalf("first page = %+v, want 1 space and next", page)
	}
	page2 := decode[struct {
		Spaces []spaceBody
		Next   string
	}](t, r.do(http.MethodGet, "/api/spaces?limit=1&after="+page.Next, ""))
	if len(page2.Spaces) != 1 || page2.Spaces[0].ID == page.Spaces[0].ID {
		t.Fatalf("second page = %+v", page2)
	}
	for _, q := range []string{"limit=0", "limit=x", "limit=100000"} {
		wantError(t, r.do(http.MethodGet, "/api/spaces?"+q, ""), http.StatusBadRequest, "invalid_limit")
	}

	// Get.
	if sp := decode[spaceBody](t, r.do(http.MethodGet, "/api/spaces/todo-1", "")); sp.Machine != m2 {
		t.Fatalf("get todo-1 = %+v", sp)
	}
	wantError(t, r.do(http.MethodGet, "/api/spaces/nope", ""), http.StatusNotFound, "space_not_found")
	wantError(t, r.do(http.MethodGet, "/api/spaces/bad.id", ""), http.StatusBadRequest, "invalid_space_id")

	// Move.
	resp = r.do(http.MethodPut, "/api/spaces/todo-1/machine", `{"machine":"`+m1+`"}`)
	if resp.status != http.StatusOK || decode[spaceBody](t, resp).Machine != m1 {
		t.Fatalf("move: %d %s", resp.status, resp.body)
	}
	wantError(t, r.do(http.MethodPut, "/api/spaces/todo-1/machine", `{"machine":"00000000000000"}`),
		http.StatusUnprocessableEntity, "machine_not_found")
	wantError(t, r.do(http.MethodPut, "/api/spaces/todo-1/machine", `{}`), http.StatusBadRequest, "invalid_machine")
	wantError(t, r.do(http.MethodPut, "/api/spaces/todo-1/machine", ``), http.StatusBadRequest, "invalid_json")
	wantError(t, r.do(http.MethodPut, "/api/spaces/nope/machine", `{"machine":"`+m1+`"}`), http.StatusNotFound, "space_not_found")

	// Machines.
	ms := decode[struct {
		Machines []struct {
			ID, App, Region, State string
			Live                   bool
			Spaces                 int
			LastHeartbeat          time.Time
		}
	}](t, r.do(http.MethodGet, "/api/machines", ""))
	if len(ms.Machines) != 2 {
		t.Fatalf("machines = %+v, want 2", ms)
	}
	counts := map[string]int{}
	for _, m := range ms.Machines {
		if !m.Live || m.State != "started" || m.App != app || m.Region != "local" || m.LastHeartbeat.IsZero() {
			t.Fatalf("machine %+v", m)
		}
		counts[m.ID] = m.Spaces
	}
	if counts[m1] != 2 || counts[m2] != 0 {
		t.Fatalf("space counts %v, want %s:2 %s:0", counts, m1, m2)
	}

	// Unknown API paths and methods answer JSON.
	wantError(t, r.do(http.MethodGet, "/api/nope", ""), http.StatusNotFound, "not_found")
	wantError(t, r.do(http.MethodDelete, "/api/spaces", ""), http.StatusMethodNotAllowed, "method_not_allowed")
}

func TestCreate_NoLiveMachine(t *testing.T) {
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{})
	resp := r.do(http.MethodPost, "/api/spaces", `{"id":"s1"}`)
	wantError(t, resp, http.StatusServiceUnavailable, "no_live_machine")
	if resp.header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	r.register(m1)
	if err := r.dir.SetMachineState(context.Background(), m1, directory.MachineStopped); err != nil {
		t.Fatal(err)
	}
	wantError(t, r.do(http.MethodPost, "/api/spaces", `{"id":"s1"}`), http.StatusServiceUnavailable, "no_live_machine")
}

func TestAdminAuthSeam(t *testing.T) {
	deny := func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"unauthorized","message":"admin token required"}`)
		})
	}
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{adminAuth: deny})
	r.register(m1, m2)
	if resp := r.do(http.MethodPost, "/api/spaces", `{"id":"s1"}`); resp.status != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.status, resp.body)
	}
	wantError(t, r.do(http.MethodPut, "/api/spaces/s1/machine", `{"machine":"`+m2+`"}`), http.StatusUnauthorized, "unauthorized")
	if sp, err := r.dir.Lookup(context.Background(), "s1"); err != nil || sp.Machine != m1 {
		t.Fatalf("s1 after a refused move = %+v, %v; want still on %s", sp, err, m1)
	}
}

// Under shared placement, deleting a space removes it from the directory
// and retires nothing: its machine serves other spaces. The router stops
// replaying connections to it at once.
func TestDeleteSpace_SharedRetiresNoMachine(t *testing.T) {
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{})
	r.register(m1)
	if resp := r.do(http.MethodPost, "/api/spaces", `{"id":"gone"}`); resp.status != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.status, resp.body)
	}
	if got := r.replayTarget("gone"); got != m1 {
		t.Fatalf("replay to %s, want %s", got, m1)
	}
	resp := r.do(http.MethodDelete, "/api/spaces/gone", "")
	if resp.status != http.StatusOK || !strings.Contains(string(resp.body), `"machineRetired":false`) ||
		!strings.Contains(string(resp.body), `"machine":"`+m1+`"`) {
		t.Fatalf("delete: %d %s", resp.status, resp.body)
	}
	wantError(t, r.connect("gone"), http.StatusNotFound, "space_not_found")
	wantError(t, r.do(http.MethodDelete, "/api/spaces/gone", ""), http.StatusNotFound, "space_not_found")
	if resp := r.do(http.MethodGet, "/api/machines", ""); !strings.Contains(string(resp.body), m1) {
		t.Fatalf("machine %s no longer listed after deleting its space: %s", m1, resp.body)
	}
}

func TestStaticFrontend(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "assets"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("<html>app</html>"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "assets", "app-1234.js"), []byte("console.log(1)"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{staticDir: dir, noListening: true})

	for _, p := range []string{"/", "/lists/abc", "/assets/", "/assets/missing.js", "/../../../etc/passwd"} {
		resp := r.do(http.MethodGet, p, "")
		if resp.status != http.StatusOK || string(resp.body) != "<html>app</html>" {
			t.Fatalf("GET %s: %d %q, want index.html", p, resp.status, resp.body)
		}
		if cc := resp.header.Get("Cache-Control"); cc != "no-cache" {
			t.Fatalf("GET %s: Cache-Control %q, want no-cache", p, cc)
		}
	}
	resp := r.do(http.MethodGet, "/assets/app-1234.js", "")
	if resp.status != http.StatusOK || string(resp.body) != "console.log(1)" {
		t.Fatalf("asset: %d %q", resp.status, resp.body)
	}
	if cc := resp.header.Get("Cache-Control"); !strings.Contains(cc, "immutable") {
		t.Fatalf("asset Cache-Control %q, want immutable", cc)
	}
	wantError(t, r.do(http.MethodGet, "/api/lists/abc", ""), http.StatusNotFound, "not_found")
	wantError(t, r.do(http.MethodPost, "/lists/abc", "{}"), http.StatusMethodNotAllowed, "method_not_allowed")

	// Without a built frontend, a page says what is missing.
	bare := newRouter(t, pgtest.NewDatabase(t), routerOpts{staticDir: filepath.Join(dir, "missing"), noListening: true})
	resp = bare.do(http.MethodGet, "/", "")
	if resp.status != http.StatusNotFound || !strings.Contains(string(resp.body), "STATIC_DIR") ||
		!strings.Contains(resp.header.Get("Content-Type"), "text/html") {
		t.Fatalf("missing frontend: %d %q", resp.status, resp.body)
	}
}

func TestHealthAndReady(t *testing.T) {
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{})
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp := r.do(http.MethodGet, p, ""); resp.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", p, resp.status, resp.body)
		}
	}

	// A router that does not follow the directory's changes yet could route to a machine a space has left, for
	// as long as its cache keeps the entry: it is alive but not ready.
	deaf := newRouter(t, pgtest.NewDatabase(t), routerOpts{noListening: true})
	if resp := deaf.do(http.MethodGet, "/healthz", ""); resp.status != http.StatusOK {
		t.Fatalf("healthz before listening: %d, want 200", resp.status)
	}
	wantError(t, deaf.do(http.MethodGet, "/readyz", ""), http.StatusServiceUnavailable, "directory_unavailable")

	resp := r.do(http.MethodGet, "/metrics", "")
	for _, name := range []string{
		"spaceport_router_replay_decisions_total",
		"spaceport_router_cache_hits_total",
		"spaceport_router_cache_misses_total",
		"spaceport_router_directory_lookup_duration_seconds_bucket",
		"go_goroutines",
	} {
		if !strings.Contains(string(resp.body), name) {
			t.Fatalf("/metrics lacks %s", name)
		}
	}
}

// With auth on, the token is checked before any directory read: no token or
// a bad one is 401, a token for other spaces 403; a good one is replayed with
// the replay secret in the state. The development endpoint issues tokens.
func TestAuth_TokenCheckedBeforeReplay(t *testing.T) {
	keys, err := auth.NewKeys("router-test-secret-router-test-secret")
	if err != nil {
		t.Fatal(err)
	}
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{auth: keys, devTokens: true, replaySec: "s3cret"})
	r.register(m1)
	if res := r.do("POST", "/api/spaces", `{"id":"todo-1"}`); res.status != http.StatusCreated {
		t.Fatalf("create: %d %s", res.status, res.body)
	}
	lookups := r.metric("spaceport_router_cache_misses_total") + r.metric("spaceport_router_cache_hits_total")
	other, _ := keys.Issue(auth.Grant{UserID: "u", Spaces: "other-*", Role: mutator.RoleEditor, TTL: time.Hour})
	for _, tc := range []struct {
		query string
		code  int
	}{{"", 401}, {"?token=nope", 401}, {"?token=" + other, 403}} {
		if res := r.connect("todo-1" + tc.query); res.status != tc.code {
			t.Errorf("token %q: status %d, want %d (%s)", tc.query, res.status, tc.code, res.body)
		}
	}
	if got := r.metric("spaceport_router_cache_misses_total") + r.metric("spaceport_router_cache_hits_total"); got != lookups {
		t.Fatalf("refused requests read the directory (%v -> %v lookups)", lookups, got)
	}

	res := r.do("POST", "/api/dev/token", `{"user":"alice","spaces":"todo-*"}`)
	var tok struct{ Token, User string }
	if res.status != http.StatusOK || json.Unmarshal(res.body, &tok) != nil || tok.User != "alice" {
		t.Fatalf("dev token: %d %s", res.status, res.body)
	}
	res = r.connect("todo-1?token=" + url.QueryEscape(tok.Token))
	rp, err := replay.Parse(res.header.Get(replay.Header))
	if res.status != http.StatusTemporaryRedirect || err != nil || rp.Instance != m1 || rp.State != "s3cret" {
		t.Fatalf("with a token: %d %+v %v", res.status, rp, err)
	}
}

func TestAuth_NoDevTokensUnlessAsked(t *testing.T) {
	keys, _ := auth.NewKeys("router-test-secret-router-test-secret")
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{auth: keys})
	if res := r.do("POST", "/api/dev/token", ""); res.status == http.StatusOK {
		t.Fatalf("dev token endpoint served without DevTokens: %s", res.body)
	}
}
