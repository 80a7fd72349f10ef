package wsserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
)

// serverFrame is what these tests read of a server frame.
type serverFrame struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Body struct {
		Cookie json.RawMessage `json:"cookie"`
	} `json:"body"`
	raw []byte
}

// readUntil reads frames off ws up to and including the first of type typ
// (and id, if not empty), and returns them all.
func readUntil(t *testing.T, ctx context.Context, ws *websocket.Conn, typ, id string) []serverFrame {
	t.Helper()
	var out []serverFrame
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("reading until a %s frame: %v (read %d frames)", typ, err, len(out))
		}
		var f serverFrame
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatalf("server frame %s: %v", data, err)
		}
		f.raw = data
		out = append(out, f)
		if f.Type == typ && (id == "" || f.ID == id) {
			return out
		}
	}
}

// incrementPush is a push frame of mutation id of client c (group g, as in
// hello) incrementing n.
func incrementPush(pushID string, id int) []byte {
	return fmt.Appendf(nil, `{"type":"push","id":%q,"body":{"pushVersion":1,"schemaVersion":"1","clientGroupID":"g",`+
		`"mutations":[{"id":%d,"clientID":"c","name":"increment","args":{"key":"n","delta":1},"timestamp":1}]}}`, pushID, id)
}

// `pushed` is sent only after the batch holding the push committed: while
// the commit waits for a row lock the test holds, the connection gets no
// `pushed` (nor a poke of the new version), even for a frame that the
// server answers after the push (a ping, whose pong follows anything
// queued before it on the connection); once the lock goes, the `pushed`
// comes and the mutation is in Postgres.
func TestDurability_PushedOnlyAfterCommit(t *testing.T) {
	db := pgtest.NewDatabase(t)
	b := startBackend(t, db, "m1", backendOpts{})
	ctx := testCtx(t)
	ws, _, err := websocket.Dial(ctx, b.url("s"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	send := func(frame []byte) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, frame); err != nil {
			t.Fatal(err)
		}
	}
	send([]byte(hello))
	readUntil(t, ctx, ws, "poke", "") // welcome, then the session's first poke
	send(incrementPush("p1", 1))
	readUntil(t, ctx, ws, "pushed", "p1")

	lock := pgtest.HoldLock(t, db, `SELECT 1 FROM replica_spaces WHERE id = $1 FOR UPDATE`, "s")
	send(incrementPush("p2", 2))
	lock.WaitBlocked(t) // the batch holding p2 is committing, and waits for the row
	send([]byte(`{"type":"ping"}`))
	for _, f := range readUntil(t, ctx, ws, "pong", "") {
		if f.Type == "pushed" || (f.Type == "poke" && string(f.Body.Cookie) == "2") {
			t.Fatalf("sent while the commit waits for the lock: %s", f.raw)
		}
	}
	if got := storetest.Value(t, b.pool, "s", "n"); got != "1" {
		t.Fatalf("n = %s in Postgres while the commit waits, want 1", got)
	}

	lock.Release()
	readUntil(t, ctx, ws, "pushed", "p2")
	if got, lmid := storetest.Value(t, b.pool, "s", "n"), storetest.LMID(t, b.pool, "s", "c"); got != "2" || lmid != 2 {
		t.Fatalf("after the ack Postgres holds n = %s and lastMutationID %d, want 2 and 2", got, lmid)
	}
}
