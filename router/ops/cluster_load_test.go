package ops_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/clusters"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
	"github.com/spaceport-sync/spaceport/router/ops"
)

// testMoveClusterUnderLoad runs the stack on two Postgres clusters of the test's own: the directory and cluster
// "main" on one, cluster "b" on the other (DATA_CLUSTERS on the router and both backends). New spaces created
// through the edge spread over both. A space on main is moved to b while three clients push increments through
// the edge the whole time, and a space on b is used meanwhile. Afterwards, read from Postgres: every
// acknowledged increment is on b, once (the counter equals the increments issued, every one acknowledged, and
// each client's lastMutationID is its last mutation's ID), nothing of the space is left on main; the clients of
// the moved space reconnected, those of the other space did not notice; and every client converges on the
// final state.
func testMoveClusterUnderLoad(t *testing.T, bins stacktest.Binaries) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*loadTimeout)
	defer cancel()
	mainURL, bURL := pgtest.NewCluster(t).URL("spaceport"), pgtest.NewCluster(t).URL("spaceport")
	srv := openStackEnv(t, bins, mainURL, 2, map[string]string{clusters.EnvVar: "b=" + bURL})
	edge := "ws" + strings.TrimPrefix(srv.URL(), "http") + "/api/replicache/websocket/"

	pools := map[string]*pgxpool.Pool{}
	for name, url := range map[string]string{"main": mainURL, "b": bURL} {
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		pools[name] = pool
	}
	dir, err := directory.Open(ctx, pools["main"], directory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	mainStore, err := store.Open(ctx, pools["main"])
	if err != nil {
		t.Fatal(err)
	}
	cs, err := clusters.New(clusters.Config{Directory: dir, Main: mainStore, Clusters: []clusters.Cluster{{Name: "b", URL: bURL}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Close)
	o, err := ops.New(ops.Config{Directory: dir, OpenCluster: cs.Cluster})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.WaitUntil(t, loadTimeout, "2 backend machines live in the directory", func() error {
		st, err := o.Status(ctx)
		if err != nil {
			return err
		}
		if live := slices.IndexFunc(st, func(m ops.MachineStatus) bool { return !m.Live }); len(st) != 2 || live >= 0 {
			return fmt.Errorf("machines %+v", st)
		}
		return nil
	})

	// New spaces, created through the edge as an app would, spread over both clusters.
	var spaces []directory.Space
	on := map[string]int{}
	for i := range 4 {
		resp, err := http.Post(srv.URL()+"/api/spaces", "application/json", strings.NewReader(fmt.Sprintf(`{"id":"doc-%d"}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		var sp struct{ ID, Cluster string }
		err = json.NewDecoder(resp.Body).Decode(&sp)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("create space %d: %d, %v", i, resp.StatusCode, err)
		}
		got, err := dir.Lookup(ctx, sp.ID)
		if err != nil || got.Cluster != sp.Cluster {
			t.Fatalf("space %s: API says cluster %s, directory %+v, %v", sp.ID, sp.Cluster, got, err)
		}
		spaces = append(spaces, got)
		on[got.Cluster]++
	}
	if on["main"] != 2 || on["b"] != 2 {
		t.Fatalf("4 new spaces on clusters %v; want 2 on main and 2 on b", on)
	}
	moved := spaces[slices.IndexFunc(spaces, func(sp directory.Space) bool { return sp.Cluster == "main" })]
	stays := spaces[slices.IndexFunc(spaces, func(sp directory.Space) bool { return sp.Cluster == "b" })]

	var clients []*loadClient
	for _, sp := range []directory.Space{moved, moved, moved, stays} {
		clients = append(clients, &loadClient{t: t, name: fmt.Sprintf("%s/%d", sp.ID, len(clients)), space: sp.ID, url: edge + sp.ID})
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

	before := map[*loadClient]int{}
	for _, c := range clients {
		before[c] = c.ackCount()
	}
	mv, err := o.MoveSpaceToCluster(ctx, moved.ID, "b")
	if err != nil {
		t.Fatalf("MoveSpaceToCluster: %v (did %+v)", err, mv)
	}
	t.Logf("moved %s from main to b under load: version %d, %d entries, %d clients; not served for %s",
		mv.Space, mv.Version, mv.Entries, mv.Clients, mv.Unserved)
	stacktest.WaitUntil(t, loadTimeout, "every client writing again", func() error {
		for _, c := range clients {
			if c.ackCount() < before[c]+10 {
				return fmt.Errorf("%s: %d acks since the move began", c.name, c.ackCount()-before[c])
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

	// From Postgres: the moved space is on b with every increment once, and nowhere on main.
	for _, sp := range []directory.Space{moved, stays} {
		issued := 0
		for _, c := range clients {
			if c.space != sp.ID {
				continue
			}
			issued += c.issuedCount()
			if c.ackCount() != c.issuedCount() {
				t.Errorf("%s: %d of %d increments acknowledged", c.name, c.ackCount(), c.issuedCount())
			}
			var lmid int64
			if err := pools["b"].QueryRow(ctx, `SELECT last_mutation_id FROM replica_clients WHERE space_id = $1 AND id = $2`,
				sp.ID, c.c.ClientID).Scan(&lmid); err != nil || lmid != c.lastIssued() {
				t.Errorf("%s: lastMutationID on b %d (%v), want %d, its last mutation", c.name, lmid, err, c.lastIssued())
			}
		}
		var counter float64
		var raw []byte
		if err := pools["b"].QueryRow(ctx, `SELECT value FROM replica_entries WHERE space_id = $1 AND key = 'counter'`, sp.ID).Scan(&raw); err != nil {
			t.Fatalf("space %s: counter on b: %v", sp.ID, err)
		}
		if err := json.Unmarshal(raw, &counter); err != nil || counter != float64(issued) {
			t.Errorf("space %s: counter on b %s, want %d (every increment issued, once)", sp.ID, raw, issued)
		}
		if got, err := dir.Lookup(ctx, sp.ID); err != nil || got.Cluster != "b" || got.MovingTo != "" {
			t.Errorf("space %s in the directory: %+v, %v", sp.ID, got, err)
		}
		// Clients converge: each, resuming from its replica as a reloaded tab would, reaches the final state.
		for _, c := range clients {
			if c.space == sp.ID {
				c.converge(ctx, sp.ID, counter)
			}
		}
	}
	for _, table := range []string{"replica_spaces WHERE id", "replica_entries WHERE space_id", "replica_clients WHERE space_id",
		"replica_client_groups WHERE space_id"} {
		var n int
		if err := pools["main"].QueryRow(ctx, `SELECT count(*) FROM `+table+` = $1`, moved.ID).Scan(&n); err != nil || n != 0 {
			t.Errorf("main still has %d rows of the moved space in %s (%v)", n, strings.Fields(table)[0], err)
		}
	}
	for _, c := range clients {
		codes := c.closeCodes()
		switch {
		case c.space == stays.ID && c.connections() != 1:
			t.Errorf("%s, of the space that stayed, had %d connections (closed with %v)", c.name, c.connections(), codes)
		case c.space == moved.ID && c.connections() < 2:
			t.Errorf("%s, of the moved space, never reconnected", c.name)
		}
		for _, code := range codes {
			if code != 4004 && code != 4029 {
				t.Errorf("%s: a connection closed with %d; a move closes with 4004 (let go) or 4029 (moving)", c.name, code)
			}
		}
		t.Logf("%s: %d increments, %d connections, closed with %v", c.name, c.issuedCount(), c.connections(), codes)
	}
}

// lastIssued is the ID of the client's last mutation.
func (lc *loadClient) lastIssued() int64 {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.issued[len(lc.issued)-1].ID
}

// converge connects the client again through the edge with its replica and waits until it holds counter and
// its own last mutation's ID.
func (lc *loadClient) converge(ctx context.Context, space string, counter float64) {
	lc.t.Helper()
	old, last := lc.c, lc.lastIssued()
	var c *syncclient.Client
	stacktest.WaitUntil(lc.t, loadTimeout, lc.name+" reconnected", func() error {
		var err error
		c, err = syncclient.Dial(ctx, lc.url, syncclient.Options{ClientGroupID: old.ClientGroupID, ClientID: old.ClientID,
			State: old.State(), NextMutationID: old.NextMutationID(), DiscardPokes: true})
		if err != nil {
			return err
		}
		if err := c.WaitWelcome(ctx); err != nil {
			c.Kill()
			return err
		}
		return nil
	})
	defer c.Close()
	wctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	err := c.WaitFor(wctx, func(s *syncclient.State) bool {
		var n float64
		return json.Unmarshal(s.Data["counter"], &n) == nil && n == counter && s.LMIDs[old.ClientID] == last
	})
	if err != nil {
		st := c.State()
		lc.t.Errorf("%s (space %s) did not converge: counter %s, lastMutationID %d; want %v and %d (%v)", lc.name, space,
			st.Data["counter"], st.LMIDs[old.ClientID], counter, last, err)
	}
	if errs := c.Errors(); len(errs) > 0 {
		lc.t.Errorf("%s: protocol errors while converging: %v", lc.name, errs)
	}
}
