package pglocal_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spaceport-sync/spaceport/backend/pglocal"
)

// timeout bounds each test's Postgres commands: generous, for a busy machine.
const timeout = 3 * time.Minute

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// start starts a cluster and stops it at cleanup (if the test has not).
func start(t *testing.T, cfg pglocal.Config) *pglocal.Cluster {
	t.Helper()
	c, err := pglocal.Start(testContext(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopIfRunning(t, c) })
	return c
}

func stopIfRunning(t *testing.T, c *pglocal.Cluster) {
	t.Helper()
	ctx := testContext(t)
	running, err := c.Running(ctx)
	if err != nil {
		t.Error(err)
		return
	}
	if running {
		if err := c.Stop(ctx); err != nil {
			t.Error(err)
		}
	}
}

// execSQL runs SQL statements on the cluster's postgres database.
func execSQL(t *testing.T, c *pglocal.Cluster, sql string) {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// note reads the text kept in the cluster's table notes.
func note(t *testing.T, c *pglocal.Cluster) string {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var s string
	if err := conn.QueryRow(ctx, "select text from notes").Scan(&s); err != nil {
		t.Fatalf("read notes: %v", err)
	}
	return s
}

func mustExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("want %s: %v", path, err)
	}
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("want no %s, stat says %v", path, err)
	}
}

// TestStart_RelativeDir starts a cluster with a relative Dir, as `make dev` does (.dev/postgres from the
// repository's root): the cluster is at Dir/data from the working directory, and it starts again, with its data,
// after a stop.
func TestStart_RelativeDir(t *testing.T) {
	wd := t.TempDir()
	t.Chdir(wd)
	c := start(t, pglocal.Config{Dir: "dev/postgres"})
	if want := filepath.Join(wd, "dev", "postgres"); c.Dir() != want {
		t.Fatalf("Dir() = %s, want %s", c.Dir(), want)
	}
	mustExist(t, filepath.Join(wd, "dev", "postgres", "data", "PG_VERSION"))
	mustExist(t, filepath.Join(wd, "dev", "postgres", "postgres.log"))
	mustNotExist(t, filepath.Join(wd, "dev", "postgres", "dev"))
	execSQL(t, c, "create table notes (text text); insert into notes values ('kept')")
	if err := c.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}

	// Started again: the relative Dir finds the same cluster.
	c = start(t, pglocal.Config{Dir: "dev/postgres"})
	if c.MovedFrom() != "" {
		t.Fatalf("MovedFrom() = %q on a cluster in place", c.MovedFrom())
	}
	if got := note(t, c); got != "kept" {
		t.Fatalf("note %q after a restart, want kept", got)
	}
	// Stopped from another working directory, by its absolute Dir.
	t.Chdir(t.TempDir())
	o, err := pglocal.Open(pglocal.Config{Dir: filepath.Join(wd, "dev", "postgres")})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if running, err := c.Running(testContext(t)); err != nil || running {
		t.Fatalf("Running() = %v, %v after Stop", running, err)
	}
}

// TestStart_MovesNestedCluster gives Start the folder as an earlier pglocal left it when run as root with a relative
// Dir (the cluster in Dir/<Dir>/data, still running): Start stops it, moves it to Dir/data with its log, says so,
// and the data is there.
func TestStart_MovesNestedCluster(t *testing.T) {
	wd := t.TempDir()
	t.Chdir(wd)
	nestedDir := filepath.Join(wd, "dev", "postgres", "dev", "postgres")
	old := start(t, pglocal.Config{Dir: nestedDir})
	execSQL(t, old, "create table notes (text text); insert into notes values ('from the nested cluster')")

	c := start(t, pglocal.Config{Dir: "dev/postgres"})
	if want := filepath.Join(nestedDir, "data"); c.MovedFrom() != want {
		t.Fatalf("MovedFrom() = %q, want %s", c.MovedFrom(), want)
	}
	if got := note(t, c); got != "from the nested cluster" {
		t.Fatalf("note %q", got)
	}
	mustExist(t, filepath.Join(wd, "dev", "postgres", "data", "PG_VERSION"))
	mustExist(t, filepath.Join(wd, "dev", "postgres", "postgres.log"))
	mustNotExist(t, filepath.Join(wd, "dev", "postgres", "dev"))
	if running, err := old.Running(testContext(t)); err != nil || running {
		t.Fatalf("the nested cluster's handle: Running() = %v, %v; want it stopped and gone", running, err)
	}
	if err := c.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}

	// Once moved, it is in place: nothing is said the next time.
	c = start(t, pglocal.Config{Dir: "dev/postgres"})
	if c.MovedFrom() != "" {
		t.Fatalf("MovedFrom() = %q on the second start", c.MovedFrom())
	}
	if got := note(t, c); got != "from the nested cluster" {
		t.Fatalf("note %q on the second start", got)
	}
}

// TestStart_AfterInterruptedInitdb: what an initdb stopped half-way leaves (its work folder, an empty data folder)
// does not stop the next start; a data folder holding something else is left alone, with an error naming it.
func TestStart_AfterInterruptedInitdb(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data.initdb", "base"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := start(t, pglocal.Config{Dir: dir})
	mustExist(t, filepath.Join(dir, "data", "PG_VERSION"))
	mustNotExist(t, filepath.Join(dir, "data.initdb"))
	if err := c.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}

	other := t.TempDir()
	keep := filepath.Join(other, "data", "mine.txt")
	if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := pglocal.Start(testContext(t), pglocal.Config{Dir: other})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(other, "data")) {
		t.Fatalf("Start on a data folder with other files: %v, want an error naming it", err)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "mine" {
		t.Fatalf("%s: %q, %v", keep, b, err)
	}
}

// TestStart_NonRoot runs the tests above as an unprivileged user when the tests run as root (as root, pglocal runs
// Postgres as the postgres or nobody user; as anyone else, as themselves). Run by a user other than root, every
// test here already takes that path.
func TestStart_NonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: the other tests run as this unprivileged user")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody to run as: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// A folder of the user's own, at the top of the temporary folder (t.TempDir's parents are root's, mode 0700),
	// holding a copy of this test binary.
	home, err := os.MkdirTemp("", "pglocal-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(home) })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(home, "pglocal.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{home, bin} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.CommandContext(testContext(t), bin, "-test.run=^TestStart_(RelativeDir|MovesNestedCluster|AfterInterruptedInitdb)$",
		"-test.count=1", "-test.v")
	cmd.Dir = home
	cmd.Env = append(os.Environ(), "HOME="+home, "TMPDIR="+home, "USER=nobody")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the tests as user nobody: %v\n%s", err, out)
	}
	for _, name := range []string{"TestStart_RelativeDir", "TestStart_MovesNestedCluster", "TestStart_AfterInterruptedInitdb"} {
		if !strings.Contains(string(out), "--- PASS: "+name) {
			t.Fatalf("%s did not pass as user nobody:\n%s", name, out)
		}
	}
	t.Logf("as user nobody:\n%s", out)
}

// TestStart_PortTaken: a fixed port another program holds is said plainly.
func TestStart_PortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = pglocal.Start(testContext(t), pglocal.Config{Dir: t.TempDir(), Port: port})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d on 127.0.0.1 is taken by another program", port)) {
		t.Fatalf("Start on a taken port: %v", err)
	}
}
