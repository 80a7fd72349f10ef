package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
)

// statusMoved is the close code of a backend that does not own the space (PROTOCOL.md §5).
const statusMoved websocket.StatusCode = 4004

// routerApp is the edge app: every request reaches the router first.
const routerApp = "spaceport-router"

// openPair runs the real router (one machine) and backend (two machines) binaries under flylocal against a fresh
// Postgres database, and returns the system's edge, with the admin token set, once both backend machines are live
// in the directory, and their IDs. Everything stops when the test ends; a data race or a crash in a machine fails
// the test. Each option may change the machines' environment (and read it: DATABASE_URL is the test's database).
func openPair(t *testing.T, options ...func(env map[string]string)) (*edge, [2]string) {
	t.Helper()
	bins := stacktest.Build(t)
	admin := randomHex(16)
	env := map[string]string{
		"DATABASE_URL": pgtest.NewDatabase(t),
		"STATIC_DIR":   t.TempDir(),
		// Auth on, as in production: clients get their tokens from the router (DEV_TOKENS, allowed because
		// flylocal's region is "local"), backends admit only connections the router replayed (REPLAY_SECRET).
		"AUTH_SECRET":   randomHex(32),
		"DEV_TOKENS":    "1",
		"REPLAY_SECRET": randomHex(16),
		"ADMIN_TOKEN":   admin,
	}
	for _, o := range options {
		o(env)
	}
	srv := stacktest.Open(t, flylocal.Config{
		Listen:   "127.0.0.1:0",
		StateDir: t.TempDir(),
		EdgeApp:  routerApp,
		Env:      env,
		Apps: []flylocal.AppConfig{
			{Name: routerApp, Machines: 1, Command: []string{bins.Router}},
			{Name: backendApp, Machines: 2, Command: []string{bins.Backend}},
		},
	}, waitTimeout)
	e := newEdge(t, srv.URL())
	e.admin = admin
	var pair [2]string
	for i, m := range srv.Supervisor.Machines(backendApp) {
		pair[i] = m.ID
	}
	e.waitLiveMachines(t, pair[:]...)
	return e, pair
}

// theOther is the machine of pair that is not id.
func theOther(pair [2]string, id string) string {
	if pair[0] == id {
		return pair[1]
	}
	return pair[0]
}

// peer is one Replicache client as a browser tab runs it: it keeps its replica, its next mutation ID and the
// mutations the server has not confirmed across connections, and when a connection ends it connects again
// through the edge with all of that, re-sending what is unconfirmed.
type peer struct {
	t       *testing.T
	name    string
	url     string
	groupID string
	id      string
	state   *syncclient.State   // the replica kept between connections; nil for a new client
	nextID  int64               // the next mutation's ID between connections; 0 for a new client
	pending []protocol.Mutation // pushed and not yet confirmed by the server's lastMutationID
	c       *syncclient.Client  // the current connection
}

func newPeer(t *testing.T, name, url string) *peer { return &peer{t: t, name: name, url: url} }

// connect opens a connection through the edge, waits for its welcome and re-sends unconfirmed mutations. A
// connection closed with 4004 before its welcome reached a machine that does not own the space (yet); like a
// client, the peer reconnects with backoff.
func (p *peer) connect(ctx context.Context) *protocol.Welcome {
	p.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := p.dial(ctx)
		if err == nil {
			if attempt > 1 {
				p.t.Logf("%s: connected on attempt %d", p.name, attempt)
			}
			break
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: could not connect through the edge: %v", p.name, err)
		}
		p.t.Logf("%s: attempt %d: %v; retrying in %s", p.name, attempt, err, backoff)
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
	p.groupID, p.id = p.c.ClientGroupID, p.c.ClientID
	if unconfirmed := p.unconfirmed(p.c.State()); len(unconfirmed) > 0 {
		p.t.Logf("%s: re-sending %d unconfirmed mutation(s) from %d", p.name, len(unconfirmed), unconfirmed[0].ID)
		p.push(ctx, unconfirmed...)
	}
	return p.c.Welcome()
}

func (p *peer) dial(ctx context.Context) error {
	dialCtx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	c, err := syncclient.Dial(dialCtx, p.url, syncclient.Options{
		ClientGroupID: p.groupID, ClientID: p.id, State: p.state, NextMutationID: p.nextID,
	})
	if err != nil {
		return err
	}
	p.t.Cleanup(c.Kill)
	if err := c.WaitWelcome(dialCtx); err != nil {
		c.Kill()
		return fmt.Errorf("no welcome: %w", err)
	}
	p.c = c
	return nil
}

