package routecache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
)

// fakeDirectory is an in-memory placement table standing in for the
// directory's Lookup: the cache takes a function, and these tests are about
// what the cache does with it (the router's tests use the real directory).
type fakeDirectory struct {
	mu     sync.Mutex
	spaces map[string]string // id -> machine
	calls  atomic.Int64
	gate   chan struct{} // when set, lookups wait for it to close
	fail   error
}

func (f *fakeDirectory) set(id, machine string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spaces[id] = machine
}

func (f *fakeDirectory) lookup(ctx context.Context, id string) (directory.Space, error) {
	f.calls.Add(1)
	f.mu.Lock()
	gate, fail := f.gate, f.fail
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return directory.Space{}, ctx.Err()
		}
	}
	if fail != nil {
		return directory.Space{}, fail
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.spaces[id]
	if !ok {
		return directory.Space{}, fmt.Errorf("look up space %s: %w", id, directory.ErrSpaceNotFound)
	}
	return directory.Space{ID: id, App: "backend", Machine: m}, nil
}

// clock is a manual clock for TTL tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newCache(t *testing.T, cfg Config) (*Cache, *fakeDirectory, *clock) {
	t.Helper()
	f := &fakeDirectory{spaces: map[string]string{"s1": "m1"}}
	c := New(f.lookup, cfg)
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	c.now = clk.now
	return c, f, clk
}

func mustLookup(t *testing.T, c *Cache, id, wantMachine string) {
	t.Helper()
	sp, err := c.Lookup(context.Background(), id)
	if err != nil || sp.Machine != wantMachine {
		t.Fatalf("Lookup(%s) = %+v, %v; want machine %s", id, sp, err, wantMachine)
	}
}

func TestLookup_MissThenHit(t *testing.T) {
	c, f, _ := newCache(t, Config{})
	mustLookup(t, c, "s1", "m1")
	mustLookup(t, c, "s1", "m1")
	mustLookup(t, c, "s1", "m1")
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("directory reads = %d, want 1", got)
	}
	if s := c.Stats(); s.Hits != 2 || s.Misses != 1 {
		t.Fatalf("stats = %+v, want 2 hits, 1 miss", s)
	}
}

func TestLookup_Negative(t *testing.T) {
	c, f, clk := newCache(t, Config{TTL: time.Minute, NegativeTTL: 2 * time.Second})
	for range 3 {
		if _, err := c.Lookup(context.Background(), "ghost"); !errors.Is(err, directory.ErrSpaceNotFound) {
			t.Fatalf("Lookup(ghost): %v, want ErrSpaceNotFound", err)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("directory reads for an unknown space = %d, want 1", got)
	}
	if _, neg := c.Len(); neg != 1 {
		t.Fatalf("negative entries = %d, want 1", neg)
	}
	// The space appears; the negative answer outlives it only for NegativeTTL.
	f.set("ghost", "m2")
	clk.advance(time.Second)
	if _, err := c.Lookup(context.Background(), "ghost"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("Lookup(ghost) within negative TTL: %v, want cached ErrSpaceNotFound", err)
	}
	clk.advance(1500 * time.Millisecond)
	mustLookup(t, c, "ghost", "m2")
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("directory reads = %d, want 2", got)
	}
}

func TestLookup_ErrorsAreNotCached(t *testing.T) {
	c, f, _ := newCache(t, Config{})
	down := errors.New("connection refused")
	f.fail = down
	for range 2 {
		if _, err := c.Lookup(context.Background(), "s1"); !errors.Is(err, down) {
			t.Fatalf("Lookup with directory down: %v, want %v", err, down)
		}
	}
	f.mu.Lock()
	f.fail = nil
	f.mu.Unlock()
	mustLookup(t, c, "s1", "m1")
	if got := f.calls.Load(); got != 3 {
		t.Fatalf("directory reads = %d, want 3 (failures are not cached)", got)
	}
}

func TestLookup_TTLExpiry(t *testing.T) {
	c, f, clk := newCache(t, Config{TTL: 30 * time.Second})
	mustLookup(t, c, "s1", "m1")
	f.set("s1", "m2")
	clk.advance(29 * time.Second)
	mustLookup(t, c, "s1", "m1") // still trusted
	clk.advance(2 * time.Second)
	mustLookup(t, c, "s1", "m2") // expired: read again
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("directory reads = %d, want 2", got)
	}
}

func TestLookup_Coalesced(t *testing.T) {
	c, f, _ := newCache(t, Config{})
	gate := make(chan struct{})
	f.gate = gate

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sp, err := c.Lookup(context.Background(), "s1")
			if err == nil && sp.Machine != "m1" {
				err = fmt.Errorf("got machine %s, want m1", sp.Machine)
			}
			errs <- err
		}()
	}
	// Hold the one read until every caller has joined it.
	waitMisses(t, c, n)
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("directory reads for %d concurrent misses = %d, want 1", n, got)
	}
	if s := c.Stats(); s.Coalesced != n-1 {
		t.Fatalf("coalesced = %d, want %d", s.Coalesced, n-1)
	}
}

