// Package stacktest runs the real router and backend binaries under flylocal, for the end-to-end tests of the
// packages that need the whole stack (fly/e2e, router/ops, router/dedicated). It builds the binaries (with
// -race when the test binary has it), migrates a test database before the machines start, and opens flylocal
// with its log and the machines' output captured: a data race or a failed machine fails the test, and both are
// printed when the test fails (or always, with SPACEPORT_TEST_LOGS set).
package stacktest

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
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

// Binaries are the paths of the built router and backend commands.
type Binaries struct{ Router, Backend string }

// RepoRoot is the repository's top folder: the nearest folder above the test's working directory (its
// package's folder) that holds go.work.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("stacktest: no go.work above the test's folder")
		}
		dir = parent
	}
}

// Build builds the router and backend commands into a folder of the test's own, each from its own module's
// folder (so this works with and without the go.work workspace), with -race when the test runs with it.
func Build(t testing.TB) Binaries {
	t.Helper()
	root, dir := RepoRoot(t), t.TempDir()
	build := func(module, pkg string) string {
		out := filepath.Join(dir, filepath.Base(pkg))
		args := []string{"build", "-o", out}
		if RaceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = filepath.Join(root, module)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s (in %s): %v\n%s", strings.Join(cmd.Args[1:], " "), module, err, b)
		}
		return out
	}
	return Binaries{Router: build("router", "./cmd/router"), Backend: build("backend", "./cmd/backend")}
}

// MigrateFirst migrates the test database at dbURL (directory and store) before the machines start, as the
// first deploy has done on Fly by the time anyone uses the system.
func MigrateFirst(t testing.TB, dbURL string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
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

// Open starts flylocal with cfg, bounding its opening and, when the test ends, its closing by timeout. The
// machines built with -race get GORACE=atexit_sleep_ms=0 (unless cfg.Env sets GORACE), so that they stop at
// once.
func Open(t testing.TB, cfg flylocal.Config, timeout time.Duration) *flylocal.Server {
	t.Helper()
	if RaceEnabled {
		if _, ok := cfg.Env["GORACE"]; !ok {
			env := map[string]string{"GORACE": strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")}
			maps.Copy(env, cfg.Env)
			cfg.Env = env
		}
	}
	var logs, output SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := flylocal.NewServer(cfg, logger, &output)
	if err != nil {
		t.Fatalf("flylocal.NewServer: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
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
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Open(ctx); err != nil {
		t.Fatalf("open flylocal: %v", err)
	}
	return srv
}

// WaitUntil polls cond every 50ms until it returns nil, or fails the test with cond's last error once timeout
// has passed.
func WaitUntil(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent use, for the output of processes.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String is what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
