package flylocal_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/replay"
)

func TestMachineEnvironmentAndOutput(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://localhost:5432/spaceport")
	router := app("router", 1)
	router.Env = map[string]string{"TEST_APP": "router-only"}
	cfg := testConfig(t, router, app("backend", 1))
	cfg.Env["TEST_GLOBAL"] = "everyone"
	ts := openServer(t, cfg)
	m := ts.machines(t, "router", 1)[0]

	e := ts.echo(t, http.MethodGet, "/", nil, nil)
	for k, want := range map[string]string{
		"FLY_APP_NAME":   "router",
		"FLY_MACHINE_ID": m.ID,
		"FLY_ALLOC_ID":   m.ID,
		"FLY_REGION":     "local",
		"PRIMARY_REGION": "local",
		"FLY_PRIVATE_IP": "127.0.0.1",
		"PORT":           strconv.Itoa(m.Port),
		"DATABASE_URL":   "postgres://localhost:5432/spaceport",
		"TEST_GLOBAL":    "everyone",
		"TEST_APP":       "router-only",
	} {
		if got := e.Env[k]; got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	b := ts.machines(t, "backend", 1)[0]
	e = ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "app=backend;instance="+b.ID))
	if _, ok := e.Env["TEST_APP"]; ok || e.Env["FLY_APP_NAME"] != "backend" || e.Env["TEST_GLOBAL"] != "everyone" {
		t.Errorf("backend environment %v", e.Env)
	}

	for _, want := range []string{
		"[router " + m.ID + "] machine " + m.ID + " listening on :" + strconv.Itoa(m.Port) + "\n",
		"[router " + m.ID + "] machine " + m.ID + " says hello on stderr\n",
		"[backend " + b.ID + "] machine " + b.ID + " listening on",
	} {
		if !strings.Contains(ts.output.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, ts.output.String())
		}
	}
}

