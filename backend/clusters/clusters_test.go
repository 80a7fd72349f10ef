package clusters_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/clusters"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// locator is a directory whose answers the test sets; after, when set, is
// called after each lookup (to move a space between two lookups).
type locator struct {
	mu     sync.Mutex
	spaces map[string]directory.Space
	after  func(id string)
}

func (l *locator) set(id, cluster, movingTo string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spaces[id] = directory.Space{ID: id, Cluster: cluster, MovingTo: movingTo}
}

func (l *locator) Lookup(_ context.Context, id string) (directory.Space, error) {
	l.mu.Lock()
	sp, ok := l.spaces[id]
	after := l.after
	l.mu.Unlock()
	if after != nil {
		after(id)
	}
	if !ok {
		return directory.Space{}, fmt.Errorf("look up %s: %w", id, directory.ErrSpaceNotFound)
	}
	return sp, nil
}

// openStore opens a store on a fresh database and returns it with its URL.
func openStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st, err := store.Open(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return st, url
}

// twoClusters is a clusters.Store over main and b (two databases), with a
// store of its own on b to look at b's rows from outside.
func twoClusters(t *testing.T) (cs *clusters.Store, loc *locator, main, b *store.Store) {
	t.Helper()
	main, _ = openStore(t)
	b, bURL := openStore(t)
	loc = &locator{spaces: map[string]directory.Space{}}
	cs, err := clusters.New(clusters.Config{Directory: loc, Main: main, Clusters: []clusters.Cluster{{Name: "b", URL: bURL}}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Close)
	return cs, loc, main, b
}

func batch(version int64, key string) *store.Batch {
	return &store.Batch{Version: version, Entries: []store.Entry{{Key: key, Value: []byte(`1`)}}}
}

func entries(t *testing.T, st *store.Store, id string) int64 {
	t.Helper()
	sum, err := st.Checksum(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sum.Entries
}

// TestStore_EachSpaceOnItsCluster: claims, commits and garbage collection
// go to the cluster the directory names, and nowhere else.
func TestStore_EachSpaceOnItsCluster(t *testing.T) {
	ctx := context.Background()
	cs, loc, main, b := twoClusters(t)
	loc.set("on-main", "main", "")
	loc.set("on-b", "b", "")
	for _, id := range []string{"on-main", "on-b"} {
		snap, err := cs.Claim(ctx, id, "m1")
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.Commit(ctx, id, snap.Epoch, batch(1, "k")); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CollectGarbage(ctx, id, snap.Epoch, time.Hour, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	for st, want := range map[*store.Store]map[string]int64{main: {"on-main": 1, "on-b": 0}, b: {"on-main": 0, "on-b": 1}} {
		for id, n := range want {
			if got := entries(t, st, id); got != n {
				t.Errorf("space %s has %d entries on a cluster, want %d", id, got, n)
			}
		}
	}
}

func TestStore_Refusals(t *testing.T) {
	ctx := context.Background()
	cs, loc, _, b := twoClusters(t)

	loc.set("moving", "main", "b")
	if _, err := cs.Claim(ctx, "moving", "m1"); !errors.Is(err, space.ErrMoving) || !errors.Is(err, space.ErrMoved) {
		t.Fatalf("claim of a moving space: %v, want ErrMoving (which is an ErrMoved)", err)
	}
	if _, err := cs.Claim(ctx, "unknown", "m1"); !errors.Is(err, space.ErrMoved) {
		t.Fatalf("claim of a space not in the directory: %v, want ErrMoved", err)
	}
	loc.set("far", "c", "")
	if _, err := cs.Claim(ctx, "far", "m1"); !errors.Is(err, clusters.ErrUnknownCluster) {
		t.Fatalf("claim on a cluster not configured: %v, want ErrUnknownCluster", err)
	}

	// A move that happens during the claim: the claim is not used, and a
	// commit at its epoch is fenced.
	loc.set("racing", "main", "")
	loc.mu.Lock()
	loc.after = func(id string) {
		loc.mu.Lock()
		if id == "racing" {
			loc.spaces[id] = directory.Space{ID: id, Cluster: "b"}
			loc.after = nil
		}
		loc.mu.Unlock()
	}
	loc.mu.Unlock()
	if _, err := cs.Claim(ctx, "racing", "m1"); !errors.Is(err, space.ErrMoved) {
		t.Fatalf("claim during a move: %v, want ErrMoved", err)
	}
	if err := cs.Commit(ctx, "racing", 1, batch(1, "k")); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("commit at the raced claim's epoch: %v, want ErrFenced", err)
	}

	// Once released, a claim's epoch commits nowhere.
	loc.set("s", "b", "")
	snap, err := cs.Claim(ctx, "s", "m1")
	if err != nil {
		t.Fatal(err)
	}
	cs.Release("s", snap.Epoch+1) // another epoch's release changes nothing
	if err := cs.Commit(ctx, "s", snap.Epoch, batch(1, "k")); err != nil {
		t.Fatal(err)
	}
	cs.Release("s", snap.Epoch)
	if err := cs.Commit(ctx, "s", snap.Epoch, batch(2, "k2")); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("commit after release: %v, want ErrFenced", err)
	}
	if _, err := cs.CollectGarbage(ctx, "s", snap.Epoch, time.Hour, time.Hour); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("garbage collection after release: %v, want ErrFenced", err)
	}
	if got := entries(t, b, "s"); got != 1 {
		t.Fatalf("space s has %d entries on b, want 1", got)
	}
}

// TestStore_ClusterDownCostsOnlyItsSpaces: a cluster that cannot be reached
// fails the claims of its spaces, not of the others', and is opened once
// it answers.
func TestStore_ClusterDownCostsOnlyItsSpaces(t *testing.T) {
	ctx := context.Background()
	main, _ := openStore(t)
	loc := &locator{spaces: map[string]directory.Space{}}
	c := pgtest.NewCluster(t)
	url := c.URL("spaceport")
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	cs, err := clusters.New(clusters.Config{Directory: loc, Main: main, Clusters: []clusters.Cluster{{Name: "b", URL: url + "&connect_timeout=5"}}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Close)
	loc.set("on-b", "b", "")
	loc.set("on-main", "main", "")
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cs.Claim(cctx, "on-b", "m1"); err == nil || !strings.Contains(err.Error(), "open cluster b") {
		t.Fatalf("claim on a cluster that is down: %v", err)
	}
	if _, err := cs.Claim(ctx, "on-main", "m1"); err != nil {
		t.Fatalf("claim on main while b is down: %v", err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Claim(ctx, "on-b", "m1"); err != nil {
		t.Fatalf("claim on b once it is up: %v", err)
	}
}
