package ops_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
	"github.com/spaceport-sync/spaceport/router/ops"
)

// loadTimeout bounds every wait of the load test: generous, because it runs real processes built with -race on
// two cores beside other test binaries.
const loadTimeout = 90 * time.Second

const routerApp = "spaceport-router"

// TestStack runs the operations on the local stack as an operator runs them on Fly: flylocal's edge in front
// of the real router and backend binaries (built once for both subtests), a real Postgres, and ops working
// through the directory and flylocal's Machines API.
func TestStack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the router and backend binaries")
	}
	bins := stacktest.Build(t)
	t.Run("DrainUnderLoad", func(t *testing.T) {
		t.Parallel()
		testDrainUnderLoad(t, bins)
	})
	t.Run("ScaleUpAndDown", func(t *testing.T) {
		t.Parallel()
		testScaleUpAndDown(t, bins)
	})
	t.Run("MoveClusterUnderLoad", func(t *testing.T) {
		t.Parallel()
		testMoveClusterUnderLoad(t, bins)
	})
}

// testDrainUnderLoad drains a backend machine of a stack with three, while clients push increments through
// the edge the whole time. Every client of a drained space ends up on another machine, the counters equal the
// increments the clients issued (each acknowledged, none lost or doubled), clients of other spaces are not
// disturbed, and the drained machine is stopped.
func testDrainUnderLoad(t *testing.T, bins stacktest.Binaries) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*loadTimeout)
	defer cancel()
	dbURL := pgtest.NewDatabase(t)
	srv := openStack(t, bins, dbURL, 3)

	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dir, err := directory.Open(ctx, pool, directory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	api, err := machines.New(machines.Config{BaseURL: srv.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	o, err := ops.New(ops.Config{Directory: dir, Machines: api, Grace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.WaitUntil(t, loadTimeout, "3 backend machines live in the directory", func() error {
		st, err := o.Status(ctx)
		if err != nil {
			return err
		}
		live := 0
		for _, m := range st {
			if m.Live && m.FlyState == machines.StateStarted {
				live++
			}
		}
		if live != 3 {
			return fmt.Errorf("machines %+v", st)
		}
		return nil
	})

	// Six spaces, two per machine; the machine of the first is drained.
	var spaces []directory.Space
	for i := range 6 {
		sp, err := o.CreateSpace(ctx, fmt.Sprintf("load-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		spaces = append(spaces, sp)
	}
	victim := spaces[0].Machine
	var clients []*loadClient
	for _, sp := range spaces {
		n := 1
		if sp.Machine == victim {
			n = 2
		}
		for k := range n {
			clients = append(clients, &loadClient{t: t, name: fmt.Sprintf("%s/%d", sp.ID, k), space: sp.ID,
				url: "ws" + strings.TrimPrefix(srv.URL(), "http") + "/api/replicache/websocket/" + sp.ID})
		}
	}

	stop := make(chan struct{})
	errs := make(chan error, len(clients))
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { errs <- c.run(ctx, stop) })
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait(); close(errs) })
	defer stopLoad()
	stacktest.WaitUntil(t, loadTimeout, "every client acknowledged 5 increments", func() error {
		for _, c := range clients {
			if n := c.ackCount(); n < 5 {
				return fmt.Errorf("%s: %d acks", c.name, n)
			}
		}
		return nil
	})
	for _, c := range clients {
		if first := c.machineOf(0); (first == victim) != (c.spaceMachine(spaces) == victim) {
			t.Fatalf("%s connected first to %s; the directory places its space on %s", c.name, first, c.spaceMachine(spaces))
		}
	}

	t.Logf("draining machine %s under load", victim)
	res, err := o.Drain(ctx, []string{victim}, ops.DrainOptions{})
	if err != nil {
		t.Fatalf("Drain: %v (did %+v)", err, res)
	}
	if len(res.Moves) != 2 || len(res.Stopped) != 1 || res.Stopped[0] != victim {
		t.Fatalf("Drain did %+v; want 2 moves and %s stopped", res, victim)
	}

	// The clients of the moved spaces reconnect to the new owners and go on writing there.
	before := map[*loadClient]int{}
	for _, c := range clients {
		before[c] = c.ackCount()
	}
	stacktest.WaitUntil(t, loadTimeout, "every client writing again, on a machine other than the drained one", func() error {
		for _, c := range clients {
			if m := c.currentMachine(); m == victim || m == "" {
				return fmt.Errorf("%s is on machine %q", c.name, m)
			}
			if c.ackCount() < before[c]+5 {
				return fmt.Errorf("%s: %d acks since the drain", c.name, c.ackCount()-before[c])
			}
		}
		return nil
	})
	stopLoad()
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	// Counters: each space's counter is the number of increments its clients issued, all acknowledged.
	for _, sp := range spaces {
		issued := 0
		for _, c := range clients {
			if c.space == sp.ID {
				issued += c.issuedCount()
				if c.ackCount() != c.issuedCount() {
					t.Fatalf("%s: %d of %d increments acknowledged", c.name, c.ackCount(), c.issuedCount())
				}
			}
		}
		got := readCounter(t, ctx, "ws"+strings.TrimPrefix(srv.URL(), "http")+"/api/replicache/websocket/"+sp.ID)
		if got != float64(issued) {
			t.Errorf("space %s: counter %v, want %d (the acknowledged increments)", sp.ID, got, issued)
		}
	}
	for _, c := range clients {
		moved := c.spaceMachine(spaces) == victim
		if conns := c.connections(); moved && conns < 2 || !moved && conns != 1 {
			t.Errorf("%s (space on the drained machine: %t) had %d connections, closed with %v", c.name, moved, conns, c.closeCodes())
		}
	}

	// The drained machine is stopped, in the Machines API and in the directory, and holds no space.
	m, err := api.Get(ctx, ops.DefaultApp, victim)
	if err != nil || m.State != machines.StateStopped {
		t.Fatalf("drained machine: %+v, %v", m, err)
	}
	if st, _ := srv.Supervisor.State(victim); st != flylocal.StateStopped {
		t.Fatalf("flylocal says the drained machine is %s", st)
	}
	st, err := o.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st {
		if m.ID == victim && (m.Live || m.Spaces != 0 || m.State != directory.MachineStopped) {
			t.Fatalf("the directory's view of the drained machine: %+v", m)
		}
	}
}

// loadClient is one Replicache client as a browser tab runs it, pushing increments as fast as they are
// acknowledged. When its connection ends it connects again through the edge with its replica, mutation ID and
// the mutations not yet confirmed, and re-sends those.
type loadClient struct {
	t     *testing.T
	name  string
	space string
	url   string

	mu       sync.Mutex
	c        *syncclient.Client
	issued   []protocol.Mutation
	acked    map[int64]bool
	machines []string               // the machine of each connection, from its welcome
	closes   []websocket.StatusCode // how each ended connection was closed
}

// run pushes until stop is closed, then waits until every mutation it issued is acknowledged.
func (lc *loadClient) run(ctx context.Context, stop <-chan struct{}) error {
	lc.mu.Lock()
	lc.acked = map[int64]bool{}
	lc.mu.Unlock()
	if err := lc.connect(ctx, nil); err != nil {
		return err
	}
	for {
		select {
		case <-stop:
			return lc.finish(ctx)
		default:
		}
		m := lc.c.Mutation("increment", map[string]any{"key": "counter", "delta": 1})
		lc.mu.Lock()
		lc.issued = append(lc.issued, m)
		lc.mu.Unlock()
		if err := lc.push(ctx, m); err != nil {
			if err := lc.reconnect(ctx); err != nil {
				return err
			}
		}
	}
}

// push sends mutations and records the acknowledgement; an error means the connection ended first.
func (lc *loadClient) push(ctx context.Context, ms ...protocol.Mutation) error {
	pctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	ans, err := lc.c.Push(pctx, ms...)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if !bytes.Contains(ans, []byte(`"type":"pushed"`)) || bytes.Contains(ans, []byte(`"response"`)) {
		return fmt.Errorf("%s: push answered %s", lc.name, ans)
	}
	lc.mu.Lock()
	for _, m := range ms {
		lc.acked[m.ID] = true
	}
	lc.mu.Unlock()
	return nil
}

// reconnect waits for the connection's end, keeps what a client keeps, connects again and re-sends what is not
// acknowledged.
func (lc *loadClient) reconnect(ctx context.Context) error {
	old := lc.c
	select {
	case <-old.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if errs := old.Errors(); len(errs) > 0 {
		return fmt.Errorf("%s: protocol errors: %v", lc.name, errs)
	}
	lc.mu.Lock()
	lc.closes = append(lc.closes, old.CloseStatus())
	lc.mu.Unlock()
	return lc.connect(ctx, old)
}

// connect dials through the edge until a welcome comes, resuming from old if not nil, then re-sends the
// mutations not acknowledged yet.
func (lc *loadClient) connect(ctx context.Context, old *syncclient.Client) error {
	opts := syncclient.Options{DiscardPokes: true}
	if old != nil {
		opts.ClientGroupID, opts.ClientID = old.ClientGroupID, old.ClientID
		opts.State, opts.NextMutationID = old.State(), old.NextMutationID()
	}
	deadline := time.Now().Add(loadTimeout)
	for backoff := 20 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		dctx, cancel := context.WithTimeout(ctx, loadTimeout)
		c, err := syncclient.Dial(dctx, lc.url, opts)
		if err == nil {
			if err = c.WaitWelcome(dctx); err != nil {
				c.Kill()
			}
		}
		cancel()
		if err == nil {
			lc.mu.Lock()
			lc.c = c
			lc.machines = append(lc.machines, c.Welcome().MachineID)
			lc.mu.Unlock()
			lc.t.Cleanup(c.Kill)
			break
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("%s: could not connect through the edge: %v", lc.name, err)
		}
		time.Sleep(backoff)
	}
	lc.mu.Lock()
	var unacked []protocol.Mutation
	for _, m := range lc.issued {
		if !lc.acked[m.ID] {
			unacked = append(unacked, m)
		}
	}
	lc.mu.Unlock()
	if len(unacked) == 0 {
		return nil
	}
	if err := lc.push(ctx, unacked...); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return lc.reconnect(ctx)
	}
	return nil
}

// finish makes sure every issued mutation is acknowledged, reconnecting as often as needed, then closes.
func (lc *loadClient) finish(ctx context.Context) error {
	for lc.ackCount() < lc.issuedCount() {
		if err := lc.reconnect(ctx); err != nil {
			return err
		}
	}
	lc.c.Close()
	return nil
}

func (lc *loadClient) ackCount() int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return len(lc.acked)
}

func (lc *loadClient) issuedCount() int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return len(lc.issued)
}

