package wsserver_test

import (
	"strings"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
)

// Each limit at its edge: the last allowed passes, the first one past is
// refused with the documented answer, and nothing else is disturbed.

func TestLimit_ConnectionsPerSpace(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{MaxPeers: 2}})
	a := b.dial(t, "s", syncclient.Options{})
	b.dial(t, "s", syncclient.Options{})
	if got := dialClosed(t, b.url("s"), syncclient.Options{}); got != 4029 {
		t.Fatalf("third connection closed with %d, want 4029", got)
	}
	b.dial(t, "other", syncclient.Options{}) // other spaces are not affected
	mustMutate(t, a, "increment", map[string]any{"key": "n", "delta": 1})
}

func TestLimit_SpacesPerMachine(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{MaxSpaces: 2}})
	b.dial(t, "s1", syncclient.Options{})
	b.dial(t, "s2", syncclient.Options{})
	if got := dialClosed(t, b.url("s3"), syncclient.Options{}); got != 4029 {
		t.Fatalf("third space closed with %d, want 4029", got)
	}
	b.dial(t, "s1", syncclient.Options{}) // a loaded space still takes clients
}

func TestLimit_PushRate(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{ws: wsserver.Config{PushRate: 1, PushBurst: 5}})
	c := b.dial(t, "s", syncclient.Options{})
	ctx := testCtx(t)
	for i := range 5 { // the burst passes
		if _, err := c.Push(ctx, c.Mutation("increment", map[string]any{"key": "n", "delta": 1})); err != nil {
			t.Fatalf("push %d within the burst: %v", i, err)
		}
	}
	_ = c.SendJSON(ctx, map[string]any{"type": "push", "id": "over", "body": map[string]any{
		"pushVersion": 1, "schemaVersion": "1", "clientGroupID": c.ClientGroupID, "mutations": []any{}}})
	waitClosed(t, c)
	if got := c.CloseStatus(); got != 4029 {
		t.Fatalf("flooding client closed with %d, want 4029", got)
	}
	// The reason names the wait, as clients parse it.
	if r := closeReason(c); !strings.Contains(r, "retry after 1s") {
		t.Fatalf("reason %q", r)
	}
}

func closeReason(c *syncclient.Client) string { return c.CloseReason() }

func TestLimit_MutationsPerPush(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{MaxPushMutations: 3}})
	c := b.dial(t, "s", syncclient.Options{})
	var ms []protocol.Mutation
	for range 5 {
		ms = append(ms, c.Mutation("increment", map[string]any{"key": "n", "delta": 1}))
	}
	pushAnswer(t, c, ms...)
	if err := c.WaitLMID(testCtx(t), 3); err != nil {
		t.Fatal(err)
	}
	if got := string(c.State().Data["n"]); got != "3" {
		t.Fatalf("n = %s after one push of 5 with a limit of 3", got)
	}
	pushAnswer(t, c, ms...) // the rest come again
	if err := c.WaitLMID(testCtx(t), 5); err != nil {
		t.Fatal(err)
	}
}

func TestLimit_KeyAndValueSizes(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{MaxKeyBytes: 8, MaxValueBytes: 16}})
	c := b.dial(t, "s", syncclient.Options{})
	mustMutate(t, c, "putRaw", map[string]any{"key": "12345678", "value": "12345678901234"}) // 8-byte key, 16-byte value: allowed
	mustMutate(t, c, "putRaw", map[string]any{"key": "123456789", "value": 1})               // 9-byte key: refused
	mustMutate(t, c, "putRaw", map[string]any{"key": "k", "value": "123456789012345"})       // 17-byte value: refused
	if got := keys(c.State()); len(got) != 1 || got[0] != "12345678" {
		t.Fatalf("keys %v, want only the one within limits", got)
	}
}