func TestLookup_CallerGivesUpReadGoesOn(t *testing.T) {
	c, f, _ := newCache(t, Config{})
	gate := make(chan struct{})
	f.gate = gate

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := c.Lookup(ctx, "s1"); first <- err }()
	second := make(chan error, 1)
	go func() { _, err := c.Lookup(context.Background(), "s1"); second <- err }()
	waitMisses(t, c, 2)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller got %v, want context.Canceled", err)
	}
	close(gate)
	if err := <-second; err != nil {
		t.Fatalf("the other caller got %v; one caller's cancel must not fail the shared read", err)
	}
	mustLookup(t, c, "s1", "m1")
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("directory reads = %d, want 1", got)
	}
}

func TestLookup_ReadTimesOut(t *testing.T) {
	c, f, _ := newCache(t, Config{LookupTimeout: 20 * time.Millisecond})
	f.gate = make(chan struct{}) // never opens
	if _, err := c.Lookup(context.Background(), "s1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup with a hung directory: %v, want DeadlineExceeded", err)
	}
}

func TestEvict(t *testing.T) {
	c, f, _ := newCache(t, Config{TTL: time.Hour})
	mustLookup(t, c, "s1", "m1")
	f.set("s1", "m2")
	mustLookup(t, c, "s1", "m1") // cached
	c.Evict("s1")
	mustLookup(t, c, "s1", "m2")

	// Evict also drops negative answers.
	if _, err := c.Lookup(context.Background(), "new"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatal(err)
	}
	f.set("new", "m3")
	c.Evict("new")
	mustLookup(t, c, "new", "m3")
}

func TestEvict_DuringRead(t *testing.T) {
	// A read that started before a move may return the old placement after
	// the move's NOTIFY evicted the key. Its answer must not be cached.
	c, f, _ := newCache(t, Config{TTL: time.Hour})
	gate := make(chan struct{})
	f.gate = gate
	done := make(chan struct{})
	go func() { defer close(done); _, _ = c.Lookup(context.Background(), "s1") }()
	waitMisses(t, c, 1)
	c.Evict("s1") // the move is announced while the read is in flight
	f.mu.Lock()
	f.gate = nil
	f.mu.Unlock()
	close(gate)
	<-done
	f.set("s1", "m2")
	mustLookup(t, c, "s1", "m2")
}

func TestPurge(t *testing.T) {
	c, f, _ := newCache(t, Config{TTL: time.Hour})
	f.set("s2", "m1")
	mustLookup(t, c, "s1", "m1")
	mustLookup(t, c, "s2", "m1")
	_, _ = c.Lookup(context.Background(), "ghost")
	if pos, neg := c.Len(); pos != 2 || neg != 1 {
		t.Fatalf("Len = %d, %d; want 2, 1", pos, neg)
	}
	c.Purge()
	if pos, neg := c.Len(); pos != 0 || neg != 0 {
		t.Fatalf("Len after Purge = %d, %d; want 0, 0", pos, neg)
	}
	f.set("s1", "m9")
	mustLookup(t, c, "s1", "m9")
}

func TestSizeBound(t *testing.T) {
	c, f, _ := newCache(t, Config{Size: 3, NegativeSize: 2})
	for i := range 10 {
		f.set(fmt.Sprintf("s%d", i), "m1")
		mustLookup(t, c, fmt.Sprintf("s%d", i), "m1")
		_, _ = c.Lookup(context.Background(), fmt.Sprintf("ghost%d", i))
	}
	if pos, neg := c.Len(); pos != 3 || neg != 2 {
		t.Fatalf("Len = %d, %d; want 3, 2", pos, neg)
	}
}

func TestPurge_DuringRead(t *testing.T) {
	// Purge (the notification stream restarted) disowns reads in flight
	// just as Evict does for one key.
	c, f, _ := newCache(t, Config{TTL: time.Hour})
	gate := make(chan struct{})
	f.gate = gate
	done := make(chan struct{})
	go func() { defer close(done); _, _ = c.Lookup(context.Background(), "s1") }()
	waitMisses(t, c, 1)
	c.Purge()
	f.mu.Lock()
	f.gate = nil
	f.mu.Unlock()
	close(gate)
	<-done
	if pos, _ := c.Len(); pos != 0 {
		t.Fatalf("a read disowned by Purge was cached (%d placements)", pos)
	}
	f.set("s1", "m2")
	mustLookup(t, c, "s1", "m2")
}

// waitMisses waits until the cache has counted n misses (callers that went to
// the directory), failing the test after a generous deadline.
func waitMisses(t *testing.T, c *Cache, n uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for c.Stats().Misses < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d callers missed", c.Stats().Misses, n)
		}
		time.Sleep(time.Millisecond)
	}
}
