package e2e_test

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

// testReadme runs `make dev` as the README tells a newcomer to, in a copy of the repository with the default DEV_DIR
// (.dev, relative to the copy): it comes up; a list is created and written to through the edge; a second `make dev`
// in the same copy, while the first runs, is refused with a plain message; Ctrl-C (SIGINT to the process group)
// stops everything with no error from make, Postgres shut down cleanly; `make dev` again brings back the list on
// its machine, with its data, under the same dev secrets (a token of the first run still works) and it takes
// writes; SIGTERM to make stops it as quietly.
//
// What differs from a newcomer's terminal: ports of its own (DEV_PG_PORT, DEV_LISTEN, DEV_API_LISTEN), so that the
// test runs beside a `make dev` of the checkout and other tests; the checkout's frontend/dist is copied and
// reused (SKIP_FRONTEND=1) rather than built again.
func testReadme(t *testing.T, root string) {
	repo := copyRepo(t, root)
	addrs := freeAddrs(t, 3)
	_, pgPort, err := net.SplitHostPort(addrs[2])
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"DEV_PG_PORT=" + pgPort, "DEV_LISTEN=" + addrs[0], "DEV_API_LISTEN=" + addrs[1]}
	if _, err := os.Stat(filepath.Join(repo, "frontend", "dist", "index.html")); err == nil {
		env = append(env, "SKIP_FRONTEND=1")
	}
	devDir := filepath.Join(repo, ".dev")

	// make dev; a list, written to.
	first := startDev(t, repo, env, "make", "dev")
	e := newEdge(t, first.waitReady(t))
	sp := e.createSpace(t, "readme-list")
	token := e.token(t)
	ctx := testContext(t)
	c, err := syncclient.Dial(ctx, e.wsURL(sp.ID, token), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	if err := c.WaitWelcome(ctx); err != nil {
		t.Fatalf("no welcome: %v", err)
	}
	if _, err := c.Mutate(ctx, "createTodo", map[string]any{"id": "t1", "text": "written before Ctrl-C"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.Mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1}); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()

	// A second make dev in the same checkout while the first runs: refused at once, in plain words.
	second := startDev(t, repo, env, "make", "dev")
	select {
	case <-second.exited:
	case <-time.After(devStartTimeout):
		t.Fatalf("a second make dev beside the first still runs after %s", devStartTimeout)
	}
	out := second.out.String()
	if second.err == nil {
		t.Fatalf("a second make dev beside the first exited 0:\n%s", out)
	}
	if !strings.Contains(out, "make dev is already running with DEV_DIR=.dev") || strings.Contains(out, "in use") {
		t.Fatalf("a second make dev beside the first said (%v):\n%s\nwant that make dev is already running", second.err, out)
	}
	if status, b, err := e.call(http.MethodGet, "/readyz", nil); err != nil || status != http.StatusOK {
		t.Fatalf("the first make dev after the second was refused: GET /readyz %d %v: %s", status, err, b)
	}

	// Ctrl-C.
	first.stop(t, syscall.SIGINT, true)
	checkQuietStop(t, first, syscall.SIGINT)
	if _, err := os.Stat(filepath.Join(devDir, "postgres", "data", "PG_VERSION")); err != nil {
		t.Fatalf("no cluster in .dev/postgres/data: %v", err)
	}
	if _, err := os.Stat(filepath.Join(devDir, "postgres", ".dev")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf(".dev/postgres/.dev: %v; want none (the cluster nested in the wrong place)", err)
	}
	secrets := readSecrets(t, devDir)

	// make dev again.
	again := startDev(t, repo, env, "make", "dev")
	e = newEdge(t, again.waitReady(t))
	if got := readSecrets(t, devDir); got != secrets {
		t.Fatal("the dev secrets changed across make dev runs")
	}
	if got := e.getSpace(t, sp.ID); got.Machine != sp.Machine {
		t.Fatalf("after make dev again the directory places %s on %+v, want machine %s", sp.ID, got, sp.Machine)
	}
	// The first run's token: the same AUTH_SECRET signs and checks it.
	c, err = syncclient.Dial(ctx, e.wsURL(sp.ID, token), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	if err := c.WaitWelcome(ctx); err != nil {
		t.Fatalf("no welcome after make dev again (with the first run's token): %v", err)
	}
	if w := c.Welcome(); w.MachineID != sp.Machine {
		t.Fatalf("welcome from machine %s, want %s", w.MachineID, sp.Machine)
	}
	err = c.WaitFor(ctx, func(s *syncclient.State) bool {
		return bytes.Contains(s.Data["todo/t1"], []byte("written before Ctrl-C")) && counter(s, "counter") == 3
	})
	if err != nil {
		t.Fatalf("the list's data after make dev again: %v", err)
	}
	if _, err := c.Mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1}); err != nil {
		t.Fatalf("a write after make dev again: %v", err)
	}
	if errs := c.Errors(); len(errs) > 0 {
		t.Fatalf("protocol errors: %v", errs)
	}
	c.Close()
	again.stop(t, syscall.SIGTERM, false)
	checkQuietStop(t, again, syscall.SIGTERM)
	if strings.Contains(again.out.String(), "pglocal: found") {
		t.Fatalf("make dev again moved a database:\n%s", again.out.String())
	}
	// Postgres was shut down cleanly each time: it never had to recover.
	log, err := os.ReadFile(filepath.Join(devDir, "postgres", "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "database system is shut down"); n != 2 || bytes.Contains(log, []byte("was interrupted")) ||
		bytes.Contains(log, []byte("not properly shut down")) {
		t.Fatalf("postgres.log: %d clean shutdowns, want 2, and no recovery:\n%s", n, log)
	}
}

// checkQuietStop checks how a `make dev` stopped with sig ended: status 0, or make killed by sig (GNU make, once
// its recipe has exited, re-raises a SIGINT or SIGTERM it received itself), with no error from make, pglocal or
// flylocal, and the script's word that it stopped.
func checkQuietStop(t *testing.T, d *devRun, sig syscall.Signal) {
	t.Helper()
	var exit *exec.ExitError
	if d.err != nil && !(errors.As(d.err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() &&
		exit.Sys().(syscall.WaitStatus).Signal() == sig) {
		t.Fatalf("make dev stopped with %v ended with %v; want status 0 or its death by the signal", sig, d.err)
	}
	out := d.out.String()
	for line := range strings.Lines(out) {
		if strings.Contains(line, "make: ***") || strings.HasPrefix(line, "ERROR:") || strings.HasPrefix(line, "flylocal: ") {
			t.Fatalf("make dev stopped with %v printed %q", sig, strings.TrimSpace(line))
		}
	}
	if !strings.Contains(out, "dev: stopped;") {
		t.Fatalf("make dev stopped with %v did not say it stopped", sig)
	}
}

// readSecrets returns the dev secrets scripts/dev keeps in devDir.
func readSecrets(t *testing.T, devDir string) string {
	t.Helper()
	var b strings.Builder
	for _, name := range []string{"auth_secret", "replay_secret"} {
		s, err := os.ReadFile(filepath.Join(devDir, name))
		if err != nil || len(s) < 32 {
			t.Fatalf("%s: %q, %v", name, s, err)
		}
		b.Write(s)
		b.WriteByte('\n')
	}
	return b.String()
}

// devEnviron is this process's environment without what would make a `make dev` started here differ from one a
// person starts: the variables of an enclosing make (`make test` runs the tests) and scripts/dev's own settings.
func devEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "MAKEFLAGS", name == "MFLAGS", name == "MAKELEVEL", name == "MAKEOVERRIDES",
			strings.HasPrefix(name, "DEV_"), name == "SKIP_FRONTEND", name == "FLYLOCAL_CONFIG":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// copyRepo copies the repository at root into a folder of the test's own, as a fresh clone has it, plus the
// built frontend/dist if there is one: what .gitignore lists (bin/, .dev/, node_modules/, dist/, test results) and
// .git are left out.
func copyRepo(t *testing.T, root string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "spaceport")
	skip := map[string]bool{".git": true, "bin": true, ".dev": true, "node_modules": true, "dist": true, "test-results": true}
	copyTree(t, root, dst, func(rel string, d fs.DirEntry) bool { return d.IsDir() && skip[d.Name()] })
	dist := filepath.Join("frontend", "dist")
	if _, err := os.Stat(filepath.Join(root, dist, "index.html")); err == nil {
		copyTree(t, filepath.Join(root, dist), filepath.Join(dst, dist), func(string, fs.DirEntry) bool { return false })
	}
	return dst
}

// copyTree copies the files, folders and symbolic links under src to dst, keeping modes, except what skip says.
func copyTree(t *testing.T, src, dst string, skip func(rel string, d fs.DirEntry) bool) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if rel != "." && skip(rel, d) {
			return fs.SkipDir
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, b, info.Mode().Perm())
		}
		return nil // sockets and the like
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}