func TestMachineIDsStable(t *testing.T) {
	cfg := testConfig(t, app("router", 1), app("backend", 3))
	ids := func(ts *testServer) (out []string, ports []int) {
		for _, m := range ts.Supervisor.Machines("") {
			out = append(out, m.App+"/"+m.ID)
			ports = append(ports, m.Port)
		}
		return out, ports
	}

	first := openServer(t, cfg)
	ids1, ports1 := ids(first)
	seen := map[string]bool{}
	for _, m := range first.Supervisor.Machines("") {
		if !replay.ValidMachineID(m.ID) || seen[m.ID] {
			t.Fatalf("machine ID %q is not a fresh machine ID", m.ID)
		}
		seen[m.ID] = true
	}
	e := first.echo(t, http.MethodGet, "/", nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// A restarted flylocal brings back the same machines on the same ports.
	second := openServer(t, cfg)
	ids2, ports2 := ids(second)
	if strings.Join(ids1, " ") != strings.Join(ids2, " ") {
		t.Fatalf("machines %v after restart, want %v", ids2, ids1)
	}
	for i := range ports1 {
		if ports1[i] != ports2[i] {
			t.Errorf("ports %v after restart, want %v", ports2, ports1)
			break
		}
	}
	if e2 := second.echo(t, http.MethodGet, "/", nil, nil); e2.Machine != e.Machine || e2.Pid == e.Pid {
		t.Fatalf("router is %s (pid %d) after restart, was %s (pid %d)", e2.Machine, e2.Pid, e.Machine, e.Pid)
	}
	if err := second.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// Scaling down keeps the first machines; scaling up again brings the same IDs back before new ones.
	cfg.Apps[1].Machines = 1
	down, _ := ids(newServer(t, cfg))
	if strings.Join(down, " ") != strings.Join(ids1[:2], " ") {
		t.Fatalf("machines %v after scaling down, want %v", down, ids1[:2])
	}
	cfg.Apps[1].Machines = 4
	up, _ := ids(newServer(t, cfg))
	if strings.Join(up[:4], " ") != strings.Join(ids1, " ") || len(up) != 5 || seen[strings.TrimPrefix(up[4], "backend/")] {
		t.Fatalf("machines %v after scaling up, want %v and one new", up, ids1)
	}
}

func TestCrashRestart(t *testing.T) {
	ts := openServer(t, testConfig(t, app("backend", 1)))
	m := ts.machines(t, "backend", 1)[0]
	before := ts.echo(t, http.MethodGet, "/", nil, nil)

	if resp, b := ts.do(t, http.MethodGet, "/exit?code=3", nil, nil); resp.StatusCode != http.StatusOK || string(b) != "ok" {
		t.Fatalf("exit: %d %s", resp.StatusCode, b)
	}
	waitFor(t, "a new process of machine "+m.ID, func() bool {
		resp, err := ts.client.Get(ts.URL() + "/")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		st, _ := ts.Supervisor.State(m.ID)
		return resp.StatusCode == http.StatusOK && st == flylocal.StateStarted && !processAlive(before.Pid)
	})
	after := ts.echo(t, http.MethodGet, "/", nil, nil)
	if after.Machine != m.ID || after.Pid == before.Pid || after.Env["PORT"] != before.Env["PORT"] {
		t.Fatalf("after the crash: machine %s pid %d port %s; before: %s pid %d port %s",
			after.Machine, after.Pid, after.Env["PORT"], before.Machine, before.Pid, before.Env["PORT"])
	}
	if !strings.Contains(ts.logs.String(), "restarting") {
		t.Errorf("no restart logged:\n%s", ts.logs.String())
	}
}

func TestExitZeroStops(t *testing.T) {
	ts := openServer(t, testConfig(t, app("router", 1), app("backend", 1)))
	b := ts.machines(t, "backend", 1)[0]
	toBackend := header("X-Test-Replay", "app=backend;instance="+b.ID)
	first := ts.echo(t, http.MethodGet, "/", nil, toBackend)

	if resp, _ := ts.do(t, http.MethodGet, "/exit?code=0", nil, toBackend); resp.StatusCode != http.StatusOK {
		t.Fatalf("exit: status %d", resp.StatusCode)
	}
	ts.waitState(t, b.ID, flylocal.StateStopped)
	// Stopped, not restarted: the next request autostarts it.
	e := ts.echo(t, http.MethodGet, "/", nil, toBackend)
	if e.Machine != b.ID || e.Pid == first.Pid {
		t.Fatalf("served by %s pid %d, want %s in a new process", e.Machine, e.Pid, b.ID)
	}
}

// stubbornApp is an app "stubborn" of one machine that ignores SIGTERM, so it stays stopping until flylocal
// kills it after kill.
func stubbornApp(kill time.Duration) flylocal.AppConfig {
	a := app("stubborn", 1)
	a.Env = map[string]string{"TEST_IGNORE_SIGTERM": "1"}
	a.KillTimeout = flylocal.Duration(kill)
	return a
}

func TestStopKillsAfterTimeout(t *testing.T) {
	ts := openServer(t, testConfig(t, stubbornApp(200*time.Millisecond)))
	m := ts.machines(t, "stubborn", 1)[0]
	e := ts.echo(t, http.MethodGet, "/", nil, nil)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := ts.Supervisor.Stop(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if st, _ := ts.Supervisor.State(m.ID); st != flylocal.StateStopped {
		t.Fatalf("state %s after Stop", st)
	}
	if processAlive(e.Pid) {
		t.Fatalf("process %d alive after Stop", e.Pid)
	}
	if !strings.Contains(ts.logs.String(), "killing") {
		t.Errorf("no kill logged:\n%s", ts.logs.String())
	}
}

func TestOpenFailsWhenMachineExits(t *testing.T) {
	broken := flylocal.AppConfig{Name: "broken", Machines: 1, Command: []string{"/bin/sh", "-c", "echo no database >&2; exit 3"}}
	ts := newServer(t, testConfig(t, app("router", 1), broken))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err := ts.Open(ctx)
	if !errors.Is(err, flylocal.ErrMachineExited) {
		t.Fatalf("Open error %v, want ErrMachineExited", err)
	}
	for _, m := range ts.Supervisor.Machines("") {
		if m.State != flylocal.StateStopped {
			t.Errorf("machine %s/%s is %s after a failed Open", m.App, m.ID, m.State)
		}
	}
	if !strings.Contains(ts.output.String(), "] no database\n") {
		t.Errorf("output lacks the machine's complaint:\n%s", ts.output.String())
	}
}

func TestSupervisor_ConcurrentStartStop(t *testing.T) {
	ts := openServer(t, testConfig(t, app("backend", 1)))
	m := ts.machines(t, "backend", 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for range 3 {
		if err := ts.Supervisor.Stop(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- ts.Supervisor.Start(ctx, m.ID) }()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		ts.echo(t, http.MethodGet, "/", nil, nil)
	}
	// Start while stopping waits for the stop, then starts.
	done := make(chan error, 1)
	go func() { done <- ts.Supervisor.Stop(ctx, m.ID) }()
	if err := ts.Supervisor.Start(ctx, m.ID); err != nil && !errors.Is(err, flylocal.ErrMachineStopped) {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := ts.Supervisor.Start(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if st, _ := ts.Supervisor.State(m.ID); st != flylocal.StateStarted {
		t.Fatalf("state %s", st)
	}
	if _, err := ts.Supervisor.State("0123456789abcd"); !errors.Is(err, flylocal.ErrMachineNotFound) {
		t.Fatalf("State of an unknown machine: %v", err)
	}
}

// TestShutdown checks that Close stops every process and leaves no goroutine behind, with a WebSocket tunnel and
// keep-alive connections open.
func TestShutdown(t *testing.T) {
	baseline := runtime.NumGoroutine()
	ts := newServer(t, testConfig(t, app("router", 1), app("backend", 2)))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := ts.Open(ctx); err != nil {
		t.Fatal(err)
	}
	var pids []int
	pids = append(pids, ts.echo(t, http.MethodGet, "/", nil, nil).Pid)
	for _, b := range ts.machines(t, "backend", 2) {
		pids = append(pids, ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "app=backend;instance="+b.ID)).Pid)
	}
	b := ts.machines(t, "backend", 2)[1]
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL(), "http")+"/ws", &websocket.DialOptions{
		HTTPHeader: header("X-Test-Replay", "app=backend;instance="+b.ID),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); err != nil {
		t.Fatal(err)
	}

	if err := ts.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if processAlive(pid) {
			t.Errorf("machine process %d alive after Close", pid)
		}
	}
	if _, _, err := c.Read(ctx); err == nil {
		t.Error("WebSocket still open after Close")
	}
	_ = c.CloseNow()
	ts.client.CloseIdleConnections()

	deadline := time.Now().Add(waitTimeout)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := http.Get(ts.URL()); err == nil {
		t.Error("edge still answers after Close")
	}
}

// processAlive reports whether a process with pid exists (and is not a zombie waiting for its parent).
func processAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // no /proc (macOS): existence is all we know
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) == 0 || fields[0] != "Z"
}