func (lc *loadClient) machineOf(i int) string {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.machines[i]
}

// currentMachine is the machine of the connection open now, or "" if it has ended.
func (lc *loadClient) currentMachine() string {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	select {
	case <-lc.c.Done():
		return ""
	default:
		return lc.machines[len(lc.machines)-1]
	}
}

func (lc *loadClient) connections() int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return len(lc.machines)
}

func (lc *loadClient) closeCodes() []websocket.StatusCode {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return append([]websocket.StatusCode(nil), lc.closes...)
}

// spaceMachine is the machine the directory placed the client's space on at the start.
func (lc *loadClient) spaceMachine(spaces []directory.Space) string {
	for _, sp := range spaces {
		if sp.ID == lc.space {
			return sp.Machine
		}
	}
	return ""
}

// readCounter reads a space's counter with a new client.
func readCounter(t *testing.T, ctx context.Context, url string) float64 {
	t.Helper()
	var c *syncclient.Client
	stacktest.WaitUntil(t, loadTimeout, "a reader connected to "+url, func() error {
		dctx, cancel := context.WithTimeout(ctx, loadTimeout)
		defer cancel()
		var err error
		if c, err = syncclient.Dial(dctx, url, syncclient.Options{}); err != nil {
			return err
		}
		if err := c.WaitWelcome(dctx); err != nil {
			c.Kill()
			return err
		}
		if _, err := c.Pull(dctx); err != nil {
			c.Kill()
			return err
		}
		return nil
	})
	defer c.Close()
	var n float64
	if raw, ok := c.State().Data["counter"]; ok {
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// openStack runs the real router (one machine) and backend (backends machines) binaries under flylocal, with its
// Machines API, against the database at dbURL. Everything stops when the test ends; a data race or a crash in a
// machine fails the test.
func openStack(t *testing.T, bins stacktest.Binaries, dbURL string, backends int) *flylocal.Server {
	t.Helper()
	return openStackEnv(t, bins, dbURL, backends, nil)
}

// openStackEnv is openStack with env added to every machine's environment.
func openStackEnv(t *testing.T, bins stacktest.Binaries, dbURL string, backends int, env map[string]string) *flylocal.Server {
	t.Helper()
	stacktest.MigrateFirst(t, dbURL, loadTimeout)
	all := map[string]string{"DATABASE_URL": dbURL, "STATIC_DIR": t.TempDir(), "AUTH_DISABLED": "1",
		"REPLAY_SECRET": "drain-test-replay-secret"}
	maps.Copy(all, env)
	return stacktest.Open(t, flylocal.Config{
		Listen:    "127.0.0.1:0",
		APIListen: "127.0.0.1:0",
		StateDir:  t.TempDir(),
		EdgeApp:   routerApp,
		// Tokens are not what this test is about (AUTH_DISABLED); the replay secret is on, as on Fly, so
		// backends admit only what the router replayed.
		Env: all,
		Apps: []flylocal.AppConfig{
			{Name: routerApp, Machines: 1, Command: []string{bins.Router}},
			{Name: ops.DefaultApp, Machines: backends, Command: []string{bins.Backend},
				KillTimeout: flylocal.Duration(30 * time.Second)},
		},
	}, loadTimeout)
}
