package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
)

// devStartTimeout bounds scripts/dev from start to flylocal's ready line: building the binaries, and on a clean
// checkout installing and building the frontend, then starting Postgres and the machines.
const devStartTimeout = 3 * time.Minute

// devStopTimeout bounds scripts/dev's stop: flylocal stops its machines (each within its kill_timeout), then
// Postgres stops.
const devStopTimeout = time.Minute

// TestMakeDev runs scripts/dev, what `make dev` runs, from the repository root with a folder, a Postgres port, an
// edge address and a Machines API address of its own (DEV_DIR, DEV_PG_PORT, DEV_LISTEN, DEV_API_LISTEN); waits for
// flylocal's ready line; does a sync round trip through the edge; stops it and checks that every process it started
// is gone. It stops it twice: with SIGTERM to the script (a process manager, `kill`), and with SIGINT to its whole
// process group (Ctrl-C in the terminal). On a clean checkout the script builds the frontend (npm ci, vite build);
// with frontend/dist present it reuses it.
func TestMakeDev(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole dev stack")
	}
	if _, err := os.Stat("/proc/self/environ"); err != nil {
		t.Skip("finding the processes scripts/dev started needs Linux's /proc")
	}
	t.Parallel()
	root := stacktest.RepoRoot(t)
	stops := []struct {
		name string
		stop func(pid int) error
	}{
		{"SIGTERM", func(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }},
		{"CtrlC", func(pid int) error { return syscall.Kill(-pid, syscall.SIGINT) }},
	}
	for _, s := range stops {
		t.Run(s.name, func(t *testing.T) { runDev(t, root, s.stop) })
	}
}

// runDev runs scripts/dev once, as described on TestMakeDev; stop sends the signal that stops it.
func runDev(t *testing.T, root string, stop func(pid int) error) {
	devDir := t.TempDir()
	addrs := freeAddrs(t, 3)
	listen, apiListen := addrs[0], addrs[1]
	_, pgPort, err := net.SplitHostPort(addrs[2])
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := flylocal.LoadConfig(filepath.Join(root, "fly", "flylocal.dev.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Every process the script starts inherits this variable, also those that leave its process group (machines,
	// Postgres), which is how they are found.
	marker := "SPACEPORT_DEV_TEST=" + randomHex(8)

	cmd := exec.Command(filepath.Join(root, "scripts", "dev"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), marker, "DEV_DIR="+devDir, "DEV_PG_PORT="+pgPort, "DEV_LISTEN="+listen,
		"DEV_API_LISTEN="+apiListen)
	if _, err := os.Stat(filepath.Join(root, "frontend", "dist", "index.html")); err == nil {
		cmd.Env = append(cmd.Env, "SKIP_FRONTEND=1")
	} else {
		t.Log("no frontend/dist: scripts/dev builds the frontend")
	}
	// A process group of its own, as a terminal gives a foreground command.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := newReadyWriter()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(devStopTimeout):
			}
		}
		if left := killMarked(marker); len(left) > 0 {
			t.Errorf("killed processes scripts/dev left behind:\n%s", formatProcs(left))
		}
		if t.Failed() {
			t.Logf("scripts/dev output:\n%s", out.String())
		}
	})

	var url string
	select {
	case url = <-out.ready:
	case <-exited:
		t.Fatalf("scripts/dev exited before flylocal was ready: %v", exitErr)
	case <-time.After(devStartTimeout):
		t.Fatalf("flylocal not ready %s after scripts/dev started", devStartTimeout)
	}
	t.Logf("scripts/dev ready at %s after %s", url, time.Since(start).Round(time.Millisecond))
	if want := "http://" + listen; url != want {
		t.Fatalf("flylocal serves %s, want DEV_LISTEN %s", url, want)
	}

	e := newEdge(t, url)
	checkFrontend(t, e, root)
	syncRoundTrip(t, e)

	// Everything the script started is running: the Postgres server, flylocal and each configured machine.
	running := markedProcs(marker)
	wantCounts := map[string]int{"flylocal": 1, "postgres": 1}
	for _, app := range cfg.Apps {
		wantCounts[filepath.Base(app.Command[0])] += app.Machines
	}
	// make dev places each space on a machine of its own (PLACEMENT=dedicated): the round trip's space has one.
	wantCounts["backend"]++
	for name, want := range wantCounts {
		n := 0
		for _, p := range running {
			if p.name == name {
				n++
			}
		}
		// Postgres runs a server process and its helpers.
		if n < want || name != "postgres" && n != want {
			t.Fatalf("%d %s processes running, want %d; processes of scripts/dev:\n%s", n, name, want, formatProcs(running))
		}
	}

	stopped := time.Now()
	if err := stop(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(devStopTimeout):
		t.Fatalf("scripts/dev still running %s after the stop signal", devStopTimeout)
	}
	t.Logf("scripts/dev stopped after %s (%v)", time.Since(stopped).Round(time.Millisecond), exitErr)
	// The script returns only after flylocal stopped its machines and Postgres stopped: nothing may remain.
	if left := markedProcs(marker); len(left) > 0 {
		t.Fatalf("processes still running after scripts/dev exited:\n%s", formatProcs(left))
	}
}

