// Package api is the router's HTTP surface: replay decisions for WebSocket
// connections (GET /api/replicache/websocket/{spaceID} answered with
// fly-replay, never upgraded), the spaces and machines API, the static
// frontend, health and metrics. It is stateless apart from its placement
// cache, which RunInvalidation keeps in step with the directory.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/fly/replay"
	"github.com/spaceport-sync/spaceport/router/routecache"
)

// Defaults for Config fields left at zero.
const (
	// DefaultApp is the backend app new spaces are placed in.
	DefaultApp = directory.DefaultBackendApp
	// DefaultRetryAfter is the Retry-After sent with 503 answers.
	DefaultRetryAfter = 2 * time.Second
	// DefaultMaxBodyBytes bounds API request bodies.
	DefaultMaxBodyBytes = 64 << 10
	// DefaultReadyTimeout bounds the database check of /readyz.
	DefaultReadyTimeout = 2 * time.Second
)

// Config configures a Server.
type Config struct {
	// Directory is the space directory. Required.
	Directory *directory.Directory
	// App is the backend app in which new spaces are placed. Zero means
	// DefaultApp ("spaceport-backend").
	App string
	// StaticDir holds the built frontend served at "/" (unknown paths
	// outside /api get its index.html, for client-side routing). Empty, or
	// a directory without index.html, serves a page that says so.
	StaticDir string
	// Cache sizes the placement cache; see routecache.Config for its
	// defaults.
	Cache routecache.Config
	// RetryAfter is sent (in whole seconds, rounded up) with every 503.
	// Zero means DefaultRetryAfter (2s).
	RetryAfter time.Duration
	// MaxBodyBytes bounds the body of API requests; larger ones get 413.
	// Zero means DefaultMaxBodyBytes (64 KiB).
	MaxBodyBytes int64
	// AdminAuth wraps the admin endpoints (moving and deleting a space). Nil leaves them
	// open: the seam where admin authentication plugs in.
	AdminAuth func(http.Handler) http.Handler
	// Auth checks the connection token (`token` query parameter) before a
	// replay, so unauthenticated traffic never wakes a machine: missing,
	// invalid or expired answers 401, a token for other spaces 403. Nil
	// turns the check off (development without auth only).
	Auth *auth.Keys
	// DevTokens serves POST /api/dev/token, which hands a token to anyone
	// who asks: for local development only (cmd/router refuses it outside
	// flylocal). Needs Auth.
	DevTokens bool
	// Placement decides where new spaces live (POST /api/spaces) and what
	// deleting one retires; its App must be App. A *dedicated.Placer gives
	// each space a backend machine of its own, created through the Machines
	// API, and retires it with the space. Nil means shared placement: a new
	// space goes to the live machine of App with the fewest spaces.
	Placement Placement
	// ReplaySecret is put in the fly-replay `state`; backends configured
	// with the same secret admit only requests that carry it, so nobody
	// reaches a machine around the router. Empty sends no state.
	ReplaySecret string
	// Logger receives one line per notable event. Nil means slog.Default().
	Logger *slog.Logger
}

// Server is the router's HTTP handler. Create it with New; run
// RunInvalidation beside it.
type Server struct {
	cfg     Config
	dir     *directory.Directory
	cache   *routecache.Cache
	log     *slog.Logger
	handler http.Handler
	metrics *metrics
	// following is set while RunInvalidation's LISTEN is established.
	// Otherwise the router is not ready: a placement it cached could go
	// stale without the router hearing of it, for up to the cache TTL.
	following atomic.Bool
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Directory == nil {
		return nil, errors.New("api: Config.Directory is required")
	}
	if cfg.App == "" {
		cfg.App = DefaultApp
	}
	if !replay.ValidAppName(cfg.App) {
		return nil, fmt.Errorf("api: backend app %q is not a Fly app name", cfg.App)
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = DefaultRetryAfter
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Placement == nil {
		cfg.Placement = sharedPlacement{dir: cfg.Directory, app: cfg.App}
	}
	if cfg.Placement.App() != cfg.App {
		return nil, fmt.Errorf("api: placement in app %s, not in the backend app %s", cfg.Placement.App(), cfg.App)
	}
	if cfg.DevTokens && cfg.Auth == nil {
		return nil, errors.New("api: DevTokens needs Auth")
	}
	s := &Server{cfg: cfg, dir: cfg.Directory, log: cfg.Logger}
	s.metrics = newMetrics()
	s.cache = routecache.New(s.lookup, cfg.Cache)
	s.metrics.registerCache(s.cache)
	s.handler = s.routes()
	return s, nil
}

// ServeHTTP serves every route of the router.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// RunInvalidation follows the directory's change notifications until ctx is
// done, evicting each changed space from the cache at once and purging the
// cache whenever the notification stream (re)starts. Run it in a goroutine
// owned by whoever owns the Server.
func (s *Server) RunInvalidation(ctx context.Context) {
	s.dir.Listen(ctx, func(id string) {
		s.cache.Evict(id)
		s.metrics.changesHeard.Inc()
	}, func() {
		s.cache.Purge()
		s.following.Store(true)
		s.metrics.listenResets.Inc()
		s.log.Info("router: following directory changes; cache purged")
	}, func(err error) {
		s.following.Store(false)
		s.log.Warn("router: no longer following directory changes; not ready until it is again", "err", err)
	})
}

// lookup is the cache's read of the directory, timed.
func (s *Server) lookup(ctx context.Context, id string) (directory.Space, error) {
	start := time.Now()
	sp, err := s.dir.Lookup(ctx, id)
	result := "found"
	switch {
	case errors.Is(err, directory.ErrSpaceNotFound):
		result = "not_found"
	case err != nil:
		result = "error"
	}
	s.metrics.lookupSeconds.WithLabelValues(result).Observe(time.Since(start).Seconds())
	return sp, err
}

func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(s.recoverer)
	r.NotFound(s.fallback)
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path)
	})

	// The catch-all takes every path below the prefix, so that an empty or
	// multi-segment space ID is answered 400, like any other bad ID.
	r.Get("/api/replicache/websocket/*", s.handleReplay)

	r.Post("/api/spaces", s.handleCreateSpace)
	r.Get("/api/spaces", s.handleListSpaces)
	r.Get("/api/spaces/{id}", s.handleGetSpace)
	r.Group(func(r chi.Router) {
		if s.cfg.AdminAuth != nil {
			r.Use(s.cfg.AdminAuth)
		}
		r.Put("/api/spaces/{id}/machine", s.handleMoveSpace)
		r.Delete("/api/spaces/{id}", s.handleDeleteSpace)
	})
	r.Get("/api/machines", s.handleListMachines)
	if s.cfg.DevTokens {
		r.Post("/api/dev/token", s.handleDevToken)
	}

	r.Get("/healthz", s.handleHealth)
	r.Get("/readyz", s.handleReady)
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	return r
}

