// Command backend serves spaces: it owns the spaces whose connections Fly's
// edge (or flylocal) replays to it, runs their mutations as the authority and
// keeps them in Postgres.
//
// Environment: PORT (default 8080), DATABASE_URL (required), DATA_CLUSTERS
// (the other Postgres clusters spaces may live on), FLY_MACHINE_ID,
// FLY_APP_NAME, FLY_REGION (set by Fly or flylocal), and the tuning variables
// listed in README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/clusters"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/todoapp"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
)

// DefaultShutdownTimeout bounds a graceful stop; Fly's kill_timeout must be
// longer (see fly/backend/fly.toml).
const DefaultShutdownTimeout = 20 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel(getenv("LOG_LEVEL"))}))
	slog.SetDefault(log)
	machineID := getenv("FLY_MACHINE_ID")
	log = log.With("machine", machineID)

	switch limit, ok, err := memoryLimit(getenv); {
	case err != nil:
		return err
	case ok:
		debug.SetMemoryLimit(limit)
		log.Info("memory limit set from the machine's size", "limit_mb", limit>>20, "percent", memoryLimitPercent)
	}

	dbURL := getenv("DATABASE_URL")
	if dbURL == "" {
		return errors.New("DATABASE_URL is required")
	}
	port := getenv("PORT")
	if port == "" {
		port = "8080"
	}
	grace, err := durationEnv(getenv, "SPACE_GRACE_PERIOD")
	if err != nil {
		return err
	}
	recheck, err := durationEnv(getenv, "RECHECK_INTERVAL")
	if err != nil {
		return err
	}
	pokeRate, err := intEnv(getenv, "POKE_RATE")
	if err != nil {
		return err
	}
	maxFrame, err := intEnv(getenv, "MAX_FRAME_BYTES")
	if err != nil {
		return err
	}
	maxQueue, err := intEnv(getenv, "MAX_QUEUE_BYTES")
	if err != nil {
		return err
	}
	groupSpaces, err := intEnv(getenv, "GROUP_COMMIT_SPACES")
	if err != nil {
		return err
	}
	committers, err := intEnv(getenv, "GROUP_COMMITTERS")
	if err != nil {
		return err
	}
	// The directory check is what keeps a stale route from serving (and
	// claiming) a space another machine owns; turn it off only to run a
	// lone backend without a router.
	checkDirectory := getenv("DIRECTORY_CHECK") != "false"
	appName := getenv("FLY_APP_NAME")
	if checkDirectory && (machineID == "" || appName == "") {
		return errors.New("FLY_MACHINE_ID and FLY_APP_NAME are required (or DIRECTORY_CHECK=false for a lone backend)")
	}
	dataClusters, err := clusters.Parse(getenv(clusters.EnvVar))
	if err != nil {
		return err
	}
	if len(dataClusters) > 0 && !checkDirectory {
		return errors.New("DATA_CLUSTERS needs the directory, which says which cluster holds each space (DIRECTORY_CHECK=true)")
	}
	var keys *auth.Keys
	switch secret := getenv("AUTH_SECRET"); {
	case secret != "":
		if keys, err = auth.NewKeys(secret); err != nil {
			return fmt.Errorf("AUTH_SECRET: %w", err)
		}
	case getenv("AUTH_DISABLED") != "1":
		return errors.New("AUTH_SECRET is required (or AUTH_DISABLED=1 for development without auth)")
	default:
		log.Warn("AUTH_DISABLED: connections are not authenticated; every client is an editor")
	}
	var schemas []string
	if v := getenv("SCHEMA_VERSIONS"); v != "" {
		schemas = strings.Split(v, ",")
	}

	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer pool.Close()
	storeCfg := store.Config{MaxGroupSpaces: groupSpaces, Committers: committers, Logger: log}
	st, err := store.OpenConfig(ctx, pool, storeCfg)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	// The engine's store: with the directory, always the clusters one, even
	// with no other cluster configured, so that a space the directory places
	// elsewhere, or marks as moving, is refused instead of served from here.
	var engineStore space.Store = st

	spaceCfg := space.Config{
		Owner:          machineID,
		GracePeriod:    grace,
		PokeRate:       pokeRate,
		SchemaVersions: schemas,
		Logger:         log,
	}
	var dir *directory.Directory
	machine := directory.Machine{ID: machineID, App: appName, Region: getenv("FLY_REGION")}
	if checkDirectory {
		if dir, err = directory.Open(ctx, pool, directory.Config{Logger: log}); err != nil {
			return fmt.Errorf("open directory: %w", err)
		}
		cs, err := clusters.New(clusters.Config{Directory: dir, Main: st, Clusters: dataClusters, Store: storeCfg, Logger: log})
		if err != nil {
			return err
		}
		spaceCfg.Assigner = assigner{dir: dir, machineID: machineID, claims: cs}
		// Deferred after the pool's Close, so it runs before it; by then
		// the engine has stopped (Shutdown below) or never served.
		defer cs.Close()
		engineStore = cs
	}

	reg := mutator.NewRegistry()
	todoapp.Register(reg)
	spaces := space.NewManager(spaceCfg, engineStore, reg)
	srv := wsserver.New(wsserver.Config{
		MachineID:     machineID,
		Region:        getenv("FLY_REGION"),
		MaxFrameBytes: int64(maxFrame),
		MaxQueueBytes: maxQueue,
		Auth:          keys,
		ReplaySecret:  getenv("REPLAY_SECRET"),
		Logger:        log,
	}, spaces)

	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpSrv := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- httpSrv.Serve(ln) }()
	log.Info("backend listening", "addr", ln.Addr().String(), "app", appName, "region", getenv("FLY_REGION"), "directory_check", checkDirectory,
		"clusters", strings.Join(clusters.Names(dataClusters), ","))

	// Background work owned here, stopped before run returns.
	bgCtx, stopBackground := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	defer func() { stopBackground(); bg.Wait() }()
	if dir != nil {
		// Register only once we listen: placement may send clients at once.
		if err := dir.RegisterMachine(ctx, machine); err != nil {
			return fmt.Errorf("register machine: %w", err)
		}
		bg.Go(func() { dir.RunHeartbeat(bgCtx, machine, 0) })
		bg.Go(func() {
			dir.Listen(bgCtx,
				func(spaceID string) { spaces.Recheck(bgCtx, spaceID) },
				func() { spaces.RecheckAll(bgCtx) }, nil)
		})
		bg.Go(func() { spaces.RunRecheck(bgCtx, recheck) })
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing batches in flight, closing connections with 1001")
	shutCtx, cancel := context.WithTimeout(context.Background(), DefaultShutdownTimeout)
	defer cancel()
	if dir != nil {
		// First, so that placement stops choosing this machine.
		if err := dir.SetMachineState(shutCtx, machineID, directory.MachineStopped); err != nil {
			log.Warn("mark machine stopped", "err", err)
		}
	}
	// Stop accepting first; hijacked WebSockets are not touched by this.
	if err := httpSrv.Shutdown(shutCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

func logLevel(v string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return slog.LevelInfo
	}
	return l
}

func durationEnv(getenv func(string) string, name string) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return d, nil
}

func intEnv(getenv func(string) string, name string) (int, error) {
	v := getenv(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return n, nil
}
