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

// TestMakeDev runs the two ways the dev stack is started and stopped, one after the other (the first builds
// frontend/dist on a clean checkout, which the second copies):
//
//   - SIGTERM: scripts/dev, what `make dev` runs, from the repository root with a folder, a Postgres port, an edge
//     address and a Machines API address of its own (DEV_DIR, DEV_PG_PORT, DEV_LISTEN, DEV_API_LISTEN), stopped with
//     SIGTERM as a process manager (`kill`) stops it: see runDev.
//   - README: `make dev` as a newcomer runs it, in a copy of the repository with the default DEV_DIR (.dev): see
//     testReadme.
func TestMakeDev(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole dev stack")
	}
	if _, err := os.Stat("/proc/self/environ"); err != nil {
		t.Skip("finding the processes scripts/dev started needs Linux's /proc")
	}
	t.Parallel()
	root := stacktest.RepoRoot(t)
	if !t.Run("SIGTERM", func(t *testing.T) { runDev(t, root) }) {
		return
	}
	t.Run("README", func(t *testing.T) { testReadme(t, root) })
}

// runDev runs scripts/dev once from the repository root; waits for flylocal's ready line; does a sync round trip
// through the edge; stops it with SIGTERM and checks that every process it started is gone. On a clean checkout the
// script builds the frontend (npm ci, vite build); with frontend/dist present it reuses it.
func runDev(t *testing.T, root string) {
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
	env := []string{"DEV_DIR=" + devDir, "DEV_PG_PORT=" + pgPort, "DEV_LISTEN=" + listen, "DEV_API_LISTEN=" + apiListen}
	if _, err := os.Stat(filepath.Join(root, "frontend", "dist", "index.html")); err == nil {
		env = append(env, "SKIP_FRONTEND=1")
	} else {
		t.Log("no frontend/dist: scripts/dev builds the frontend")
	}
	d := startDev(t, root, env, filepath.Join(root, "scripts", "dev"))
	url := d.waitReady(t)
	if want := "http://" + listen; url != want {
		t.Fatalf("flylocal serves %s, want DEV_LISTEN %s", url, want)
	}

	e := newEdge(t, url)
	checkFrontend(t, e, root)
	syncRoundTrip(t, e)

	// Everything the script started is running: the Postgres server, flylocal and each configured machine.
	running := markedProcs(d.marker)
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
	d.stop(t, syscall.SIGTERM, false)
	if err := d.err; err != nil {
		t.Fatalf("scripts/dev stopped with SIGTERM exited with %v, want status 0", err)
	}
}

// devRun is a running scripts/dev (or `make dev`) and what it printed.
type devRun struct {
	cmd    *exec.Cmd
	out    *readyWriter
	start  time.Time
	exited chan struct{}
	err    error // cmd.Wait's result, once exited is closed
	// marker is in the environment of every process the run starts, also of those that leave its process group
	// (machines, Postgres), which is how they are found.
	marker string
}

// startDev starts name (scripts/dev, or make with args) in dir with env added to this process's environment (less an
// enclosing make's variables and scripts/dev's settings: devEnviron), in a process group of its own, as a terminal
// runs a foreground command. At cleanup a run still going gets SIGTERM,
// and whatever it left behind is killed and fails the test.
func startDev(t *testing.T, dir string, env []string, name string, args ...string) *devRun {
	t.Helper()
	d := &devRun{out: newReadyWriter(), exited: make(chan struct{}), marker: "SPACEPORT_DEV_TEST=" + randomHex(8)}
	d.cmd = exec.Command(name, args...)
	d.cmd.Dir = dir
	d.cmd.Env = append(append(devEnviron(), d.marker), env...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.WaitDelay = 5 * time.Second
	d.start = time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }() // owned by d: ends when the process does
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-d.exited:
			case <-time.After(devStopTimeout):
				_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
				<-d.exited // WaitDelay bounds it
			}
		}
		if left := killMarked(d.marker); len(left) > 0 {
			t.Errorf("killed processes %s left behind:\n%s", name, formatProcs(left))
		}
		if t.Failed() {
			t.Logf("output of %s %s:\n%s", name, strings.Join(args, " "), d.out.String())
		}
	})
	return d
}

// waitReady waits for flylocal's ready line and returns the edge's URL.
func (d *devRun) waitReady(t *testing.T) string {
	t.Helper()
	select {
	case url := <-d.out.ready:
		t.Logf("ready at %s after %s", url, time.Since(d.start).Round(time.Millisecond))
		return url
	case <-d.exited:
		t.Fatalf("exited before flylocal was ready: %v", d.err)
	case <-time.After(devStartTimeout):
		t.Fatalf("flylocal not ready %s after the start", devStartTimeout)
	}
	return ""
}

// stop sends sig to the run (to its whole process group if group, as Ctrl-C in a terminal does), waits for it to
// exit and checks that every process it started is gone: it returns only after flylocal stopped its machines and
// Postgres stopped.
func (d *devRun) stop(t *testing.T, sig syscall.Signal, group bool) {
	t.Helper()
	pid := d.cmd.Process.Pid
	if group {
		pid = -pid
	}
	stopped := time.Now()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(devStopTimeout):
		t.Fatalf("still running %s after %v", devStopTimeout, sig)
	}
	t.Logf("stopped after %s (%v)", time.Since(stopped).Round(time.Millisecond), d.err)
	if left := markedProcs(d.marker); len(left) > 0 {
		t.Fatalf("processes still running after the run exited:\n%s", formatProcs(left))
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