// checkFrontend checks that the edge serves the built frontend at /.
func checkFrontend(t *testing.T, e *edge, root string) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join(root, "frontend", "dist", "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	status, got, err := e.call(http.MethodGet, "/", nil)
	if err != nil || status != http.StatusOK || !bytes.Equal(got, want) {
		t.Fatalf("GET / answered %d (err %v):\n%s\nwant frontend/dist/index.html:\n%s", status, err, got, want)
	}
}

// syncRoundTrip creates a space through the edge, connects two clients to it, and checks that each sees the
// other's mutations.
func syncRoundTrip(t *testing.T, e *edge) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	sp := e.createSpace(t, "dev-round-trip")
	var cs []*syncclient.Client
	for range 2 {
		c, err := syncclient.Dial(ctx, e.wsURL(sp.ID, e.token(t)), syncclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Kill)
		if err := c.WaitWelcome(ctx); err != nil {
			t.Fatalf("no welcome: %v", err)
		}
		if w := c.Welcome(); w.MachineID != sp.Machine || w.SpaceID != sp.ID {
			t.Fatalf("welcome %+v; the directory places %s on machine %s", *w, sp.ID, sp.Machine)
		}
		cs = append(cs, c)
	}
	a, b := cs[0], cs[1]
	if _, err := a.Mutate(ctx, "createTodo", map[string]any{"id": "t1", "text": "from a"}); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitFor(ctx, func(s *syncclient.State) bool { return s.Data["todo/t1"] != nil }); err != nil {
		t.Fatalf("b never saw a's todo: %v", err)
	}
	if _, err := b.Mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1}); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitFor(ctx, func(s *syncclient.State) bool { return counter(s, "counter") == 1 }); err != nil {
		t.Fatalf("a never saw b's increment: %v", err)
	}
	for _, c := range cs {
		if errs := c.Errors(); len(errs) > 0 {
			t.Fatalf("protocol errors: %v", errs)
		}
		c.Close()
	}
}

// readyWriter collects a process's output and reports the URL of flylocal's ready line.
type readyWriter struct {
	stacktest.SyncBuffer
	lineMu sync.Mutex
	line   []byte
	ready  chan string
	seen   bool
}

func newReadyWriter() *readyWriter { return &readyWriter{ready: make(chan string, 1)} }

var readyURL = regexp.MustCompile(`\bmsg=ready\b.*\burl=(\S+)`)

func (w *readyWriter) Write(p []byte) (int, error) {
	_, _ = w.SyncBuffer.Write(p)
	w.lineMu.Lock()
	defer w.lineMu.Unlock()
	for _, b := range p {
		if b != '\n' {
			w.line = append(w.line, b)
			continue
		}
		if m := readyURL.FindSubmatch(w.line); m != nil && !w.seen && bytes.Contains(w.line, []byte("component=flylocal")) {
			w.seen = true
			w.ready <- string(m[1])
		}
		w.line = w.line[:0]
	}
	return len(p), nil
}

// proc is a running process found in /proc.
type proc struct {
	pid     int
	name    string // base name of the executable
	cmdline string
}

// markedProcs returns the processes whose environment holds marker (zombies have none and are not listed).
func markedProcs(marker string) []proc {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !slices.ContainsFunc(bytes.Split(env, []byte{0}), func(v []byte) bool { return string(v) == marker }) {
			continue
		}
		p := proc{pid: pid}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		p.cmdline = strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
			p.name = filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
		} else if f := strings.Fields(p.cmdline); len(f) > 0 {
			p.name = filepath.Base(f[0])
		}
		out = append(out, p)
	}
	return out
}

// killMarked kills (SIGKILL) the processes whose environment holds marker until none is left, and returns those
// it found.
func killMarked(marker string) []proc {
	var found []proc
	deadline := time.Now().Add(10 * time.Second)
	for {
		ps := markedProcs(marker)
		if len(ps) == 0 || time.Now().After(deadline) {
			return found
		}
		for _, p := range ps {
			if !slices.ContainsFunc(found, func(q proc) bool { return q.pid == p.pid }) {
				found = append(found, p)
			}
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func formatProcs(ps []proc) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "  pid %d %s: %s\n", p.pid, p.name, p.cmdline)
	}
	return b.String()
}
