package dedicated_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
	"github.com/spaceport-sync/spaceport/router/dedicated"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// stack is the local stack under test and the clients of its parts.
type stack struct {
	t   *testing.T
	srv *flylocal.Server
	api *machines.Client
	dir *directory.Directory
	p   *dedicated.Placer
}

// TestStack runs placement "dedicated" on the local stack: flylocal's edge and Machines API, the real router
// (PLACEMENT=dedicated) and backend binaries, a real Postgres. Five spaces get five machines; each space's
// clients land on its own machine; an idle machine stops and the next connection wakes it with nothing lost;
// deleting a space retires its machine; failures injected in machine creation leave no space and, once
// reconciled, no machine behind; a space whose machine vanished gets a new one.
func TestStack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the router and backend binaries")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*stackTimeout)
	defer cancel()
	s := openStack(ctx, t, 2*time.Second)
	var err error
	// The same reconciler the router runs, run here when no space is being created: any age is an orphan.
	if s.p, err = dedicated.New(dedicated.Config{Directory: s.dir, Machines: s.api, App: backendApp,
		Image: "flylocal/" + backendApp, OrphanAge: -1}); err != nil {
		t.Fatal(err)
	}

	// Five spaces, five machines, each named after its space in its metadata.
	var spaces []spaceJSON
	for i := range 5 {
		start := time.Now()
		sp := s.createSpace(fmt.Sprintf("ded-%d", i))
		t.Logf("POST /api/spaces (machine created and started) took %s", time.Since(start).Round(time.Millisecond))
		spaces = append(spaces, sp)
	}
	bySpace := s.machinesBySpace(ctx)
	if len(bySpace) != 5 {
		t.Fatalf("machines by space: %v, want 5", bySpace)
	}
	for _, sp := range spaces {
		if bySpace[sp.ID] != sp.Machine {
			t.Fatalf("space %s placed on %s; the machine made for it is %s", sp.ID, sp.Machine, bySpace[sp.ID])
		}
	}

	// Each space's clients land on its own machine.
	for _, sp := range spaces {
		c := s.dial(ctx, sp.ID)
		if got := c.Welcome().MachineID; got != sp.Machine {
			t.Fatalf("a client of %s landed on %s, want %s", sp.ID, got, sp.Machine)
		}
		c.Close()
	}

	// Wake-up: a connection to a running machine, then to the same machine once it stopped by itself.
	first := spaces[0]
	holder := s.dial(ctx, first.ID)
	push(t, ctx, holder)
	start := time.Now()
	running := s.dial(ctx, first.ID)
	warm := time.Since(start)
	running.Close()
	holder.Close()
	stacktest.WaitUntil(t, stackTimeout, "the idle machine of "+first.ID+" stopped", func() error {
		if st, _ := s.srv.Supervisor.State(first.Machine); st != flylocal.StateStopped {
			return fmt.Errorf("machine %s is %s", first.Machine, st)
		}
		return nil
	})
	start = time.Now()
	woken := s.dial(ctx, first.ID)
	cold := time.Since(start)
	t.Logf("first connection (dial to welcome) to a running machine: %s; to a stopped machine: %s", warm.Round(time.Millisecond),
		cold.Round(time.Millisecond))
	if got := woken.Welcome().MachineID; got != first.Machine {
		t.Fatalf("after the wake-up the client landed on %s, want %s", got, first.Machine)
	}
	if n := counter(t, ctx, woken); n != 1 {
		t.Fatalf("counter after the wake-up: %v, want 1", n)
	}
	woken.Close()

	// Deleting a space retires its machine.
	status, body := s.call(http.MethodDelete, "/api/spaces/"+first.ID, nil, adminToken)
	if status != http.StatusOK || !bytes.Contains(body, []byte(`"machineRetired":true`)) {
		t.Fatalf("DELETE /api/spaces/%s: %d %s", first.ID, status, body)
	}
	if _, err := s.api.Get(ctx, backendApp, first.Machine); !errors.Is(err, machines.ErrNotFound) {
		t.Fatalf("the deleted space's machine: %v, want ErrNotFound", err)
	}
	if _, err := s.dir.Lookup(ctx, first.ID); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("the deleted space in the directory: %v", err)
	}
	for _, m := range s.directoryMachines(ctx) {
		if m.ID == first.Machine {
			t.Fatalf("the retired machine is still in the directory: %+v", m)
		}
	}
	if status, body := s.call(http.MethodDelete, "/api/spaces/"+spaces[1].ID, nil, ""); status != http.StatusUnauthorized {
		t.Fatalf("DELETE without the admin token: %d %s", status, body)
	}

	// Failures in machine creation: a clear, retryable answer, no space, and no machine once reconciled.
	faults := []flylocal.Fault{
		{Endpoint: "create", Status: http.StatusServiceUnavailable, FlyStatus: "insufficient_capacity"},
		{Endpoint: "wait", Status: http.StatusInternalServerError},
		{Endpoint: "create", Status: http.StatusInternalServerError, AfterDoing: true}, // the answer is lost
	}
	for i, f := range faults {
		id := fmt.Sprintf("fail-%d", i)
		s.srv.API.InjectFault(f)
		start := time.Now()
		status, body := s.call(http.MethodPost, "/api/spaces", map[string]string{"id": id}, "")
		t.Logf("fault %+v: POST /api/spaces answered %d after %s: %s", f, status, time.Since(start).Round(time.Millisecond), body)
		if status != http.StatusServiceUnavailable || !bytes.Contains(body, []byte(`"error":"machine_unavailable"`)) {
			t.Fatalf("POST /api/spaces with fault %+v: %d %s; want 503 machine_unavailable", f, status, body)
		}
		if _, err := s.dir.Lookup(ctx, id); !errors.Is(err, directory.ErrSpaceNotFound) {
			t.Fatalf("space %s after a failed create: %v", id, err)
		}
		if f.Endpoint == "wait" {
			if m, ok := s.machinesBySpace(ctx)[id]; ok {
				t.Fatalf("the machine of %s that did not start is still there: %s", id, m)
			}
		}
	}
	if _, ok := s.machinesBySpace(ctx)["fail-2"]; !ok {
		t.Fatalf("the machine created for fail-2, whose answer was lost, is missing: the fault did not apply")
	}

	// A space whose machine vanished (destroyed behind the router's back).
	lost := spaces[1]
	if err := s.api.Delete(ctx, backendApp, lost.Machine, true); err != nil {
		t.Fatal(err)
	}
	// While another process reconciles (it holds the app's lock), a pass does nothing: two passes at once would
	// each give the lost space a machine.
	unlock, err := s.dir.LockReconcile(ctx, backendApp)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := s.p.Reconcile(ctx, false); !errors.Is(err, directory.ErrLockHeld) || !rep.Empty() {
		t.Fatalf("Reconcile while another holds the lock: %+v, %v; want nothing done, ErrLockHeld", rep, err)
	}
	unlock()
	rep, err := s.p.Reconcile(ctx, false)
	if err != nil {
		t.Fatalf("Reconcile: %v (%+v)", err, rep)
	}
	t.Logf("reconcile: %+v", rep)
	if len(rep.Orphans) != 1 || len(rep.Rehomed) != 1 || rep.Rehomed[0].Space != lost.ID {
		t.Fatalf("Reconcile did %+v; want the orphan of fail-2 destroyed and %s rehomed", rep, lost.ID)
	}
	bySpace = s.machinesBySpace(ctx)
	if len(bySpace) != 4 || bySpace["fail-2"] != "" || bySpace[lost.ID] == "" {
		t.Fatalf("machines by space after reconciling: %v; want ded-1..4 only", bySpace)
	}
	c := s.dial(ctx, lost.ID)
	if got := c.Welcome().MachineID; got != bySpace[lost.ID] {
		t.Fatalf("a client of the rehomed space landed on %s, want %s", got, bySpace[lost.ID])
	}
	c.Close()
	if rep, err := s.p.Reconcile(ctx, false); err != nil || !rep.Empty() {
		t.Fatalf("second Reconcile: %+v, %v; want nothing to do", rep, err)
	}
}

