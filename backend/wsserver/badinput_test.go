package wsserver_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
)

const hello = `{"type":"hello","clientGroupID":"g","clientID":"c","cookie":null,"schemaVersion":"1"}`

// Every malformed input closes only its own connection, with the documented
// code and a reason naming the problem; the process, the space and the other
// clients carry on untouched. The hello timeout is far longer than the test
// (a frame the server ignored would not be closed by it) except for the one
// case about it.
func TestBadInput_ClosesOnlyThatConnection(t *testing.T) {
	db := pgtest.NewDatabase(t)
	b := startBackend(t, db, "m1", backendOpts{ws: wsserver.Config{MaxFrameBytes: 64 << 10, HelloTimeout: time.Hour}})
	impatient := startBackend(t, db, "m2", backendOpts{ws: wsserver.Config{HelloTimeout: 300 * time.Millisecond}})
	good := b.dial(t, "s", syncclient.Options{})
	mustMutate(t, good, "increment", map[string]any{"key": "n", "delta": 1})
	version := b.spacesVersion(t, "s")

	tests := []struct {
		name   string
		srv    *backend
		frames []string // sent in order; "" = a binary frame
		code   websocket.StatusCode
		reason string
	}{
		{"garbage", b, []string{hello, "garbage"}, 4000, "invalid frame: not a JSON object"},
		{"array", b, []string{hello, "[1]"}, 4000, "invalid frame: not a JSON object"},
		{"truncated JSON", b, []string{hello, `{"type":"push","id":`}, 4000, "invalid JSON: syntax error at offset 20"},
		{"binary frame", b, []string{hello, ""}, 4000, "frames must be JSON text"},
		{"unknown type", b, []string{hello, `{"type":"teleport"}`}, 4000, `unknown frame type "teleport"`},
		{"missing field", b, []string{hello, `{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"1","clientGroupID":"g"}}`}, 4000, "push: missing field: body.mutations"},
		{"bad mutation id", b, []string{hello, `{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"1","clientGroupID":"g","mutations":[{"id":-3,"clientID":"c","name":"increment","args":{}}]}}`}, 4000, "push: mutation 0: id must be a positive integer"},
		{"push before hello", b, []string{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"1","clientGroupID":"g","mutations":[]}}`}, 4000, "push before hello"},
		{"pull before hello", b, []string{`{"type":"pull","id":"1","body":{"pullVersion":1,"schemaVersion":"1","clientGroupID":"g","cookie":null}}`}, 4000, "pull before hello"},
		{"duplicate hello", b, []string{hello, hello}, 4000, "duplicate hello"},
		{"huge frame", b, []string{hello, `{"type":"ping","pad":"` + strings.Repeat("x", 70<<10) + `"}`}, 1009, "read limited at 65537 bytes"},
		{"no hello", impatient, nil, 4000, "no hello within 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			c, err := syncclient.Dial(ctx, tt.srv.url("s"), syncclient.Options{NoHello: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Kill()
			for _, f := range tt.frames {
				if f == "" {
					err = c.SendBinary(ctx, []byte{1, 2, 3})
				} else {
					err = c.SendRaw(ctx, []byte(f))
				}
				if err != nil {
					break // the server may already have closed
				}
			}
			waitClosed(t, c)
			if got, reason := c.CloseStatus(), c.CloseReason(); got != tt.code || reason != tt.reason {
				t.Fatalf("closed with %d %q, want %d %q", got, reason, tt.code, tt.reason)
			}
		})
	}

	// The good client never noticed, and the space did not change.
	mustMutate(t, good, "increment", map[string]any{"key": "n", "delta": 1})
	if got := string(good.State().Data["n"]); got != "2" {
		t.Fatalf("n = %s, want 2", got)
	}
	if got := b.spacesVersion(t, "s"); got != version+1 {
		t.Fatalf("version %d, want %d: bad input changed the space", got, version+1)
	}
	noErrors(t, good)
}

func TestBadInput_CloseReasonNamesTheProblem(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	ctx := testCtx(t)
	ws, _, err := websocket.Dial(ctx, b.url("s"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"hello","clientID":"c"}`)); err != nil {
		t.Fatal(err)
	}
	_, _, err = ws.Read(ctx)
	var ce websocket.CloseError
	if !errorsAs(err, &ce) || ce.Code != 4000 || ce.Reason != "hello: missing field: clientGroupID" {
		t.Fatalf("close = %v", err)
	}
}

