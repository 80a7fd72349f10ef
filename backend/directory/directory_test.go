package directory_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const app = "spaceport-backend"

// newDirectory opens a directory on a fresh database and returns it with its
// pool (for the few checks that look under the API).
func newDirectory(t *testing.T, cfg directory.Config) (*directory.Directory, *pgxpool.Pool) {
	t.Helper()
	return openDirectory(t, pgtest.NewDatabase(t), cfg)
}

// openDirectory opens a directory on the database at url with a pool of its
// own, as one more process would.
func openDirectory(t *testing.T, url string, cfg directory.Config) (*directory.Directory, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	d, err := directory.Open(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d, pool
}

func register(t *testing.T, d *directory.Directory, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := d.RegisterMachine(context.Background(), directory.Machine{ID: id, App: app, Region: "local"}); err != nil {
			t.Fatal(err)
		}
	}
}

// kill makes a machine's last heartbeat an hour old.
func kill(t *testing.T, pool *pgxpool.Pool, id string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `UPDATE directory.machines SET last_heartbeat = now() - interval '1 hour' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
}

func create(t *testing.T, d *directory.Directory, id string) directory.Space {
	t.Helper()
	sp, err := d.CreateSpace(context.Background(), id, app)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func machines(t *testing.T, d *directory.Directory) map[string]directory.MachineInfo {
	t.Helper()
	list, err := d.ListMachines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]directory.MachineInfo, len(list))
	for _, m := range list {
		out[m.ID] = m
	}
	return out
}

func TestOpen_Twice(t *testing.T) {
	d, pool := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	if _, err := directory.Open(context.Background(), pool, directory.Config{}); err != nil {
		t.Fatalf("second Open: %v", err)
	}
	if got := len(machines(t, d)); got != 1 {
		t.Fatalf("machines after second Open = %d, want 1", got)
	}
}

func TestCreateSpace_FewestLiveFirst(t *testing.T) {
	ctx := context.Background()
	d, pool := newDirectory(t, directory.Config{})
	register(t, d, "m1", "m2", "m3")
	if err := d.RegisterMachine(ctx, directory.Machine{ID: "other1", App: "other-app"}); err != nil {
		t.Fatal(err)
	}

	// Equal counts: ties go by machine ID, so three creates fill each once.
	for i, want := range []string{"m1", "m2", "m3"} {
		if sp := create(t, d, fmt.Sprintf("s%d", i)); sp.Machine != want || sp.App != app {
			t.Fatalf("space %d placed on %s/%s, want %s/%s", i, sp.App, sp.Machine, app, want)
		}
	}
	create(t, d, "s3") // m1 now has 2

	// m2 dead (stale heartbeat), m3 stopped: only m1 is live.
	kill(t, pool, "m2")
	if err := d.SetMachineState(ctx, "m3", directory.MachineStopped); err != nil {
		t.Fatal(err)
	}
	if sp := create(t, d, "s4"); sp.Machine != "m1" {
		t.Fatalf("with m2 dead and m3 stopped, placed on %s, want m1", sp.Machine)
	}

	ms := machines(t, d)
	for id, want := range map[string]struct {
		spaces int
		live   bool
		state  directory.MachineState
	}{
		"m1":     {3, true, directory.MachineStarted},
		"m2":     {1, false, directory.MachineStarted},
		"m3":     {1, false, directory.MachineStopped},
		"other1": {0, true, directory.MachineStarted},
	} {
		m := ms[id]
		if m.Spaces != want.spaces || m.Live != want.live || m.State != want.state {
			t.Errorf("machine %s: spaces=%d live=%v state=%s, want %d %v %s", id, m.Spaces, m.Live, m.State, want.spaces, want.live, want.state)
		}
	}

	// A heartbeat brings m2 back; it is now the emptiest live machine. A
	// registration brings m3 back to started.
	if err := d.Heartbeat(ctx, "m2"); err != nil {
		t.Fatal(err)
	}
	if sp := create(t, d, "s5"); sp.Machine != "m2" {
		t.Fatalf("after m2's heartbeat, placed on %s, want m2", sp.Machine)
	}
	register(t, d, "m3")
	if sp := create(t, d, "s6"); sp.Machine != "m3" {
		t.Fatalf("after m3 registered again, placed on %s, want m3", sp.Machine)
	}

	// Another app's machines are never used, and it has its own.
	sp, err := d.CreateSpace(ctx, "o1", "other-app")
	if err != nil || sp.Machine != "other1" || sp.App != "other-app" {
		t.Fatalf("create in other-app = %+v, %v; want other1", sp, err)
	}
}

func TestCreateSpace_NoLiveMachine(t *testing.T) {
	ctx := context.Background()
	d, pool := newDirectory(t, directory.Config{})
	if _, err := d.CreateSpace(ctx, "s1", app); !errors.Is(err, directory.ErrNoLiveMachine) {
		t.Fatalf("create with no machines: %v, want ErrNoLiveMachine", err)
	}
	register(t, d, "m1")
	kill(t, pool, "m1")
	if _, err := d.CreateSpace(ctx, "s1", app); !errors.Is(err, directory.ErrNoLiveMachine) {
		t.Fatalf("create with only a dead machine: %v, want ErrNoLiveMachine", err)
	}
	if _, err := d.Lookup(ctx, "s1"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("lookup after failed create: %v, want ErrSpaceNotFound", err)
	}
}

func TestCreateSpace_LiveWindowFromConfig(t *testing.T) {
	ctx := context.Background()
	d, pool := newDirectory(t, directory.Config{LiveWindow: 2 * time.Hour})
	register(t, d, "m1")
	kill(t, pool, "m1") // an hour old: still live within two hours
	if sp, err := d.CreateSpace(ctx, "s1", app); err != nil || sp.Machine != "m1" {
		t.Fatalf("create = %+v, %v; want placed on m1", sp, err)
	}
}

func TestCreateSpace_Concurrent(t *testing.T) {
	ctx := context.Background()
	d, pool := newDirectory(t, directory.Config{})
	register(t, d, "m1", "m2", "m3", "m4")

	// 40 concurrent creates over 4 machines: exact placement means 10 each.
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d.CreateSpace(ctx, fmt.Sprintf("c%d", i), app)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for id, m := range machines(t, d) {
		if m.Spaces != n/4 {
			t.Errorf("machine %s has %d spaces, want %d", id, m.Spaces, n/4)
		}
	}

	// 20 concurrent creates of one ID: one wins, the rest see ErrSpaceExists.
	var ok, exists int
	var mu sync.Mutex
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d.CreateSpace(ctx, "same", app)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, directory.ErrSpaceExists):
				exists++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != 1 || exists != 19 {
		t.Fatalf("same-ID creates: %d succeeded, %d ErrSpaceExists; want 1 and 19", ok, exists)
	}
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM directory.spaces WHERE id = 'same'`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Fatalf("rows for 'same' = %d, want 1", rows)
	}
}

