// Package pgtest gives tests a real, throwaway PostgreSQL: one cluster per test
// binary (started on first use, stopped by Main) and a fresh database per test.
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//	func TestX(t *testing.T) { url := pgtest.NewDatabase(t) ... }
package pgtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/pglocal"
)

var (
	mu      sync.Mutex
	shared  *pglocal.Cluster
	dir     string
	counter atomic.Int64
)

// Main runs the package's tests and stops the shared cluster afterwards. Use it
// as the body of TestMain.
func Main(m *testing.M) {
	code := m.Run()
	mu.Lock()
	if shared != nil {
		if err := shared.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
		os.RemoveAll(dir)
	}
	mu.Unlock()
	os.Exit(code)
}

// NewDatabase creates an empty database in the shared cluster and returns its
// URL. The cluster starts on first use; it fails the test at once if Postgres
// cannot run here.
func NewDatabase(t testing.TB) string {
	t.Helper()
	c := sharedCluster(t)
	name := fmt.Sprintf("t%d_%d", os.Getpid(), counter.Add(1))
	if err := c.CreateDatabase(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return c.URL(name)
}

// NewCluster starts a cluster of the test's own, stopped at cleanup. Use it
// when the test stops or restarts Postgres.
func NewCluster(t testing.TB) *pglocal.Cluster {
	t.Helper()
	c, err := pglocal.Start(context.Background(), pglocal.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	if err := c.CreateDatabase(context.Background(), "spaceport"); err != nil {
		t.Fatal(err)
	}
	return c
}

func sharedCluster(t testing.TB) *pglocal.Cluster {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if shared != nil {
		return shared
	}
	d, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pglocal.Start(context.Background(), pglocal.Config{Dir: d})
	if err != nil {
		os.RemoveAll(d)
		t.Fatalf("start test postgres: %v", err)
	}
	shared, dir = c, d
	return c
}
