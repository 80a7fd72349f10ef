package wsserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

func TestSync_TwoClientsSeeEachOther(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	a := b.dial(t, "list", syncclient.Options{})
	c := b.dial(t, "list", syncclient.Options{})
	if w := a.Welcome(); w == nil || w.MachineID != "m1" || w.SpaceID != "list" || w.Protocol != 1 {
		t.Fatalf("welcome = %+v", w)
	}

	mustMutate(t, a, "createTodo", map[string]any{"id": "t1", "text": "milk", "completed": false})
	ctx := testCtx(t)
	if err := c.WaitFor(ctx, func(s *syncclient.State) bool { return s.Data["todo/t1"] != nil }); err != nil {
		t.Fatal(err)
	}
	if td := todo(t, c.State(), "t1"); td.Text != "milk" || td.Sort != 1 {
		t.Fatalf("todo at other client = %+v", td)
	}
	mustMutate(t, c, "updateTodo", map[string]any{"id": "t1", "completed": true})
	if err := a.WaitFor(ctx, func(s *syncclient.State) bool { return strings.Contains(string(s.Data["todo/t1"]), `"completed":true`) }); err != nil {
		t.Fatal(err)
	}
	mustMutate(t, a, "deleteTodo", "t1")
	if err := c.WaitFor(ctx, func(s *syncclient.State) bool { return s.Data["todo/t1"] == nil }); err != nil {
		t.Fatal(err)
	}
	// The pusher sees its own mutation confirmed by a poke, and the other
	// client learns nothing about it (lastMutationIDs are per client group).
	if got := a.State().LMIDs[a.ClientID]; got != 2 {
		t.Fatalf("a's lmid = %d, want 2", got)
	}
	if _, ok := c.State().LMIDs[a.ClientID]; ok {
		t.Fatalf("c learned the lmid of a client of another group")
	}
	noErrors(t, a, c)
}

func TestSync_NewClientGetsAllAndReconnectGetsOnlyTheDiff(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	a := b.dial(t, "list", syncclient.Options{})
	for i := range 20 {
		mustMutate(t, a, "createTodo", map[string]any{"id": fmt.Sprint("t", i), "text": "x"})
	}
	mustMutate(t, a, "increment", map[string]any{"key": "counter", "delta": 5})

	// A new client gets clear + everything in its first poke.
	n := b.dial(t, "list", syncclient.Options{})
	first := n.Pokes()[0]
	if !first.Cleared || first.Ops != 22 || len(n.State().Data) != 21 {
		t.Fatalf("first poke of a new client: %+v, %d keys", first, len(n.State().Data))
	}
	saved := n.State()
	group := n.ClientGroupID
	n.Close()

	// While it is away: one update and one delete.
	mustMutate(t, a, "updateTodo", map[string]any{"id": "t3", "text": "changed"})
	mustMutate(t, a, "deleteTodo", "t4")

	// It comes back with its old cookie: the poke holds exactly those two.
	r := b.dial(t, "list", syncclient.Options{ClientGroupID: group, State: saved})
	ctx := testCtx(t)
	if err := r.WaitFor(ctx, func(s *syncclient.State) bool { return s.Data["todo/t4"] == nil }); err != nil {
		t.Fatal(err)
	}
	p := r.Pokes()[0]
	if p.Cleared || p.Ops != 2 {
		t.Fatalf("reconnect poke = %+v, want 2 ops and no clear", p)
	}
	if !maps.EqualFunc(r.State().Data, a.State().Data, jsonEq) {
		t.Fatalf("replicas differ after reconnect")
	}
	noErrors(t, a, n, r)
}

func jsonEq(x, y json.RawMessage) bool { return string(x) == string(y) }

