// Command router is Spaceport's router: it answers WebSocket connection
// requests with fly-replay to the backend machine that owns the space, serves
// the spaces API and the frontend. It keeps no state: run as many as you like.
//
// Configuration is by environment (see usage).
package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/clusters"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/router/api"
	"github.com/spaceport-sync/spaceport/router/dedicated"
	"github.com/spaceport-sync/spaceport/router/routecache"
)

// Defaults of the environment.
const (
	DefaultPort      = "8080"
	DefaultStaticDir = "frontend/dist"
	// ShutdownTimeout bounds the wait for requests in flight after SIGTERM.
	// The router never holds a connection open (it never upgrades), so this
	// only covers ordinary short requests.
	ShutdownTimeout = 10 * time.Second
	// openRetryMax caps the backoff between attempts to reach the directory
	// at start.
	openRetryMax = 5 * time.Second
)

const usage = `usage: router

Spaceport router. Configured by environment:

  PORT           port to listen on (default ` + DefaultPort + `)
  DATABASE_URL   Postgres URL of the space directory (required)
  BACKEND_APP    backend app new spaces are placed in (default ` + api.DefaultApp + `)
  STATIC_DIR     built frontend served at / (default ` + DefaultStaticDir + `)
  AUTH_SECRET    HS256 secret of connection tokens, 32+ bytes (required unless AUTH_DISABLED=1)
  AUTH_DISABLED  1: no token check (development without auth only)
  DEV_TOKENS     1: serve POST /api/dev/token, a token for anyone (refused unless FLY_REGION=local)
  REPLAY_SECRET  put in the fly-replay state; backends with the same secret admit only replayed requests
  ADMIN_TOKEN    bearer token required to move spaces (PUT /api/spaces/{id}/machine); unset leaves it open
  CACHE_TTL      how long a cached placement is trusted without a directory read, as a Go duration; NOTIFY
                 evicts moved spaces at once, so this only bounds staleness after a missed one (default 30s)
  PLACEMENT      how new spaces get a machine: shared (default: the live backend machine with the fewest
                 spaces) or dedicated (a new backend machine per space, created through the Machines API,
                 auto-stopped when idle, destroyed with the space)
  BACKEND_IMAGE  dedicated: the image created backend machines run, or auto: the image of the backend app's
                 most recently updated machine, which follows each deploy (required; flylocal ignores it)
  FLY_API_TOKEN, FLY_API_HOSTNAME   dedicated: the Machines API's token and base URL (default
                 ` + machines.DefaultBaseURL + `; flylocal gives its machines FLY_API_HOSTNAME)
  RECONCILE_INTERVAL   dedicated: how often to destroy orphan machines and rehome spaces whose machine is
                 gone, as a Go duration; 0 turns it off (default ` + "1m" + `)
  DATA_CLUSTERS  the Postgres clusters besides DATABASE_URL's (cluster main) that spaces may live on, as
                 name=postgres://... pairs separated by commas, the same as the backends'; the router uses
                 only the names, to place new spaces (it never connects to them)
  NEW_SPACE_CLUSTERS   comma-separated clusters that receive new spaces, each going to the one with the
                 fewest spaces (default: main and every cluster of DATA_CLUSTERS)
  LOG_FORMAT     json or text (default: json on Fly, text elsewhere)
  LOG_LEVEL      debug, info, warn or error (default info)
  FLY_MACHINE_ID, FLY_REGION   added to every log line when set
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		os.Exit(1)
	}
}

// config is the router's configuration, read from the environment.
type config struct {
	port        string
	databaseURL string
	backendApp  string
	staticDir   string
	logFormat   string
	logLevel    slog.Level
	machineID   string
	region      string
	auth        *auth.Keys
	devTokens   bool
	replay      string
	adminToken  string
	cacheTTL    time.Duration
	// placement is PlacementShared or PlacementDedicated; the rest is for
	// dedicated only.
	placement      string
	image          string
	machinesAPI    machines.Config
	reconcileEvery time.Duration
	// placeClusters are the data clusters new spaces are placed on.
	placeClusters []string
}

// Placement policies (PLACEMENT).
const (
	PlacementShared    = "shared"
	PlacementDedicated = "dedicated"
)

func loadConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return config{}, fmt.Errorf("unexpected arguments %q: the router is configured by environment", fs.Args())
	}
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	c := config{
		port:        env("PORT", DefaultPort),
		databaseURL: getenv("DATABASE_URL"),
		backendApp:  env("BACKEND_APP", api.DefaultApp),
		staticDir:   env("STATIC_DIR", DefaultStaticDir),
		logFormat:   env("LOG_FORMAT", "text"),
		machineID:   getenv("FLY_MACHINE_ID"),
		region:      getenv("FLY_REGION"),
	}
	if getenv("LOG_FORMAT") == "" && c.machineID != "" {
		c.logFormat = "json"
	}
	if c.databaseURL == "" {
		return config{}, errors.New("DATABASE_URL is required")
	}
	c.replay, c.adminToken = getenv("REPLAY_SECRET"), getenv("ADMIN_TOKEN")
	switch secret := getenv("AUTH_SECRET"); {
	case secret != "":
		k, err := auth.NewKeys(secret)
		if err != nil {
			return config{}, fmt.Errorf("AUTH_SECRET: %w", err)
		}
		c.auth = k
	case getenv("AUTH_DISABLED") != "1":
		return config{}, errors.New("AUTH_SECRET is required (or AUTH_DISABLED=1 for development without auth)")
	}
	if getenv("DEV_TOKENS") == "1" {
		// Handing tokens to anyone is only sane on a laptop: flylocal runs
		// machines in region "local", Fly never does.
		if c.region != "local" {
			return config{}, errors.New("DEV_TOKENS=1 is for local development only (FLY_REGION=local); refusing to start")
		}
		if c.auth == nil {
			return config{}, errors.New("DEV_TOKENS=1 needs AUTH_SECRET")
		}
		c.devTokens = true
	}
	if v := getenv("CACHE_TTL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return config{}, fmt.Errorf("CACHE_TTL %q: want a positive duration such as 30s", v)
		}
		c.cacheTTL = d
	}
	c.placement = env("PLACEMENT", PlacementShared)
	c.reconcileEvery = dedicated.DefaultReconcileInterval
	switch c.placement {
	case PlacementShared:
	case PlacementDedicated:
		c.image = getenv("BACKEND_IMAGE")
		if c.image == "" {
			return config{}, errors.New("PLACEMENT=dedicated needs BACKEND_IMAGE, the image of the backend machines it creates")
		}
		c.machinesAPI = machines.ConfigFromEnv(getenv)
		if v := getenv("RECONCILE_INTERVAL"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return config{}, fmt.Errorf("RECONCILE_INTERVAL %q: want a duration such as 1m, or 0 for none", v)
			}
			c.reconcileEvery = d
		}
	default:
		return config{}, fmt.Errorf("PLACEMENT %q: want %s or %s", c.placement, PlacementShared, PlacementDedicated)
	}
	dataClusters, err := clusters.Parse(getenv(clusters.EnvVar))
	if err != nil {
		return config{}, err
	}
	if c.placeClusters, err = clusters.Placement(getenv(clusters.PlacementEnvVar), clusters.Names(dataClusters)); err != nil {
		return config{}, err
	}
	if c.logFormat != "json" && c.logFormat != "text" {
		return config{}, fmt.Errorf("LOG_FORMAT %q: want json or text", c.logFormat)
	}
	if err := c.logLevel.UnmarshalText([]byte(env("LOG_LEVEL", "info"))); err != nil {
		return config{}, fmt.Errorf("LOG_LEVEL: %w", err)
	}
	return c, nil
}

func newLogger(c config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.logFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	log := slog.New(h).With("app", "router")
	if c.machineID != "" {
		log = log.With("machine", c.machineID)
	}
	if c.region != "" {
		log = log.With("region", c.region)
	}
	return log
}

// run serves until ctx is done, then shuts down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := loadConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)

	poolCfg, err := pgxpool.ParseConfig(cfg.databaseURL)
	if err != nil {
		// pgx's message may quote the URL, password included: say less.
		return errors.New("DATABASE_URL is not a valid Postgres connection string")
	}
	if _, ok := poolCfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		poolCfg.ConnConfig.RuntimeParams["application_name"] = "spaceport-router"
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()

	dir, err := openDirectory(ctx, pool, directory.Config{Logger: log, Clusters: cfg.placeClusters}, log)
	if err != nil {
		return err
	}
	apiCfg := api.Config{Directory: dir, App: cfg.backendApp, StaticDir: cfg.staticDir, Logger: log,
		Auth: cfg.auth, DevTokens: cfg.devTokens, ReplaySecret: cfg.replay,
		Cache: routecache.Config{TTL: cfg.cacheTTL}}
	if cfg.adminToken != "" {
		apiCfg.AdminAuth = bearer(cfg.adminToken)
	}
	var placer *dedicated.Placer
	if cfg.placement == PlacementDedicated {
		mcfg := cfg.machinesAPI
		mcfg.Logger = log
		mc, err := machines.New(mcfg)
		if err != nil {
			return err
		}
		placer, err = dedicated.New(dedicated.Config{Directory: dir, Machines: mc, App: cfg.backendApp,
			Image: cfg.image, Region: cfg.region, Logger: log})
		if err != nil {
			return err
		}
		apiCfg.Placement = placer
	}
	if cfg.auth == nil {
		log.Warn("router: AUTH_DISABLED: connections are not authenticated")
	}
	srv, err := api.New(apiCfg)
	if err != nil {
		return err
	}
	if st, err := os.Stat(cfg.staticDir); err != nil || !st.IsDir() {
		log.Warn("router: no frontend directory; / will say so", "static_dir", cfg.staticDir)
	}

	ln, err := net.Listen("tcp", ":"+cfg.port)
	if err != nil {
		return fmt.Errorf("listen on port %s: %w", cfg.port, err)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	invCtx, stopInvalidation := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.RunInvalidation(invCtx) })
	if placer != nil && cfg.reconcileEvery > 0 {
		wg.Go(func() { placer.RunReconciler(invCtx, cfg.reconcileEvery) })
	}
	defer func() { stopInvalidation(); wg.Wait() }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("router: serving", "addr", ln.Addr().String(), "backend_app", cfg.backendApp, "static_dir", cfg.staticDir,
		"placement", cfg.placement, "new_space_clusters", strings.Join(cfg.placeClusters, ","))

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("router: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("router: stopped")
	return nil
}

// openDirectory opens the directory, retrying while Postgres is not reachable
// yet (it may start after us), until ctx is done.
func openDirectory(ctx context.Context, pool *pgxpool.Pool, dcfg directory.Config, log *slog.Logger) (*directory.Directory, error) {
	wait := 100 * time.Millisecond
	for {
		dir, err := directory.Open(ctx, pool, dcfg)
		if err == nil {
			return dir, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("open directory: %w", ctx.Err())
		}
		log.Warn("router: directory not reachable yet, retrying", "err", redact(err), "in", wait)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open directory: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, openRetryMax)
	}
}

// redact keeps a connection error's text free of a password, should a driver
// ever echo the URL.
func redact(err error) string {
	s := err.Error()
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.Index(s[i+3:], "@"); j >= 0 {
			return s[:i+3] + "REDACTED" + s[i+3+j:]
		}
	}
	return s
}

// bearer requires "Authorization: Bearer <token>" (compared in constant time).
func bearer(token string) func(http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, `{"error":"unauthorized","message":"admin token required"}`+"\n")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