// TestStartWhileStopping: a start asked of a machine that is still stopping (an autostart racing an idle stop)
// waits for the stop to finish, then starts it again. The machine ignores SIGTERM and its kill timeout is an hour,
// so it stays stopping until the test kills its process: no window to catch.
func TestStartWhileStopping(t *testing.T) {
	ts := openServer(t, testConfig(t, stubbornApp(time.Hour)))
	m := ts.machines(t, "stubborn", 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	first := ts.echo(t, http.MethodGet, "/", nil, nil)

	stopped := make(chan error, 1)
	go func() { stopped <- ts.Supervisor.Stop(ctx, m.ID) }()
	ts.waitState(t, m.ID, flylocal.StateStopping)
	started := make(chan error, 1)
	go func() { started <- ts.Supervisor.Start(ctx, m.ID) }()
	waitFor(t, "Start to wait for the stop to finish, or return", func() bool {
		return len(started) > 0 || waitingIn("flylocal.(*Supervisor).Start(")
	})
	select {
	case err := <-started:
		t.Fatalf("Start returned while the machine was stopping: %v", err)
	default:
	}
	if err := syscall.Kill(first.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if err := <-started; err != nil {
		t.Fatalf("Start while stopping: %v", err)
	}
	if st, _ := ts.Supervisor.State(m.ID); st != flylocal.StateStarted {
		t.Fatalf("state %s after the start, want started", st)
	}
	e := ts.echo(t, http.MethodGet, "/", nil, nil)
	if e.Pid == first.Pid {
		t.Fatalf("served by pid %d, the process that was killed", e.Pid)
	}
	stopStubborn(t, ts, m.ID, e.Pid)
}

// stopStubborn stops machine id, whose process pid ignores SIGTERM, by killing the process once it is stopping,
// so that the test does not wait for its kill timeout.
func stopStubborn(t *testing.T, ts *testServer, id string, pid int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- ts.Supervisor.Stop(ctx, id) }()
	ts.waitState(t, id, flylocal.StateStopping)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// waitingIn reports whether a goroutine is blocked in a select inside function fn (as it appears in a stack
// trace, e.g. "pkg.(*T).M("): a call that has reached its wait.
func waitingIn(fn string) bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[select") && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}
