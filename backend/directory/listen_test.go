package directory_test

import (
	"context"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
)

// listener runs Listen in a goroutine and exposes what it hears.
type listener struct {
	changes chan string
	resets  chan struct{}
	lost    chan error
	done    chan struct{}
	stop    context.CancelFunc
}

func startListener(t *testing.T, d *directory.Directory) *listener {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	l := &listener{
		changes: make(chan string, 100),
		resets:  make(chan struct{}, 100),
		lost:    make(chan error, 100),
		done:    make(chan struct{}),
		stop:    stop,
	}
	go func() {
		defer close(l.done)
		d.Listen(ctx, func(id string) { l.changes <- id }, func() { l.resets <- struct{}{} }, func(err error) { l.lost <- err })
	}()
	t.Cleanup(func() { stop(); <-l.done })
	return l
}

func (l *listener) waitReset(t *testing.T) {
	t.Helper()
	select {
	case <-l.resets:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for onReset")
	}
}

// waitChange waits for a notification about id, skipping others.
func (l *listener) waitChange(t *testing.T, id string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got := <-l.changes:
			if got == id {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for a notification about %s", id)
		}
	}
}

func TestListen_CreateAndMoveNotify(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1", "m2")
	l := startListener(t, d)
	l.waitReset(t) // listening from here on

	create(t, d, "s1")
	l.waitChange(t, "s1")

	if _, err := d.MoveSpace(ctx, "s1", "m2"); err != nil {
		t.Fatal(err)
	}
	l.waitChange(t, "s1")
	// The notification is sent in the moving transaction: once it arrives,
	// the new placement is visible.
	if sp, err := d.Lookup(ctx, "s1"); err != nil || sp.Machine != "m2" {
		t.Fatalf("Lookup after notification = %+v, %v; want m2", sp, err)
	}

	// A failed move announces nothing.
	if _, err := d.MoveSpace(ctx, "s1", "m9"); err == nil {
		t.Fatal("move to unknown machine succeeded")
	}
	create(t, d, "marker")
	select {
	case got := <-l.changes:
		if got != "marker" {
			t.Fatalf("after a failed move, next notification is %q, want marker", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the marker notification")
	}
}

func TestListen_ReconnectResets(t *testing.T) {
	ctx := context.Background()
	d, pool := newDirectory(t, directory.Config{ListenRetryMin: 10 * time.Millisecond, ListenRetryMax: 50 * time.Millisecond})
	register(t, d, "m1", "m2")
	create(t, d, "s1")
	l := startListener(t, d)
	l.waitReset(t)

	var killed int
	if err := pool.QueryRow(ctx, `
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND datname = current_database()`, directory.ListenApplicationName).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d listener backends, want 1", killed)
	}
	select {
	case err := <-l.lost:
		if err == nil {
			t.Fatal("the lost listener was reported without its error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lost listener was not reported")
	}
	l.waitReset(t) // reconnected: the caller is told to flush

	if _, err := d.MoveSpace(ctx, "s1", "m2"); err != nil {
		t.Fatal(err)
	}
	l.waitChange(t, "s1")
}

func TestListen_SilentConnectionIsChecked(t *testing.T) {
	// With a tiny ping interval the listener times out its wait again and
	// again; it must keep its connection (no reset) and keep delivering.
	d, pool := newDirectory(t, directory.Config{ListenPingInterval: 5 * time.Millisecond})
	register(t, d, "m1")
	l := startListener(t, d)
	l.waitReset(t)
	// pinged is when the listener's connection last began a ping (zero
	// before the first).
	pinged := func() time.Time {
		var at *time.Time
		err := pool.QueryRow(context.Background(), `SELECT max(query_start) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1 AND query = '-- ping'`, directory.ListenApplicationName).Scan(&at)
		if err != nil {
			t.Fatal(err)
		}
		if at == nil {
			return time.Time{}
		}
		return *at
	}
	for i := range 3 {
		// Let a few wait timeouts and their pings pass.
		for range 3 {
			last := pinged()
			waitFor(t, "the silent listener to ping", func() bool { return pinged().After(last) })
		}
		id := string(rune('a' + i))
		create(t, d, id)
		l.waitChange(t, id)
	}
	select {
	case <-l.resets:
		t.Fatal("listener reconnected although its connection was fine")
	default:
	}
}

func TestListen_StopsWithContext(t *testing.T) {
	d, _ := newDirectory(t, directory.Config{})
	l := startListener(t, d)
	l.waitReset(t)
	l.stop()
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Listen did not return after its context was canceled")
	}
}