func TestCreateSpace_GeneratedID(t *testing.T) {
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	a, b := create(t, d, ""), create(t, d, "")
	for _, sp := range []directory.Space{a, b} {
		if !protocol.ValidSpaceID(sp.ID) || len(sp.ID) < 20 {
			t.Fatalf("generated ID %q is not a valid, long random ID", sp.ID)
		}
	}
	if a.ID == b.ID {
		t.Fatalf("two generated IDs are equal: %q", a.ID)
	}
	got, err := d.GetSpace(context.Background(), a.ID)
	if err != nil || got.Machine != "m1" || got.CreatedAt.IsZero() {
		t.Fatalf("GetSpace(%s) = %+v, %v", a.ID, got, err)
	}
}

func TestCreateSpace_Exists(t *testing.T) {
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	create(t, d, "dup")
	if _, err := d.CreateSpace(context.Background(), "dup", app); !errors.Is(err, directory.ErrSpaceExists) {
		t.Fatalf("second create: %v, want ErrSpaceExists", err)
	}
	if got := machines(t, d)["m1"].Spaces; got != 1 {
		t.Fatalf("m1 space count = %d, want 1", got)
	}
}

func TestInvalidInput(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	create(t, d, "ok")
	for _, id := range []string{"has space", "../etc", "a;b", "ü", strings.Repeat("x", protocol.MaxSpaceIDLen+1)} {
		if _, err := d.CreateSpace(ctx, id, app); !errors.Is(err, directory.ErrInvalidSpaceID) {
			t.Errorf("CreateSpace(%q): %v, want ErrInvalidSpaceID", id, err)
		}
		if _, err := d.Lookup(ctx, id); !errors.Is(err, directory.ErrInvalidSpaceID) {
			t.Errorf("Lookup(%q): %v, want ErrInvalidSpaceID", id, err)
		}
		if _, err := d.MoveSpace(ctx, id, "m1"); !errors.Is(err, directory.ErrInvalidSpaceID) {
			t.Errorf("MoveSpace(%q): %v, want ErrInvalidSpaceID", id, err)
		}
	}
	if _, err := d.Lookup(ctx, ""); !errors.Is(err, directory.ErrInvalidSpaceID) {
		t.Errorf("Lookup(\"\"): %v, want ErrInvalidSpaceID", err)
	}
	for _, m := range []directory.Machine{
		{ID: "", App: app},
		{ID: "m;x", App: app},
		{ID: "m2", App: ""},
		{ID: "m2", App: `a"b`},
		{ID: "m2", App: app, Region: strings.Repeat("r", 65)},
	} {
		if err := d.RegisterMachine(ctx, m); !errors.Is(err, directory.ErrInvalidMachine) {
			t.Errorf("RegisterMachine(%+v): %v, want ErrInvalidMachine", m, err)
		}
	}
	if _, err := d.CreateSpace(ctx, "s", "bad app"); !errors.Is(err, directory.ErrInvalidMachine) {
		t.Errorf("CreateSpace with app %q: %v, want ErrInvalidMachine", "bad app", err)
	}
	if err := d.SetMachineState(ctx, "m1", "exploded"); !errors.Is(err, directory.ErrInvalidMachineState) {
		t.Errorf("SetMachineState(exploded): %v, want ErrInvalidMachineState", err)
	}
	if got := len(machines(t, d)); got != 1 {
		t.Fatalf("machines after invalid input = %d, want 1", got)
	}
}