// unconfirmed returns the pending mutations that the replica s does not show as applied.
func (p *peer) unconfirmed(s *syncclient.State) []protocol.Mutation {
	var out []protocol.Mutation
	for _, m := range p.pending {
		if m.ID > s.LMIDs[m.ClientID] {
			out = append(out, m)
		}
	}
	return out
}

// push sends mutations in one push and requires the server to acknowledge it.
func (p *peer) push(ctx context.Context, ms ...protocol.Mutation) {
	p.t.Helper()
	ans, err := p.c.Push(ctx, ms...)
	if err != nil {
		p.t.Fatalf("%s: push: %v", p.name, err)
	}
	if !bytes.Contains(ans, []byte(`"type":"pushed"`)) || bytes.Contains(ans, []byte(`"response"`)) {
		p.t.Fatalf("%s: push answered %s", p.name, ans)
	}
}

// mutate runs a new mutation: pushed, acknowledged and kept pending until confirmed.
func (p *peer) mutate(ctx context.Context, name string, args any) protocol.Mutation {
	p.t.Helper()
	m := p.c.Mutation(name, args)
	p.pending = append(p.pending, m)
	p.push(ctx, m)
	return m
}

// send pushes a new mutation without waiting: the answer (or the connection's end) arrives on the channel.
func (p *peer) send(ctx context.Context, name string, args any) <-chan error {
	m := p.c.Mutation(name, args)
	p.pending = append(p.pending, m)
	c, done := p.c, make(chan error, 1)
	go func() {
		_, err := c.Push(ctx, m)
		done <- err
	}()
	return done
}

// waitConfirmed waits until the replica shows the mutation applied.
func (p *peer) waitConfirmed(ctx context.Context, m protocol.Mutation) {
	p.t.Helper()
	if err := p.c.WaitLMID(ctx, m.ID); err != nil {
		p.t.Fatalf("%s: mutation %d (%s) never confirmed: %v", p.name, m.ID, m.Name, err)
	}
}

// movedTimeout bounds the wait for a machine to let go of a space that was moved. What tells it (the directory's
// NOTIFY, a refused join, or a RECHECK_INTERVAL the test sets short) does within seconds: this is generous for busy
// machines, and the tests that prove one of these set RECHECK_INTERVAL to an hour, so the periodic recheck cannot
// stand in for it.
const movedTimeout = 30 * time.Second

// waitMoved waits for the connection to be closed with 4004 and keeps what a client keeps for the next one.
func (p *peer) waitMoved(ctx context.Context) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, movedTimeout)
	defer cancel()
	select {
	case <-p.c.Done():
	case <-ctx.Done():
		p.t.Fatalf("%s: connection not closed after the move: %v", p.name, ctx.Err())
	}
	if got := p.c.CloseStatus(); got != statusMoved {
		p.t.Fatalf("%s: connection closed with status %d, want %d (moved)", p.name, got, statusMoved)
	}
	p.noErrors()
	p.state, p.nextID = p.c.State(), p.c.NextMutationID()
	p.pending = p.unconfirmed(p.state)
}

// noErrors fails the test if the server broke the poke chain or sent an undecodable frame.
func (p *peer) noErrors() {
	p.t.Helper()
	if errs := p.c.Errors(); len(errs) > 0 {
		p.t.Fatalf("%s: protocol errors from the server: %v", p.name, errs)
	}
}

