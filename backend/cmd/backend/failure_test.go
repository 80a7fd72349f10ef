package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

var long = flag.Bool("long", false, "run the long variants of the failure tests")

// loadClient is one Replicache-like client under sustained load: it pushes
// increments, re-sends everything not yet confirmed (as Replicache does), and
// reconnects by itself.
type loadClient struct {
	id, group string
	url       func() string
	maxAcked  atomic.Int64 // highest mutation id the server acknowledged
	made      atomic.Int64 // mutations made
	state     *syncclient.State
	pending   []protocol.Mutation
	next      int64
	errs      []error
}

// run pushes until stop is closed, then until everything it made is
// confirmed. While paused it does not reconnect.
func (lc *loadClient) run(ctx context.Context, stop <-chan struct{}, paused func() bool) {
	lc.next = 1
	stopping := false
	for ctx.Err() == nil {
		if paused() {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		c, err := syncclient.Dial(ctx, lc.url(), syncclient.Options{ClientGroupID: lc.group, ClientID: lc.id, State: lc.state, NextMutationID: lc.next, DiscardPokes: true})
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		for ctx.Err() == nil {
			select {
			case <-stop:
				stopping = true
			default:
			}
			// Drop what the server confirmed.
			lmid := c.State().LMIDs[lc.id]
			for len(lc.pending) > 0 && lc.pending[0].ID <= lmid {
				lc.pending = lc.pending[1:]
			}
			if stopping && len(lc.pending) == 0 {
				lc.state = c.State()
				c.Close()
				lc.errs = append(lc.errs, c.Errors()...)
				return
			}
			if !stopping {
				m := c.Mutation("increment", map[string]any{"key": "counter", "delta": 1})
				lc.next = m.ID + 1
				lc.made.Add(1)
				lc.pending = append(lc.pending, m)
			}
			ans, err := c.Push(ctx, lc.pending...)
			if err != nil {
				break // connection lost: reconnect
			}
			if strings.Contains(string(ans), `"type":"pushed"`) {
				lc.maxAcked.Store(lc.pending[len(lc.pending)-1].ID)
			} else {
				time.Sleep(20 * time.Millisecond) // retryable error: back off a little
			}
			if stopping {
				wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_ = c.WaitLMID(wctx, lc.pending[len(lc.pending)-1].ID)
				cancel()
			}
		}
		lc.state = c.State()
		lc.errs = append(lc.errs, c.Errors()...)
		c.Kill()
	}
}

// lmids reads every client's lastMutationID from Postgres.
func lmids(t *testing.T, pool *pgxpool.Pool, space string) map[string]int64 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id, last_mutation_id FROM replica_clients WHERE space_id = $1`, space)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	var id string
	var lmid int64
	for rows.Next() {
		if err := rows.Scan(&id, &lmid); err != nil {
			t.Fatal(err)
		}
		out[id] = lmid
	}
	return out
}

// SIGKILL during sustained push load: after the restart every acknowledged
// mutation is present, none is applied twice, and every client converges.
func TestFailure_SIGKILLDuringLoad(t *testing.T) {
	clients, loadFor := 8, 1500*time.Millisecond
	if *long {
		clients, loadFor = 50, 10*time.Second
	}
	db := pgtest.NewDatabase(t)
	p := startProc(t, db, 0)
	port := p.port
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	var paused atomic.Bool
	stop := make(chan struct{})
	lcs := make([]*loadClient, clients)
	var wg sync.WaitGroup
	for i := range lcs {
		lcs[i] = &loadClient{id: fmt.Sprint("c", i), group: fmt.Sprint("g", i), url: func() string { return p.url("load") }}
		wg.Go(func() { lcs[i].run(ctx, stop, paused.Load) })
	}
	time.Sleep(loadFor) // load runs meanwhile

	// Kill, and hold the clients off until the acknowledged state is checked.
	paused.Store(true)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	acked := map[string]int64{}
	var total int64
	for _, lc := range lcs {
		acked[lc.id] = lc.maxAcked.Load()
		total += acked[lc.id]
	}
	if total == 0 {
		t.Fatal("no push was acknowledged before the kill: the test exercised nothing")
	}
	p = startProc(t, db, port)
	after := lmids(t, pool, "load")
	for id, a := range acked {
		if after[id] < a {
			t.Errorf("client %s: acknowledged up to %d, only %d survived SIGKILL", id, a, after[id])
		}
	}
	paused.Store(false)
	time.Sleep(loadFor / 2) // load goes on after the restart
	close(stop)
	wg.Wait()
	checkConverged(t, ctx, p.url("load"), lcs)
}

// checkConverged: the counter equals the number of mutations made (none lost,
// none doubled) and every client's replica equals the server's state.
func checkConverged(t *testing.T, ctx context.Context, url string, lcs []*loadClient) {
	t.Helper()
	var made int64
	for _, lc := range lcs {
		made += lc.made.Load()
		if len(lc.errs) > 0 {
			t.Errorf("client %s saw protocol errors: %v", lc.id, lc.errs)
		}
	}
	obs, err := syncclient.Dial(ctx, url, syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Kill()
	if err := obs.WaitPokes(ctx, 1); err != nil {
		t.Fatal(err)
	}
	server := obs.State().Data
	if got := string(server["counter"]); got != fmt.Sprint(made) {
		t.Fatalf("counter = %s, want %d (mutations made)", got, made)
	}
	for _, lc := range lcs {
		if !maps.EqualFunc(lc.state.Data, server, func(a, b json.RawMessage) bool { return string(a) == string(b) }) {
			// The client may have left before the last poke: one pull
			// brings it up to date, or the replica is wrong.
			c, err := syncclient.Dial(ctx, url, syncclient.Options{ClientGroupID: lc.group, ClientID: lc.id, State: lc.state})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.WaitFor(ctx, func(s *syncclient.State) bool { return string(s.Data["counter"]) == string(server["counter"]) }); err != nil {
				t.Fatalf("client %s never converged: %v", lc.id, errors.Join(err, errors.Join(c.Errors()...)))
			}
			c.Kill()
		}
	}
}

// Restart Postgres during load: pushes get retryable errors (never an ack for
// what was not committed), and the system recovers by itself once Postgres is
// back.
func TestFailure_PostgresRestartDuringLoad(t *testing.T) {
	clients, loadFor, downFor := 6, time.Second, 2*time.Second
	if *long {
		clients, loadFor, downFor = 30, 5*time.Second, 10*time.Second
	}
	cluster := pgtest.NewCluster(t)
	db := cluster.URL("spaceport")
	p := startProc(t, db, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	stop := make(chan struct{})
	lcs := make([]*loadClient, clients)
	var wg sync.WaitGroup
	for i := range lcs {
		lcs[i] = &loadClient{id: fmt.Sprint("c", i), group: fmt.Sprint("g", i), url: func() string { return p.url("load") }}
		wg.Go(func() { lcs[i].run(ctx, stop, func() bool { return false }) })
	}
	time.Sleep(loadFor)
	if err := cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// While Postgres is down, what is acknowledged must not move: nothing
	// can commit.
	before := map[string]int64{}
	for _, lc := range lcs {
		before[lc.id] = lc.maxAcked.Load()
	}
	time.Sleep(downFor)
	for _, lc := range lcs {
		// An ack may have been in flight when Postgres stopped; one more
		// batch at most could have committed before it went.
		if got := lc.maxAcked.Load(); got > before[lc.id]+int64(clients)+2 {
			t.Errorf("client %s: acks went from %d to %d while Postgres was down", lc.id, before[lc.id], got)
		}
	}
	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Recovery: new pushes are acknowledged again without any help.
	recovered := time.Now()
	for _, lc := range lcs {
		base := lc.maxAcked.Load()
		for lc.maxAcked.Load() <= base {
			if time.Since(recovered) > 60*time.Second {
				t.Fatalf("client %s not acknowledged again after Postgres came back", lc.id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("every client acknowledged again %v after Postgres was back", time.Since(recovered).Round(time.Millisecond))
	close(stop)
	wg.Wait()

	pool, err := pgxpool.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	after := lmids(t, pool, "load")
	for _, lc := range lcs {
		if after[lc.id] < lc.maxAcked.Load() {
			t.Errorf("client %s: acknowledged %d, committed %d", lc.id, lc.maxAcked.Load(), after[lc.id])
		}
	}
	checkConverged(t, ctx, p.url("load"), lcs)
}