func TestNotFound(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	create(t, d, "s1")
	if _, err := d.Lookup(ctx, "nope"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Errorf("Lookup(nope): %v, want ErrSpaceNotFound", err)
	}
	if _, err := d.GetSpace(ctx, "nope"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Errorf("GetSpace(nope): %v, want ErrSpaceNotFound", err)
	}
	if _, err := d.MoveSpace(ctx, "nope", "m1"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Errorf("MoveSpace(nope): %v, want ErrSpaceNotFound", err)
	}
	if _, err := d.MoveSpace(ctx, "s1", "m9"); !errors.Is(err, directory.ErrMachineNotFound) {
		t.Errorf("MoveSpace to m9: %v, want ErrMachineNotFound", err)
	}
	if err := d.Heartbeat(ctx, "m9"); !errors.Is(err, directory.ErrMachineNotFound) {
		t.Errorf("Heartbeat(m9): %v, want ErrMachineNotFound", err)
	}
	if err := d.SetMachineState(ctx, "m9", directory.MachineStopped); !errors.Is(err, directory.ErrMachineNotFound) {
		t.Errorf("SetMachineState(m9): %v, want ErrMachineNotFound", err)
	}
	if sp, err := d.Lookup(ctx, "s1"); err != nil || sp.Machine != "m1" {
		t.Errorf("s1 after failed moves = %+v, %v; want on m1", sp, err)
	}
}