// spaceJSON is a space as the router's API answers it.
type spaceJSON struct {
	ID      string `json:"id"`
	App     string `json:"app"`
	Machine string `json:"machine"`
}

// call sends an API request through the edge, with the admin token if not empty.
func (s *stack) call(method, path string, body any, token string) (int, []byte) {
	s.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.srv.URL()+path, r)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: stackTimeout}).Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
		s.t.Fatalf("%s %s: 503 without Retry-After: %s", method, path, b)
	}
	return resp.StatusCode, b
}

// createSpace creates a space through the edge.
func (s *stack) createSpace(id string) spaceJSON {
	s.t.Helper()
	status, b := s.call(http.MethodPost, "/api/spaces", map[string]string{"id": id}, "")
	var sp spaceJSON
	if status != http.StatusCreated || json.Unmarshal(b, &sp) != nil || sp.ID != id || sp.Machine == "" {
		s.t.Fatalf("POST /api/spaces %s: %d %s", id, status, b)
	}
	return sp
}

// machinesBySpace lists the backend app's machines through the Machines API, by the space in their metadata.
func (s *stack) machinesBySpace(ctx context.Context) map[string]string {
	s.t.Helper()
	list, err := s.api.List(ctx, backendApp, machines.ListOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range list {
		if m.Config == nil || m.Config.Metadata[dedicated.MetadataSpace] == "" {
			s.t.Fatalf("machine %s has no space in its metadata: %+v", m.ID, m.Config)
		}
		out[m.Config.Metadata[dedicated.MetadataSpace]] = m.ID
	}
	return out
}

func (s *stack) directoryMachines(ctx context.Context) []directory.MachineInfo {
	s.t.Helper()
	ms, err := s.dir.ListMachines(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return ms
}

// dial connects a client to space through the edge and waits for its welcome.
func (s *stack) dial(ctx context.Context, space string) *syncclient.Client {
	s.t.Helper()
	url := "ws" + strings.TrimPrefix(s.srv.URL(), "http") + "/api/replicache/websocket/" + space
	dctx, cancel := context.WithTimeout(ctx, stackTimeout)
	defer cancel()
	c, err := syncclient.Dial(dctx, url, syncclient.Options{})
	if err != nil {
		s.t.Fatalf("dial %s: %v", space, err)
	}
	s.t.Cleanup(c.Kill)
	if err := c.WaitWelcome(dctx); err != nil {
		s.t.Fatalf("no welcome from %s: %v", space, err)
	}
	return c
}

// push sends one increment and waits for its acknowledgement.
func push(t *testing.T, ctx context.Context, c *syncclient.Client) {
	t.Helper()
	pctx, cancel := context.WithTimeout(ctx, stackTimeout)
	defer cancel()
	ans, err := c.Push(pctx, c.Mutation("increment", map[string]any{"key": "counter", "delta": 1}))
	if err != nil || !bytes.Contains(ans, []byte(`"type":"pushed"`)) {
		t.Fatalf("push: %s, %v", ans, err)
	}
}

// counter pulls and returns the space's counter.
func counter(t *testing.T, ctx context.Context, c *syncclient.Client) float64 {
	t.Helper()
	pctx, cancel := context.WithTimeout(ctx, stackTimeout)
	defer cancel()
	if _, err := c.Pull(pctx); err != nil {
		t.Fatal(err)
	}
	var n float64
	if raw, ok := c.State().Data["counter"]; ok {
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
	}
	return n
}