// recoverer turns a panic in a handler into a logged 500 instead of a torn
// connection; the process and every other request carry on.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("router: handler panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeError(w, http.StatusInternalServerError, "internal", "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// handleReady answers 200 when the router can route correctly: Postgres
// answers, and the router follows the directory's change notifications (so a
// move evicts its cached placement at once, not at the end of the TTL).
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	if !s.following.Load() {
		s.unavailable(w, "directory_unavailable", "not yet following the space directory's changes")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), DefaultReadyTimeout)
	defer cancel()
	if err := s.dir.Ping(ctx); err != nil {
		s.log.Warn("router: not ready", "err", err)
		s.unavailable(w, "directory_unavailable", "the space directory (Postgres) is unreachable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// metrics are the router's Prometheus metrics, in a registry of its own so
// that several Servers (tests) can live in one process.
type metrics struct {
	registry      *prometheus.Registry
	decisions     *prometheus.CounterVec
	lookupSeconds *prometheus.HistogramVec
	listenResets  prometheus.Counter
	changesHeard  prometheus.Counter
}

// Replay decision outcomes.
const (
	outcomeReplayed    = "replayed"
	outcomeNotFound    = "not_found"
	outcomeInvalidID   = "invalid_id"
	outcomeUnavailable = "unavailable"
	outcomeCanceled    = "canceled"
	// The space is moving between data clusters: 503, retry later.
	outcomeMoving = "moving"
	// Token refused before any directory read.
	outcomeUnauthorized = "unauthorized"
	outcomeForbidden    = "forbidden"
)

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spaceport_router_replay_decisions_total",
			Help: "WebSocket connection requests answered, by outcome.",
		}, []string{"outcome"}),
		lookupSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spaceport_router_directory_lookup_duration_seconds",
			Help:    "Time of directory reads made on cache misses, by result.",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 15), // 0.25ms .. 4s
		}, []string{"result"}),
		listenResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spaceport_router_directory_listen_resets_total",
			Help: "Times the directory change stream was (re)established and the cache purged.",
		}),
		changesHeard: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spaceport_router_directory_changes_total",
			Help: "Placement changes (create, move, delete) heard from the directory, each evicting one cache entry.",
		}),
	}
	for _, o := range []string{outcomeReplayed, outcomeNotFound, outcomeInvalidID, outcomeUnavailable, outcomeCanceled, outcomeMoving} {
		m.decisions.WithLabelValues(o)
	}
	for _, r := range []string{"found", "not_found", "error"} {
		m.lookupSeconds.WithLabelValues(r)
	}
	m.registry.MustRegister(m.decisions, m.lookupSeconds, m.listenResets, m.changesHeard,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) registerCache(c *routecache.Cache) {
	m.registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "spaceport_router_cache_hits_total",
			Help: "Placement lookups answered from the cache (negative answers included).",
		}, func() float64 { return float64(c.Stats().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "spaceport_router_cache_misses_total",
			Help: "Placement lookups that waited for the directory.",
		}, func() float64 { return float64(c.Stats().Misses) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "spaceport_router_cache_coalesced_total",
			Help: "Cache misses that joined a directory read already in flight.",
		}, func() float64 { return float64(c.Stats().Coalesced) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "spaceport_router_cache_entries",
			Help: "Cached placements and negative answers.",
		}, func() float64 { p, n := c.Len(); return float64(p + n) }),
	)
}