// TestFlylocal_SpaceMovesBetweenMachines runs the system as on Fly: flylocal's edge in front of one router machine
// and two backend machines (the real binaries), a real Postgres. Clients reach a space only through the edge,
// which replays their connection to the machine the router names. The space is moved to the other machine and
// back: each time the connected clients are closed with 4004, reconnect through the edge with their replica and
// cookie, land on the new owner, re-send what was not confirmed and converge, with every mutation applied exactly
// once. The backends' periodic recheck is an hour away: only the directory's NOTIFY tells the old owner in time.
func TestFlylocal_SpaceMovesBetweenMachines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the router and backend binaries")
	}
	t.Parallel()
	e, pair := openPair(t, func(env map[string]string) { env["RECHECK_INTERVAL"] = "1h" })
	ctx := testContext(t)

	const spaceID = "e2e-move"
	sp := e.createSpace(t, spaceID)
	if got := e.getSpace(t, spaceID); got.Machine != sp.Machine {
		t.Fatalf("GET /api/spaces/%s says machine %s; POST said %s", spaceID, got.Machine, sp.Machine)
	}
	owner := sp.Machine
	other := theOther(pair, owner)

	p1, p2 := newPeer(t, "client 1", e.wsURL(spaceID, e.token(t))), newPeer(t, "client 2", e.wsURL(spaceID, e.token(t)))
	for _, p := range []*peer{p1, p2} {
		w := p.connect(ctx)
		if w.MachineID != owner || w.SpaceID != spaceID || w.Region != flylocal.Region {
			t.Fatalf("%s: welcome %+v; the directory places %s on machine %s", p.name, *w, spaceID, owner)
		}
	}

	// Both clients write and see each other's writes.
	p1.waitConfirmed(ctx, p1.mutate(ctx, "createTodo", map[string]any{"id": "from-1", "text": "written by client 1"}))
	p2.waitConfirmed(ctx, p2.mutate(ctx, "createTodo", map[string]any{"id": "from-2", "text": "written by client 2"}))
	p1.waitConfirmed(ctx, p1.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1}))
	p2.waitConfirmed(ctx, p2.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1}))
	want := 2.0
	waitConverged(t, want, p1, p2)

	for round, target := range []string{other, owner} {
		t.Logf("round %d: moving %s to machine %s", round+1, spaceID, target)
		// Pushed and confirmed before the move.
		before := p1.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1})
		p1.waitConfirmed(ctx, before)
		want++

		var moved space
		e.mustCall(t, http.MethodPut, "/api/spaces/"+spaceID+"/machine", map[string]string{"machine": target}, http.StatusOK, &moved)
		if moved.Machine != target {
			t.Fatalf("move answered %+v, want machine %s", moved, target)
		}
		// In flight while the old machine lets go: it may be committed there or not at all; either way client 2
		// re-sends it if unconfirmed and it must count once.
		inflight := p2.send(ctx, "increment", map[string]any{"key": "counter", "delta": 1})
		want++

		p1.waitMoved(ctx)
		p2.waitMoved(ctx)
		t.Logf("round %d: the push in flight during the move: %v", round+1, <-inflight)
		if got := e.getSpace(t, spaceID); got.Machine != target {
			t.Fatalf("after the move GET /api/spaces/%s says machine %s, want %s", spaceID, got.Machine, target)
		}

		for _, p := range []*peer{p1, p2} {
			if w := p.connect(ctx); w.MachineID != target {
				t.Fatalf("%s reconnected to machine %s; the space is on %s", p.name, w.MachineID, target)
			}
		}
		// Client 1 re-sends the mutation confirmed before the move, as a client that missed the confirmation
		// would: the new owner must skip it.
		p1.push(ctx, before)
		todo := fmt.Sprintf("after-move-%d", round+1)
		p1.mutate(ctx, "createTodo", map[string]any{"id": todo, "text": "written after move " + fmt.Sprint(round+1)})
		last1 := p1.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1})
		last2 := p2.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1})
		want += 2
		p1.waitConfirmed(ctx, last1)
		p2.waitConfirmed(ctx, last2)
		waitConverged(t, want, p1, p2)

		// A new client, with no replica, gets the whole space from the new owner: the same as theirs.
		reader := newPeer(t, fmt.Sprintf("reader %d", round+1), e.wsURL(spaceID, e.token(t)))
		if w := reader.connect(ctx); w.MachineID != target {
			t.Fatalf("new client landed on machine %s; the space is on %s", w.MachineID, target)
		}
		waitConverged(t, want, p1, reader)
		reader.c.Close()

		// Todos keep the sort they were created with: none was applied a second time.
		s := p1.c.State()
		for i, id := range []string{"from-1", "from-2", "after-move-1", "after-move-2"}[:3+round] {
			var td struct {
				Text string
				Sort float64
			}
			if err := json.Unmarshal(s.Data["todo/"+id], &td); err != nil || td.Sort != float64(i+1) {
				t.Fatalf("todo %s: %s (err %v), want sort %d", id, s.Data["todo/"+id], err, i+1)
			}
		}
	}
	p1.c.Close()
	p2.c.Close()
}

// waitConverged waits until every peer's replica holds the counter at want, the same entries and the same cookie,
// and checks that no server frame broke a peer's poke chain.
func waitConverged(t *testing.T, want float64, peers ...*peer) {
	t.Helper()
	stacktest.WaitUntil(t, waitTimeout, fmt.Sprintf("replicas to converge with counter %v", want), func() error {
		first := peers[0].c.State()
		for _, p := range peers {
			s := p.c.State()
			if got := counter(s, "counter"); got != want {
				return fmt.Errorf("%s: counter %v", p.name, got)
			}
			if err := sameData(first, s); err != nil {
				return fmt.Errorf("%s and %s differ: %w", peers[0].name, p.name, err)
			}
			if !bytes.Equal(first.Cookie, s.Cookie) {
				return fmt.Errorf("%s at cookie %s, %s at %s", peers[0].name, first.Cookie, p.name, s.Cookie)
			}
		}
		return nil
	})
	for _, p := range peers {
		p.noErrors()
	}
}
