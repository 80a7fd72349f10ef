package dedicated_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/fly/flylocal"
)

// stackTimeout bounds every wait of the stack test: generous, because it runs real processes built with -race
// on two cores beside other test binaries.
const stackTimeout = 90 * time.Second

const (
	routerApp  = "spaceport-router"
	backendApp = "spaceport-backend"
	adminToken = "dedicated-test-admin-token"
)

// binaries are the paths of the built router and backend commands.
type binaries struct{ router, backend string }

// buildCommands builds the router and backend commands, with -race when the test runs with it.
func buildCommands(t *testing.T) binaries {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	build := func(module, pkg string) string {
		out := filepath.Join(dir, filepath.Base(pkg))
		args := []string{"build", "-o", out}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = filepath.Join(root, module)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s (in %s): %v\n%s", strings.Join(cmd.Args[1:], " "), module, err, b)
		}
		return out
	}
	return binaries{router: build("router", "./cmd/router"), backend: build("backend", "./cmd/backend")}
}

// openStack runs the real router binary in PLACEMENT=dedicated under flylocal, with flylocal's Machines API and
// a backend app of no machines whose machines stop after idleStop without connections, against dbURL.
func openStack(t *testing.T, bins binaries, dbURL string, idleStop time.Duration) *flylocal.Server {
	t.Helper()
	migrateFirst(t, dbURL)
	env := map[string]string{"DATABASE_URL": dbURL, "AUTH_DISABLED": "1", "REPLAY_SECRET": "dedicated-test-replay"}
	if raceEnabled {
		env["GORACE"] = strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	}
	cfg := flylocal.Config{
		Listen:    "127.0.0.1:0",
		APIListen: "127.0.0.1:0",
		StateDir:  t.TempDir(),
		EdgeApp:   routerApp,
		Env:       env,
		Apps: []flylocal.AppConfig{
			{Name: routerApp, Machines: 1, Command: []string{bins.router}, Env: map[string]string{
				"STATIC_DIR": t.TempDir(), "PLACEMENT": "dedicated", "BACKEND_IMAGE": "flylocal/" + backendApp,
				"ADMIN_TOKEN": adminToken,
				// The test runs the reconciler itself, when no space is being created.
				"RECONCILE_INTERVAL": "0",
			}},
			{Name: backendApp, Command: []string{bins.backend}, KillTimeout: flylocal.Duration(30 * time.Second),
				IdleStop: flylocal.Duration(idleStop)},
		},
	}
	var logs, output syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := flylocal.NewServer(cfg, logger, &output)
	if err != nil {
		t.Fatalf("flylocal.NewServer: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stackTimeout)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("close flylocal: %v", err)
		}
		if strings.Contains(output.String(), "DATA RACE") {
			t.Error("a machine reported a data race")
		}
		if strings.Contains(logs.String(), "machine failed") {
			t.Error("a machine failed during the test")
		}
		if t.Failed() || os.Getenv("SPACEPORT_TEST_LOGS") != "" {
			t.Logf("flylocal log:\n%s", logs.String())
			t.Logf("machine output:\n%s", output.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), stackTimeout)
	defer cancel()
	if err := srv.Open(ctx); err != nil {
		t.Fatalf("open flylocal: %v", err)
	}
	return srv
}

// migrateFirst migrates the fresh database before the machines start.
func migrateFirst(t *testing.T, dbURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stackTimeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := directory.Open(ctx, pool, directory.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Open(ctx, pool); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond until it returns nil or stackTimeout passes.
func waitUntil(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(stackTimeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", stackTimeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for the output of processes.
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
