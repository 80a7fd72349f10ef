package main_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "backend-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "backend")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build backend: %v\n%s", err, out)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m)
}

// proc is a real backend process.
type proc struct {
	cmd  *exec.Cmd
	port int
	done chan struct{} // closed when the process exited
	err  error         // its exit status, once done
}

func startProc(t *testing.T, dbURL string, port int, env ...string) *proc {
	t.Helper()
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, fmt.Sprint("PORT=", port), "FLY_MACHINE_ID=0123456789abcd", "FLY_REGION=local", "FLY_APP_NAME=test", "AUTH_DISABLED=1")
	if len(env) == 0 {
		env = []string{"DIRECTORY_CHECK=false"}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if !testing.Verbose() {
		cmd.Stdout, cmd.Stderr = nil, nil
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, port: port, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		if err == nil {
			resp.Body.Close()
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("backend exited early: %v", p.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("backend never became healthy")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) url(space string) string {
	return fmt.Sprintf("ws://127.0.0.1:%d/api/replicache/websocket/%s", p.port, space)
}

// An acknowledged push survives SIGKILL of the process: after a restart the
// mutation is there and its lastMutationID is kept (the client's re-send is
// skipped, not applied twice).
func TestDurability_AckedPushSurvivesSIGKILL(t *testing.T) {
	db := pgtest.NewDatabase(t)
	p := startProc(t, db, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	c, err := syncclient.Dial(ctx, p.url("list"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m1 := c.Mutation("createTodo", map[string]any{"id": "t1", "text": "survive"})
	m2 := c.Mutation("increment", map[string]any{"key": "counter", "delta": 1})
	ans, err := c.Push(ctx, m1, m2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("acked: %s", ans)
	// Kill at once after the ack, before anything else can happen.
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	c.Kill()

	p2 := startProc(t, db, 0)
	// The same client comes back and re-sends everything it has not seen
	// confirmed: both mutations.
	r, err := syncclient.Dial(ctx, p2.url("list"), syncclient.Options{ClientGroupID: c.ClientGroupID, ClientID: c.ClientID, NextMutationID: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Kill()
	if _, err := r.Push(ctx, m1, m2); err != nil {
		t.Fatal(err)
	}
	if err := r.WaitLMID(ctx, 2); err != nil {
		t.Fatal(err)
	}
	s := r.State()
	if s.Data["todo/t1"] == nil || string(s.Data["counter"]) != "1" {
		t.Fatalf("after restart: %v (counter must be 1: the re-send is skipped)", s.Data)
	}
	if s.LMIDs[c.ClientID] != 2 {
		t.Fatalf("lmid = %d, want 2", s.LMIDs[c.ClientID])
	}
}

// SIGTERM: the batch in flight finishes, sockets close with 1001, exit 0.
func TestShutdown_SIGTERMClosesWith1001AndExitsZero(t *testing.T) {
	p := startProc(t, pgtest.NewDatabase(t), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := syncclient.Dial(ctx, p.url("list"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Mutate(ctx, "increment", map[string]any{"key": "n", "delta": 1}); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c, 30*time.Second)
	if got := c.CloseStatus(); got != 1001 {
		t.Fatalf("close status %d, want 1001", got)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit: %v, want 0", p.err)
		}
	case <-ctx.Done():
		t.Fatal("backend did not exit after SIGTERM")
	}
}

// With the directory on, the backend registers itself, serves only the
// spaces assigned to it, and lets go of a space (4004) as soon as it is moved.
// The periodic recheck is an hour away, so only the directory's NOTIFY can
// tell the backend of the move in time.
func TestDirectory_ServesOnlyAssignedSpacesAndLetsGoOnMove(t *testing.T) {
	db := pgtest.NewDatabase(t)
	const me = "aaaaaaaaaaaaaa"
	p := startProc(t, db, 0, "FLY_MACHINE_ID="+me, "FLY_APP_NAME=spaceport-backend", "DIRECTORY_CHECK=true", "RECHECK_INTERVAL=1h")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dir, err := directory.Open(ctx, pool, directory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dir.CreateSpace(ctx, "mine", "spaceport-backend"); err != nil {
		t.Fatalf("create (the backend must have registered itself): %v", err)
	}
	other := directory.Machine{ID: "bbbbbbbbbbbbbb", App: "spaceport-backend", Region: "local"}
	if err := dir.RegisterMachine(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.CreateSpace(ctx, "theirs", "spaceport-backend"); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.MoveSpace(ctx, "theirs", other.ID); err != nil {
		t.Fatal(err)
	}

	// A stale route to a space of another machine: 4004, and no claim.
	c, err := syncclient.Dial(ctx, p.url("theirs"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c, 30*time.Second)
	if got := c.CloseStatus(); got != 4004 {
		t.Fatalf("space of another machine: close %d, want 4004", got)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM replica_spaces WHERE id = 'theirs'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the backend claimed a space it does not own (%d rows, %v)", n, err)
	}

	// Its own space is served; moving it away closes the client with 4004.
	// The backend listens before the space loads, so the NOTIFY of the move
	// is what it hears (a LISTEN set up after the move would recheck every
	// loaded space instead).
	waitListening(t, pool)
	m, err := syncclient.Dial(ctx, p.url("mine"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Mutate(ctx, "increment", map[string]any{"key": "n", "delta": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.MoveSpace(ctx, "mine", other.ID); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, m, 30*time.Second)
	if got := m.CloseStatus(); got != 4004 {
		t.Fatalf("after move: close %d, want 4004", got)
	}
}

// waitListening waits until a backend's directory listener has run LISTEN (its
// connection has run a query: LISTEN, then pings) on the database of pool.
func waitListening(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1 AND query <> ''`, directory.ListenApplicationName).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the backend never listened to the directory")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitClosed waits up to within for the server to close c.
func waitClosed(t *testing.T, c *syncclient.Client, within time.Duration) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(within):
		t.Fatalf("connection not closed within %s", within)
	}
}