// The counter that must never lose an increment: 20 clients x 50 increments,
// pushed concurrently, with duplicate re-sends, stale re-sends of whole
// batches and reconnects in between.
func TestSync_CounterNeverLosesOrDoublesAnIncrement(t *testing.T) {
	const clients, each = 20, 50
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			errs <- runIncrementer(b, i, each)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	check := b.dial(t, "counter", syncclient.Options{})
	if got := string(check.State().Data["counter"]); got != fmt.Sprint(clients*each) {
		t.Fatalf("counter = %s, want %d", got, clients*each)
	}
	if got := storetest.Value(t, b.pool, "counter", "counter"); got != fmt.Sprint(clients*each) {
		t.Fatalf("counter = %s in Postgres, want %d", got, clients*each)
	}
}

func runIncrementer(b *backend, n, each int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	group, id := fmt.Sprint("cg-", n), fmt.Sprint("c-", n)
	var state *syncclient.State
	var sent []protocol.Mutation // every mutation made, none known lost
	next := int64(1)
	for next <= int64(each) {
		c, err := syncclient.Dial(ctx, b.url("counter"), syncclient.Options{ClientGroupID: group, ClientID: id, State: state, NextMutationID: next})
		if err != nil {
			return err
		}
		// A few pushes on this connection, then a reconnect.
		for k := 0; k < 1+rng.IntN(8) && next <= int64(each); k++ {
			m := c.Mutation("increment", map[string]any{"key": "counter", "delta": 1})
			next++
			sent = append(sent, m)
			// Replicache re-sends everything pending; we also re-send
			// random older ones, which the server must skip.
			batch := []protocol.Mutation{m}
			if rng.IntN(3) == 0 && len(sent) > 1 {
				from := rng.IntN(len(sent))
				batch = append([]protocol.Mutation{}, sent[from:]...)
			}
			if _, err := c.Push(ctx, batch...); err != nil {
				return err
			}
			if rng.IntN(4) == 0 {
				// Duplicate send of the same push.
				if _, err := c.Push(ctx, batch...); err != nil {
					return err
				}
			}
		}
		if err := c.WaitLMID(ctx, next-1); err != nil {
			return fmt.Errorf("client %d: %w", n, err)
		}
		if errs := c.Errors(); len(errs) > 0 {
			return fmt.Errorf("client %d: %v", n, errs)
		}
		state = c.State()
		if rng.IntN(2) == 0 {
			c.Kill()
		} else {
			c.Close()
		}
	}
	return nil
}

// TestSync_PokesArePacedAndLoseNothing commits increments one by one in a
// space whose poke interval (space.Config.PokeRate) is far longer than the
// pushes take: the other client gets them in at most two pokes (one at once
// if its interval had passed, the rest together when it ends), not one per
// commit, and ends with every increment.
func TestSync_PokesArePacedAndLoseNothing(t *testing.T) {
	const increments = 5
	// Two connections at one poke per second: each is poked at most every 2s.
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{PokeRate: 1}})
	a := b.dial(t, "paced", syncclient.Options{})
	c := b.dial(t, "paced", syncclient.Options{})
	const interval = 2 * time.Second
	ctx := testCtx(t)
	start := time.Now()
	for range increments {
		if _, err := a.Mutate(ctx, "increment", map[string]any{"key": "n", "delta": 1}); err != nil {
			t.Fatal(err)
		}
	}
	pushing := time.Since(start)
	if err := c.WaitFor(ctx, func(s *syncclient.State) bool { return string(s.Data["n"]) == "5" }); err != nil {
		t.Fatalf("the other client never saw all %d increments: %v (it has %s)", increments, err, c.State().Data["n"])
	}
	// The first poke of c's session is its welcome state. The pushes cross at most 1 + pushing/interval interval
	// ends (usually none: they take milliseconds), and one more poke carries what the last interval held back.
	most := 2 + int(pushing/interval)
	if n := len(c.Pokes()) - 1; n < 1 || n > most || n >= increments {
		t.Fatalf("%d commits in %s reached the other client in %d pokes, want 1 to %d", increments,
			pushing.Round(time.Millisecond), n, min(most, increments-1))
	}
	noErrors(t, a, c)
}

