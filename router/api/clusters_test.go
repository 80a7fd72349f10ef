package api_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/router/routecache"
)

// TestClusters_NewSpacesSpreadAndMovingSpacesWait: the router places new
// spaces on the data cluster with the fewest, shows each space's cluster,
// and answers connections to a space whose data is moving with 503 and
// Retry-After (heard through the NOTIFY, whatever its cache held) until the
// move ends.
func TestClusters_NewSpacesSpreadAndMovingSpacesWait(t *testing.T) {
	ctx := context.Background()
	r := newRouter(t, pgtest.NewDatabase(t), routerOpts{clusters: []string{"main", "b"}, cache: routecache.Config{TTL: time.Hour}})
	r.register(m1)
	on := map[string]int{}
	for range 4 {
		resp := r.do(http.MethodPost, "/api/spaces", "")
		if resp.status != http.StatusCreated {
			t.Fatalf("create: %d %s", resp.status, resp.body)
		}
		on[decode[spaceBody](t, resp).Cluster]++
	}
	if on["main"] != 2 || on["b"] != 2 {
		t.Fatalf("4 new spaces on clusters %v, want 2 on main and 2 on b", on)
	}

	resp := r.do(http.MethodPost, "/api/spaces", `{"id":"doc"}`)
	if sp := decode[spaceBody](t, resp); sp.Cluster != "b" || sp.MovingTo != "" {
		t.Fatalf("created %+v, want on b (ties by name)", sp)
	}
	if got := r.replayTarget("doc"); got != m1 {
		t.Fatalf("replay to %s", got)
	}
	if _, err := r.dir.BeginClusterMove(ctx, "doc", "main"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.connect("doc").status != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("the router still replays a space that is moving")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp = r.connect("doc")
	wantError(t, resp, http.StatusServiceUnavailable, "space_moving")
	if resp.header.Get("Retry-After") == "" {
		t.Fatal("503 space_moving without Retry-After")
	}
	if sp := decode[spaceBody](t, r.do(http.MethodGet, "/api/spaces/doc", "")); sp.Cluster != "b" || sp.MovingTo != "main" {
		t.Fatalf("get during the move = %+v", sp)
	}
	if got := r.metric(`spaceport_router_replay_decisions_total{outcome="moving"}`); got < 2 {
		t.Fatalf("moving decisions %v, want at least 2", got)
	}

	if _, err := r.dir.FinishClusterMove(ctx, "doc", "b", "main"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for r.connect("doc").status != http.StatusTemporaryRedirect {
		if time.Now().After(deadline) {
			t.Fatal("the router does not replay the space after its move")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if sp := decode[spaceBody](t, r.do(http.MethodGet, "/api/spaces/doc", "")); sp.Cluster != "main" || sp.MovingTo != "" {
		t.Fatalf("get after the move = %+v", sp)
	}
}
