package machines_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/internal/testmachine"
	"github.com/spaceport-sync/spaceport/fly/machines"
)

func TestMain(m *testing.M) { testmachine.Main(m) }

// waitTimeout bounds every wait in these tests.
const waitTimeout = 30 * time.Second

// Apps of the local stack: the edge app has one configured machine; the worker app has none until the API
// creates them.
const (
	edgeApp   = "edge"
	workerApp = "workers"
)

// localFly is flylocal with its Machines API, and a client of that API.
type localFly struct {
	srv    *flylocal.Server
	client *machines.Client
	logs   *syncBuffer
}

// openLocal runs flylocal with the Machines API on a free port, in stateDir (a fresh one if empty).
func openLocal(t *testing.T, stateDir, apiToken, clientToken string) *localFly {
	t.Helper()
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	cmd, env := testmachine.Command()
	cfg := flylocal.Config{
		Listen: "127.0.0.1:0", APIListen: "127.0.0.1:0", APIToken: apiToken, StateDir: stateDir, Env: env,
		Apps: []flylocal.AppConfig{
			{Name: edgeApp, Machines: 1, Command: cmd},
			{Name: workerApp, Machines: 0, Command: cmd, KillTimeout: flylocal.Duration(5 * time.Second)},
		},
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := flylocal.NewServer(cfg, logger, logs)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := srv.Open(ctx); err != nil {
		t.Fatalf("Open: %v", err)
	}
	lf := &localFly{srv: srv, logs: logs}
	t.Cleanup(func() { lf.close(t) })
	lf.client, err = machines.New(machines.Config{BaseURL: srv.APIURL(), Token: clientToken, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	return lf
}

func (lf *localFly) close(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := lf.srv.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	if t.Failed() || os.Getenv("FLYLOCAL_TEST_LOGS") != "" {
		t.Logf("flylocal log and machine output:\n%s", lf.logs.String())
	}
}

// echo asks machine id of app, through the edge, what it sees.
func (lf *localFly) echo(t *testing.T, app, id string) testmachine.Echo {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, lf.srv.URL()+"/whoami", nil)
	req.Header.Set("X-Test-Replay", "app="+app+";instance="+id)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	var e testmachine.Echo
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &e) != nil {
		t.Fatalf("GET through the edge to %s: %d %s", id, resp.StatusCode, b)
	}
	return e
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// wantErr fails the test unless err matches target and is an *APIError with a message.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	var apiErr *machines.APIError
	if !errors.Is(err, target) || !errors.As(err, &apiErr) || apiErr.Message == "" {
		t.Fatalf("%s: error %v, want an API error matching %v", what, err, target)
	}
}

func TestClient_MachineLifecycle(t *testing.T) {
	t.Parallel()
	lf := openLocal(t, "", "", "")
	c, ctx := lf.client, testContext(t)

	if ms, err := c.List(ctx, workerApp, machines.ListOptions{}); err != nil || len(ms) != 0 {
		t.Fatalf("List of an app without machines: %v, %v", ms, err)
	}
	cfg := machines.MachineConfig{
		Image:    "registry.fly.io/workers:deployment-1",
		Env:      map[string]string{"TEST_APP": "from the machine config"},
		Metadata: map[string]string{"role": "worker", machines.MetadataProcessGroup: "app"},
		Guest:    &machines.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256},
		Extra:    map[string]json.RawMessage{"services": json.RawMessage(`[{"internal_port":8080,"protocol":"tcp"}]`)},
	}
	m, err := c.Create(ctx, workerApp, machines.CreateRequest{Config: cfg})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if len(m.ID) != 14 || m.Region != flylocal.Region || m.InstanceID == "" || m.Name == "" {
		t.Fatalf("created machine %+v", m)
	}
	if err := c.Wait(ctx, workerApp, m.ID, machines.WaitRequest{State: machines.StateStarted}); err != nil {
		t.Fatalf("Wait started: %v", err)
	}
	// The new machine is a real process of the app, with the config's env.
	e := lf.echo(t, workerApp, m.ID)
	if e.Machine != m.ID || e.App != workerApp || e.Env["TEST_APP"] != "from the machine config" {
		t.Fatalf("the created machine answered %+v", e)
	}

	got, err := c.Get(ctx, workerApp, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != machines.StateStarted || got.Config == nil || got.Config.Image != cfg.Image ||
		got.Config.Guest == nil || *got.Config.Guest != *cfg.Guest ||
		string(got.Config.Extra["services"]) != string(cfg.Extra["services"]) {
		t.Fatalf("Get: %+v (config %+v)", got, got.Config)
	}

	for filter, want := range map[string]int{"worker": 1, "other": 0} {
		ms, err := c.List(ctx, workerApp, machines.ListOptions{Metadata: map[string]string{"role": filter}})
		if err != nil || len(ms) != want {
			t.Fatalf("List with metadata.role=%s: %d machines (%v), want %d", filter, len(ms), err, want)
		}
	}

	// Metadata.
	if err := c.SetMetadata(ctx, workerApp, m.ID, "spaceport/drained", "yes"); err != nil {
		t.Fatal(err)
	}
	md, err := c.Metadata(ctx, workerApp, m.ID)
	if err != nil || md["spaceport/drained"] != "yes" || md["role"] != "worker" {
		t.Fatalf("Metadata: %v, %v", md, err)
	}
	if err := c.DeleteMetadata(ctx, workerApp, m.ID, "spaceport/drained"); err != nil {
		t.Fatal(err)
	}
	if md, _ := c.Metadata(ctx, workerApp, m.ID); md["spaceport/drained"] != "" {
		t.Fatalf("metadata after delete: %v", md)
	}

	// Stop, start, delete.
	wantErr(t, "Delete of a started machine", c.Delete(ctx, workerApp, m.ID, false), machines.ErrPreconditionFailed)
	if err := c.Stop(ctx, workerApp, m.ID, machines.StopRequest{Signal: "SIGTERM", Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx, workerApp, m.ID, machines.WaitRequest{State: machines.StateStopped, InstanceID: got.InstanceID}); err != nil {
		t.Fatalf("Wait stopped: %v", err)
	}
	if st, _ := lf.srv.Supervisor.State(m.ID); st != flylocal.StateStopped {
		t.Fatalf("after stop the supervisor says %s", st)
	}
	res, err := c.Start(ctx, workerApp, m.ID)
	if err != nil || res.PreviousState != machines.StateStopped {
		t.Fatalf("Start: %+v, %v", res, err)
	}
	if err := c.Wait(ctx, workerApp, m.ID, machines.WaitRequest{}); err != nil {
		t.Fatalf("Wait started again: %v", err)
	}
	if err := c.Delete(ctx, workerApp, m.ID, true); err != nil {
		t.Fatalf("Delete with force: %v", err)
	}
	if err := c.Wait(ctx, workerApp, m.ID, machines.WaitRequest{State: machines.StateDestroyed}); err != nil {
		t.Fatalf("Wait destroyed: %v", err)
	}
	_, err = c.Get(ctx, workerApp, m.ID)
	wantErr(t, "Get of a deleted machine", err, machines.ErrNotFound)
	if ms, _ := c.List(ctx, workerApp, machines.ListOptions{}); len(ms) != 0 {
		t.Fatalf("List after delete: %v", ms)
	}
}

func TestClient_Errors(t *testing.T) {
	t.Parallel()
	lf := openLocal(t, "", "", "")
	c, ctx := lf.client, testContext(t)
	edge := lf.srv.Supervisor.Machines(edgeApp)[0].ID

	_, err := c.Get(ctx, edgeApp, "0000000000000a")
	wantErr(t, "Get of an unknown machine", err, machines.ErrNotFound)
	_, err = c.List(ctx, "no-such-app", machines.ListOptions{})
	wantErr(t, "List of an unknown app", err, machines.ErrNotFound)
	_, err = c.Create(ctx, workerApp, machines.CreateRequest{Region: "ams", Config: machines.MachineConfig{Image: "x"}})
	wantErr(t, "Create in another region", err, machines.ErrBadRequest)
	if _, err := c.Create(ctx, workerApp, machines.CreateRequest{Config: machines.MachineConfig{}}); err == nil {
		t.Fatal("Create without an image succeeded")
	}

	// A wait that times out answers 408, after the timeout asked for.
	if err := c.Stop(ctx, edgeApp, edge, machines.StopRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx, edgeApp, edge, machines.WaitRequest{State: machines.StateStopped}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "Wait for a state that does not come",
		c.Wait(ctx, edgeApp, edge, machines.WaitRequest{State: machines.StateStarted, Timeout: time.Second}),
		machines.ErrWaitTimeout)
}

func TestClient_Lease(t *testing.T) {
	t.Parallel()
	lf := openLocal(t, "", "", "")
	c, ctx := lf.client, testContext(t)
	id := lf.srv.Supervisor.Machines(edgeApp)[0].ID

	lease, err := c.AcquireLease(ctx, edgeApp, id, time.Minute, "drain")
	if err != nil || lease.Nonce == "" || time.Until(lease.ExpiresAt) < 50*time.Second {
		t.Fatalf("AcquireLease: %+v, %v", lease, err)
	}
	_, err = c.AcquireLease(ctx, edgeApp, id, time.Minute, "another")
	wantErr(t, "a second lease", err, machines.ErrConflict)
	wantErr(t, "Stop without the nonce", c.Stop(ctx, edgeApp, id, machines.StopRequest{}), machines.ErrConflict)
	if got, err := c.GetLease(ctx, edgeApp, id); err != nil || got.Nonce != lease.Nonce || got.Description != "drain" {
		t.Fatalf("GetLease: %+v, %v", got, err)
	}
	if _, err := c.RefreshLease(ctx, edgeApp, id, lease.Nonce, 2*time.Minute); err != nil {
		t.Fatalf("RefreshLease: %v", err)
	}
	leased := machines.WithLeaseNonce(ctx, lease.Nonce)
	if err := c.Stop(leased, edgeApp, id, machines.StopRequest{}); err != nil {
		t.Fatalf("Stop with the nonce: %v", err)
	}
	if err := c.ReleaseLease(ctx, edgeApp, id, lease.Nonce); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	_, err = c.GetLease(ctx, edgeApp, id)
	wantErr(t, "GetLease after release", err, machines.ErrNotFound)
}

func TestClient_Token(t *testing.T) {
	t.Parallel()
	const token = "fm2_lJPECAAAAAAAA" // the shape of a macaroon from `fly tokens create deploy`
	ctx := testContext(t)

	noToken := openLocal(t, "", token, "")
	_, err := noToken.client.List(ctx, edgeApp, machines.ListOptions{})
	wantErr(t, "List without a token", err, machines.ErrUnauthorized)

	for _, clientToken := range []string{token, "FlyV1 " + token} {
		lf := openLocal(t, "", token, clientToken)
		if ms, err := lf.client.List(ctx, edgeApp, machines.ListOptions{}); err != nil || len(ms) != 1 {
			t.Fatalf("List with token %q: %v, %v", clientToken, ms, err)
		}
	}
	plain := openLocal(t, "", "plain-token", "Bearer plain-token")
	if _, err := plain.client.List(ctx, edgeApp, machines.ListOptions{}); err != nil {
		t.Fatalf("List with a Bearer token: %v", err)
	}
}

// TestClient_CreatedMachinesSurviveRestart: machines created through the API are kept in flylocal's state
// directory, as Fly keeps them, so that spaces placed on them are still reachable after `make dev` restarts.
func TestClient_CreatedMachinesSurviveRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lf := openLocal(t, dir, "", "")
	ctx := testContext(t)
	m, err := lf.client.Create(ctx, workerApp, machines.CreateRequest{Name: "kept",
		Config: machines.MachineConfig{Image: "img", Metadata: map[string]string{"role": "worker"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = lf.client.Create(ctx, workerApp, machines.CreateRequest{Name: "kept", Config: machines.MachineConfig{Image: "img"}})
	wantErr(t, "a second machine with the same name", err, machines.ErrNameTaken)
	edge := lf.srv.Supervisor.Machines(edgeApp)[0].ID
	if err := lf.client.SetMetadata(ctx, edgeApp, edge, "note", "kept too"); err != nil {
		t.Fatal(err)
	}
	lf.close(t)

	again := openLocal(t, dir, "", "")
	ms, err := again.client.List(ctx, workerApp, machines.ListOptions{Metadata: map[string]string{"role": "worker"}})
	if err != nil || len(ms) != 1 || ms[0].ID != m.ID || ms[0].Name != "kept" || ms[0].State != machines.StateStarted {
		t.Fatalf("after a restart: %+v, %v", ms, err)
	}
	if e := again.echo(t, workerApp, m.ID); e.Machine != m.ID {
		t.Fatalf("the kept machine answered %+v", e)
	}
	if md, _ := again.client.Metadata(ctx, edgeApp, edge); md["note"] != "kept too" {
		t.Fatalf("metadata of a configured machine after a restart: %v", md)
	}
	ids := []string{}
	for _, m := range again.srv.Supervisor.Machines("") {
		ids = append(ids, m.ID)
	}
	if !slices.Contains(ids, edge) || len(ids) != 2 {
		t.Fatalf("machines after a restart: %v", ids)
	}
}

// StopAndWait and Destroy compose the documented calls: stopped means
// stopped (not only asked to stop), destroyed means gone, and both treat a
// machine already in that state as done.
func TestClient_StopAndWaitThenDestroy(t *testing.T) {
	t.Parallel()
	lf := openLocal(t, "", "", "")
	c, ctx := lf.client, testContext(t)
	m, err := c.Create(ctx, workerApp, machines.CreateRequest{Config: machines.MachineConfig{Image: "workers:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx, workerApp, m.ID, machines.WaitRequest{State: machines.StateStarted}); err != nil {
		t.Fatal(err)
	}
	if m, err = c.Get(ctx, workerApp, m.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.StopAndWait(ctx, workerApp, m, machines.StopRequest{Signal: "SIGTERM"}, 10*time.Second); err != nil {
		t.Fatalf("StopAndWait: %v", err)
	}
	if st, _ := lf.srv.Supervisor.State(m.ID); st != flylocal.StateStopped {
		t.Fatalf("after StopAndWait the supervisor says %s", st)
	}
	stopped, err := c.Get(ctx, workerApp, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StopAndWait(ctx, workerApp, stopped, machines.StopRequest{}, 10*time.Second); err != nil {
		t.Fatalf("StopAndWait of a stopped machine: %v", err)
	}
	for range 2 { // the second time, the machine is gone already
		if err := c.Destroy(ctx, workerApp, m.ID, 10*time.Second); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
	}
	_, err = c.Get(ctx, workerApp, m.ID)
	wantErr(t, "Get of a destroyed machine", err, machines.ErrNotFound)
}