// The counter across dropped sockets, as Replicache lives through them: a
// client pushes every mutation it has not seen confirmed (new ones and
// older ones alike), and its socket drops at any point, before the answer,
// after the ack or after the confirmation. It reconnects with the replica
// it has and re-sends all that the replica does not show confirmed, which
// the server may have committed, may be committing, or may never have got.
// Every increment counts exactly once, as Postgres shows.
func TestSync_CounterAcrossDroppedSocketsWithUnconfirmedResends(t *testing.T) {
	const clients, each = 10, 40
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	var wg sync.WaitGroup
	var resent atomic.Int64
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			n, err := runDropper(b, i, each)
			resent.Add(int64(n))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// A socket dropped with a push unanswered leaves its mutations
	// unconfirmed in the client's replica: the next connection re-sends them.
	if resent.Load() == 0 {
		t.Fatal("no client ever re-sent unconfirmed mutations after a reconnect")
	}
	t.Logf("%d reconnects re-sent unconfirmed mutations", resent.Load())
	if got := storetest.Value(t, b.pool, "dropped", "counter"); got != fmt.Sprint(clients*each) {
		t.Fatalf("counter = %s in Postgres, want %d", got, clients*each)
	}
	for i := range clients {
		if lmid := storetest.LMID(t, b.pool, "dropped", fmt.Sprint("c-", i)); lmid != each {
			t.Fatalf("client %d: last_mutation_id %d in Postgres, want %d", i, lmid, each)
		}
	}
}

// runDropper is client n of TestSync_CounterAcrossDroppedSocketsWithUnconfirmedResends. It returns how many
// of its connections began by re-sending unconfirmed mutations.
func runDropper(b *backend, n, each int) (resends int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rng := rand.New(rand.NewPCG(uint64(n), 11))
	group, id := fmt.Sprint("cg-", n), fmt.Sprint("c-", n)
	var state *syncclient.State
	var pending []protocol.Mutation // made and not seen confirmed
	next, made := int64(1), 0
	for {
		c, err := syncclient.Dial(ctx, b.url("dropped"), syncclient.Options{ClientGroupID: group, ClientID: id, State: state, NextMutationID: next})
		if err != nil {
			return resends, err
		}
		confirmed := func() {
			lmid := c.State().LMIDs[id]
			for len(pending) > 0 && pending[0].ID <= lmid {
				pending = pending[1:]
			}
		}
		confirmed()
		if made == each && len(pending) == 0 {
			c.Close()
			return resends, nil
		}
		if len(pending) > 0 {
			resends++ // the first push below re-sends them, at once, as Replicache does
		}
		// A few pushes on this socket, each carrying everything unconfirmed
		// and at most one new mutation.
		var answer <-chan error
		for k := 0; k < 1+rng.IntN(4); k++ {
			if made < each {
				m := c.Mutation("increment", map[string]any{"key": "counter", "delta": 1})
				next, made = m.ID+1, made+1
				pending = append(pending, m)
			}
			if len(pending) == 0 {
				break
			}
			done := make(chan error, 1)
			go func(ms []protocol.Mutation) {
				_, err := c.Push(ctx, ms...)
				done <- err
			}(slices.Clone(pending))
			answer = done
			if rng.IntN(3) > 0 {
				// Wait for the ack before the next push (or the drop).
				if err := <-answer; err != nil {
					return resends, fmt.Errorf("client %d: push: %w", n, err)
				}
				answer = nil
			}
		}
		// Then the socket drops: with a push unanswered, after its ack, or
		// after its confirmation.
		if answer == nil && rng.IntN(2) == 0 {
			if err := c.WaitLMID(ctx, next-1); err != nil {
				return resends, fmt.Errorf("client %d: %w", n, err)
			}
		}
		confirmed()
		state = c.State()
		if errs := c.Errors(); len(errs) > 0 {
			return resends, fmt.Errorf("client %d: %v", n, errs)
		}
		c.Kill()
		if answer != nil {
			<-answer // answered, or failed with the socket
		}
	}
}