func TestBadInput_InvalidSpaceIDIsRefusedBeforeUpgrade(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	for _, id := range []string{"has.dot", strings.Repeat("x", 65), "sp%20ace"} {
		resp, err := http.Get(b.http.URL + "/api/replicache/websocket/" + id)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: status %d, want 400", id, resp.StatusCode)
		}
	}
}

// A client that stops reading is dropped (4008) once a write to it blocks
// past the write timeout; the other clients keep their pace.
func TestSlowClient_IsDroppedWithoutDelayingOthers(t *testing.T) {
	// The write timeout is long enough for the good client to read a 900 KiB
	// poke on a busy machine, and short enough to drop the slow one soon.
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{ws: wsserver.Config{WriteTimeout: 5 * time.Second}})
	good := b.dial(t, "s", syncclient.Options{})
	ctx := testCtx(t)

	// A raw client that says hello and then never reads, with a small
	// receive buffer (which also turns off the kernel's buffer autotuning),
	// so that the server's writes to it block after a few megabytes.
	dialer := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	httpc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	slow, _, err := websocket.Dial(ctx, b.url("s"), &websocket.DialOptions{HTTPClient: httpc})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.CloseNow()
	if err := slow.Write(ctx, websocket.MessageText, []byte(hello)); err != nil {
		t.Fatal(err)
	}
	// Big values make every poke to it large, so kernel buffers fill.
	big := strings.Repeat("x", 900<<10)
	deadline := time.Now().Add(60 * time.Second)
	before := b.closes(t, "4008") // the counter is the process's: other tests may have closed with 4008
	for i := 0; b.closes(t, "4008") == before; i++ {
		if time.Now().After(deadline) {
			t.Fatal("slow client never dropped")
		}
		mustMutate(t, good, "putRaw", map[string]any{"key": "big" + string(rune('a'+i%26)), "value": big})
	}
	mustMutate(t, good, "increment", map[string]any{"key": "n", "delta": 1})
	noErrors(t, good)
}

// closes reads the server's close counter for a code from /metrics.
func (b *backend) closes(t *testing.T, code string) string {
	t.Helper()
	resp, err := http.Get(b.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	prefix := `spaceport_connection_closes_total{code="` + code + `"} `
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return v
		}
	}
	return "0"
}

// Shutdown finishes what is in flight and closes every connection with 1001.
func TestShutdown_ClosesWithGoingAway(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	c := b.dial(t, "s", syncclient.Options{})
	idle, err := syncclient.Dial(testCtx(t), b.url("other"), syncclient.Options{NoHello: true})
	if err != nil {
		t.Fatal(err)
	}
	mustMutate(t, c, "increment", map[string]any{"key": "n", "delta": 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*syncclient.Client{c, idle} {
		waitClosed(t, cl)
		if got := cl.CloseStatus(); got != websocket.StatusCode(protocol.CloseGoingAway) {
			t.Fatalf("closed with %d, want 1001", got)
		}
	}
}

// A client that vanished without closing (no FIN: a phone leaving the
// network) is found by a ping it never answers, and dropped; a live client
// answers its pings and stays. The ping timeout is generous, so that a live
// client on a busy machine answers in time.
func TestHalfOpenConnection_IsDroppedAfterAnUnansweredPing(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{ws: wsserver.Config{PingInterval: 100 * time.Millisecond, PingTimeout: 5 * time.Second}})
	ctx := testCtx(t)
	// coder/websocket answers pings only while Read runs: this one never reads.
	ghost, _, err := websocket.Dial(ctx, b.url("s"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ghost.CloseNow()
	if err := ghost.Write(ctx, websocket.MessageText, []byte(hello)); err != nil {
		t.Fatal(err)
	}
	// A live client on the same space answers its pings and stays.
	var pings atomic.Int64
	live := b.dial(t, "s", syncclient.Options{OnPing: func() { pings.Add(1) }})
	waitUntil(t, "the ghost is dropped", func() bool { return b.srv.Connections() == 1 })
	// The server pings again only once the previous ping was answered: a
	// third ping means the live client passed two.
	start := pings.Load()
	waitUntil(t, "the live client is pinged three more times", func() bool { return pings.Load() >= start+3 })
	mustMutate(t, live, "increment", map[string]any{"key": "n", "delta": 1})
	if got := b.srv.Connections(); got != 1 {
		t.Fatalf("%d connections, want the live client kept", got)
	}
}