func TestListSpaces_Pages(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	for _, id := range []string{"c", "a", "e", "b", "d"} {
		create(t, d, id)
	}
	var got []string
	after := ""
	for {
		page, err := d.ListSpaces(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 2 {
			t.Fatalf("page of %d, want at most 2", len(page))
		}
		for _, sp := range page {
			got = append(got, sp.ID)
		}
		after = page[len(page)-1].ID
	}
	if strings.Join(got, ",") != "a,b,c,d,e" {
		t.Fatalf("listed %v, want a..e in order", got)
	}
	all, err := d.ListSpaces(ctx, "", 0)
	if err != nil || len(all) != 5 {
		t.Fatalf("ListSpaces default limit = %d spaces, %v; want 5", len(all), err)
	}
}

func TestMoveSpace(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1", "m2")
	if err := d.RegisterMachine(ctx, directory.Machine{ID: "n1", App: "next-backend"}); err != nil {
		t.Fatal(err)
	}
	sp := create(t, d, "s1")
	if sp.Machine != "m1" {
		t.Fatalf("placed on %s, want m1", sp.Machine)
	}
	moved, err := d.MoveSpace(ctx, "s1", "m2")
	if err != nil || moved.Machine != "m2" || moved.App != app || !moved.CreatedAt.Equal(sp.CreatedAt) {
		t.Fatalf("MoveSpace = %+v, %v", moved, err)
	}
	if got, err := d.Lookup(ctx, "s1"); err != nil || got.Machine != "m2" {
		t.Fatalf("Lookup after move = %+v, %v; want m2", got, err)
	}
	ms := machines(t, d)
	if ms["m1"].Spaces != 0 || ms["m2"].Spaces != 1 {
		t.Fatalf("counts after move: m1=%d m2=%d, want 0 and 1", ms["m1"].Spaces, ms["m2"].Spaces)
	}
	// Moving to the same machine changes nothing.
	if _, err := d.MoveSpace(ctx, "s1", "m2"); err != nil {
		t.Fatal(err)
	}
	if got := machines(t, d)["m2"].Spaces; got != 1 {
		t.Fatalf("m2 count after no-op move = %d, want 1", got)
	}
	// Moving to another app's machine takes that app.
	if moved, err := d.MoveSpace(ctx, "s1", "n1"); err != nil || moved.App != "next-backend" {
		t.Fatalf("move to n1 = %+v, %v; want app next-backend", moved, err)
	}
}

func TestMoveSpace_OppositeMovesConcurrently(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1", "m2")
	const n = 20 // placement alternates: even on m1, odd on m2
	for i := range n {
		create(t, d, fmt.Sprintf("s%02d", i))
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("s%02d", i)
			sp, err := d.Lookup(ctx, id)
			if err != nil {
				t.Error(err)
				return
			}
			to := map[string]string{"m1": "m2", "m2": "m1"}[sp.Machine]
			if _, err := d.MoveSpace(ctx, id, to); err != nil {
				t.Errorf("move %s to %s: %v", id, to, err)
			}
		}()
	}
	wg.Wait()
	ms := machines(t, d)
	if ms["m1"].Spaces+ms["m2"].Spaces != n || ms["m1"].Spaces != n/2 {
		t.Fatalf("counts after swapping moves: m1=%d m2=%d, want %d each", ms["m1"].Spaces, ms["m2"].Spaces, n/2)
	}
}

func TestRunHeartbeat(t *testing.T) {
	ctx := context.Background()
	d, pool := newDirectory(t, directory.Config{})
	m := directory.Machine{ID: "m1", App: app, Region: "local"}
	register(t, d, m.ID)
	kill(t, pool, m.ID)

	hctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); d.RunHeartbeat(hctx, m, 10*time.Millisecond) }()
	t.Cleanup(func() { stop(); <-done })

	waitFor(t, "heartbeat makes m1 live", func() bool { return machines(t, d)["m1"].Live })

	// A vanished row is registered again.
	if _, err := pool.Exec(ctx, `DELETE FROM directory.machines WHERE id = 'm1'`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "heartbeat registers m1 again", func() bool {
		got, ok := machines(t, d)["m1"]
		return ok && got.Live && got.Region == "local"
	})

	stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunHeartbeat did not return after cancel")
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// NotOn names, in one query, the spaces a machine holds that the directory
// has moved elsewhere or deleted.
func TestNotOn(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	create(t, d, "stays")
	create(t, d, "moves")
	create(t, d, "deleted")
	register(t, d, "m2")
	if _, err := d.MoveSpace(ctx, "moves", "m2"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteSpace(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	got, err := d.NotOn(ctx, "m1", []string{"stays", "moves", "deleted", "never-was"})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []string{"deleted", "moves", "never-was"}; !slices.Equal(got, want) {
		t.Fatalf("NotOn(m1) = %v, want %v", got, want)
	}
	if got, err := d.NotOn(ctx, "m1", nil); err != nil || len(got) != 0 {
		t.Fatalf("NotOn of no spaces = %v, %v", got, err)
	}
}
