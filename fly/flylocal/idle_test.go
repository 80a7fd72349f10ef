package flylocal_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
)

// A machine of an app with idle_stop stops once nothing reached it for that long, and the next request routed
// to it starts it again; a machine of an app without idle_stop keeps running.
func TestIdleStop(t *testing.T) {
	backend := app("backend", 1)
	backend.IdleStop = flylocal.Duration(200 * time.Millisecond)
	ts := openServer(t, testConfig(t, app("router", 1), backend))
	id := ts.machines(t, "backend", 1)[0].ID
	router := ts.machines(t, "router", 1)[0].ID

	waitFor(t, "the idle backend machine stopped", func() bool {
		st, _ := ts.Supervisor.State(id)
		return st == flylocal.StateStopped
	})
	e := ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "app=backend;instance="+id))
	if e.Machine != id {
		t.Fatalf("served by %s, want %s", e.Machine, id)
	}
	// The proxy releases the machine once ServeHTTP returns, which may be just after the client read the answer.
	waitFor(t, "Activity to show the request served and done", func() bool {
		active, last := ts.Proxy.Activity(id)
		return active == 0 && !last.IsZero()
	})
	waitFor(t, "the backend machine stopped again", func() bool {
		st, _ := ts.Supervisor.State(id)
		return st == flylocal.StateStopped
	})
	if st, _ := ts.Supervisor.State(router); st != flylocal.StateStarted {
		t.Fatalf("the router machine (no idle_stop) is %s", st)
	}
}

// Injected faults fail Machines API calls as Fly's do: before doing anything, or after (a lost answer).
func TestMachinesAPI_InjectFault(t *testing.T) {
	cfg := testConfig(t, app("router", 1), app("backend", 0))
	cfg.APIListen = "127.0.0.1:0"
	ts := openServer(t, cfg)
	create := func() (int, map[string]any) {
		t.Helper()
		resp, err := http.Post(ts.APIURL()+"/v1/apps/backend/machines", "application/json",
			strings.NewReader(`{"config": {"image": "x", "metadata": {"k": "v"}}}`))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}

	ts.API.InjectFault(flylocal.Fault{Endpoint: "create", Status: http.StatusPreconditionFailed, FlyStatus: "insufficient_capacity"})
	if code, body := create(); code != http.StatusPreconditionFailed || body["status"] != "insufficient_capacity" {
		t.Fatalf("create with a capacity fault: %d %v", code, body)
	}
	if n := len(ts.Supervisor.Machines("backend")); n != 0 {
		t.Fatalf("%d machines after a refused create", n)
	}
	ts.API.InjectFault(flylocal.Fault{Endpoint: "create", AfterDoing: true})
	if code, body := create(); code != http.StatusInternalServerError {
		t.Fatalf("create with a lost answer: %d %v", code, body)
	}
	if n := len(ts.Supervisor.Machines("backend")); n != 1 {
		t.Fatalf("%d machines after a create whose answer was lost, want 1", n)
	}
	if code, body := create(); code != http.StatusOK {
		t.Fatalf("create after the faults: %d %v", code, body)
	}
}
