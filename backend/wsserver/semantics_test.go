package wsserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

func pushAnswer(t *testing.T, c *syncclient.Client, ms ...protocol.Mutation) string {
	t.Helper()
	ans, err := c.Push(testCtx(t), ms...)
	if err != nil {
		t.Fatal(err)
	}
	return string(ans)
}

func TestPush_VersionNotSupported(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{SchemaVersions: []string{"1"}}})
	c := b.dial(t, "s", syncclient.Options{})
	ctx := testCtx(t)

	// Legacy pushVersion 0 and pullVersion 0.
	ans, err := c.Push(ctx) // warm-up: a valid empty push
	if err != nil || !strings.Contains(string(ans), `"pushed"`) {
		t.Fatalf("empty push: %s %v", ans, err)
	}
	ans, err = c.Request(ctx, "v0", json.RawMessage(`{"type":"push","id":"v0","body":{"pushVersion":0,"clientID":"x","mutations":[]}}`))
	if err != nil || !strings.Contains(string(ans), `"response":{"error":"VersionNotSupported","versionType":"push"}`) {
		t.Fatalf("v0 push answered %s %v", ans, err)
	}
	ans, err = c.Request(ctx, "v0p", json.RawMessage(`{"type":"pull","id":"v0p","body":{"pullVersion":0,"clientID":"x","cookie":null}}`))
	if err != nil || !strings.Contains(string(ans), `"body":{"error":"VersionNotSupported","versionType":"pull"}`) {
		t.Fatalf("v0 pull answered %s %v", ans, err)
	}
	// A schema the server does not serve.
	other := b.dial(t, "s", syncclient.Options{SchemaVersion: "2"})
	if p := other.Pokes(); len(p) != 1 || p[0].Refused != "VersionNotSupported" {
		t.Fatalf("unserved schema: first poke %+v, want a VersionNotSupported refusal", p)
	}
	got := pushAnswer(t, other, other.Mutation("increment", map[string]any{"key": "k", "delta": 1}))
	if !strings.Contains(got, `"response":{"error":"VersionNotSupported","versionType":"schema"}`) {
		t.Fatalf("schema 2 push answered %s", got)
	}
	pull, err := other.Pull(ctx)
	if err != nil || !strings.Contains(string(pull), `"versionType":"schema"`) {
		t.Fatalf("schema 2 pull answered %s %v", pull, err)
	}
	if _, ok := c.State().Data["k"]; ok {
		t.Fatal("a refused push changed the space")
	}
}

func TestPush_PermanentErrorsAdvanceTheLastMutationID(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	c := b.dial(t, "s", syncclient.Options{})
	ctx := testCtx(t)
	ms := []protocol.Mutation{
		c.Mutation("noSuchMutator", nil),
		c.Mutation("increment", map[string]any{"key": "n"}), // no delta: bad args
		c.Mutation("panic", nil),
		c.Mutation("putRaw", map[string]any{"key": strings.Repeat("k", 5000), "value": 1}), // key too large
		c.Mutation("increment", map[string]any{"key": "n", "delta": 2}),
	}
	if got := pushAnswer(t, c, ms...); !strings.Contains(got, `"pushed"`) {
		t.Fatalf("push answered %s", got)
	}
	if err := c.WaitLMID(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if got := c.State().Data; len(got) != 1 || string(got["n"]) != "2" {
		t.Fatalf("data = %v, want only n=2", got)
	}
}

func TestPush_GapsStopThePushAndResendsFillThem(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	c := b.dial(t, "s", syncclient.Options{})
	m1 := c.Mutation("increment", map[string]any{"key": "n", "delta": 1})
	m2 := c.Mutation("increment", map[string]any{"key": "n", "delta": 10})
	m3 := c.Mutation("increment", map[string]any{"key": "n", "delta": 100})
	pushAnswer(t, c, m1)
	pushAnswer(t, c, m3) // from the future: id 3 while the server is at 1
	pushAnswer(t, c, m1) // a stale re-send changes nothing
	ctx := testCtx(t)
	if err := c.WaitLMID(ctx, 1); err != nil {
		t.Fatal(err)
	}
	v := b.spacesVersion(t, "s")
	pushAnswer(t, c, m1) // nothing new: no commit, the version stays
	if got := b.spacesVersion(t, "s"); got != v {
		t.Fatalf("a push of already-applied mutations moved the version %d -> %d", v, got)
	}
	pushAnswer(t, c, m2, m3)
	if err := c.WaitLMID(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if got := string(c.State().Data["n"]); got != "111" {
		t.Fatalf("n = %s, want 111", got)
	}
}

func (b *backend) spacesVersion(t *testing.T, spaceID string) int64 {
	t.Helper()
	var v int64
	if err := b.pool.QueryRow(context.Background(), `SELECT version FROM replica_spaces WHERE id = $1`, spaceID).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPush_ClientBoundToAnotherGroupIsRefused(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	a := b.dial(t, "s", syncclient.Options{ClientGroupID: "g1", ClientID: "c1"})
	mustMutate(t, a, "increment", map[string]any{"key": "n", "delta": 1})
	// Another connection claims c1 for group g2.
	x := b.dial(t, "s", syncclient.Options{ClientGroupID: "g2", ClientID: "c1", NextMutationID: 2})
	got := pushAnswer(t, x, x.Mutation("increment", map[string]any{"key": "n", "delta": 1}))
	if !strings.Contains(got, `"code":"client_group_mismatch"`) || !strings.Contains(got, `"retryable":false`) {
		t.Fatalf("push answered %s", got)
	}
	if got := string(a.State().Data["n"]); got != "1" {
		t.Fatalf("n = %s", got)
	}
}

// Replicache's mutation recovery pushes and pulls for an older client group
// on a connection opened for a newer one.
func TestPush_MutationRecoveryForAnotherGroup(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	c := b.dial(t, "s", syncclient.Options{ClientGroupID: "new"})
	old := protocol.Mutation{ID: 1, ClientID: "old-tab", Name: "increment", Args: json.RawMessage(`{"key":"n","delta":7}`)}
	ans, err := c.PushAs(testCtx(t), "old-group", old)
	if err != nil || !strings.Contains(string(ans), `"pushed"`) {
		t.Fatalf("recovery push: %s %v", ans, err)
	}
	if err := c.WaitFor(testCtx(t), func(s *syncclient.State) bool { return string(s.Data["n"]) == "7" }); err != nil {
		t.Fatal(err)
	}
	// The pull for the old group reports its lastMutationID.
	ans, err = c.Request(testCtx(t), "rp", map[string]any{"type": "pull", "id": "rp", "body": map[string]any{
		"pullVersion": 1, "schemaVersion": "1", "profileID": "p", "clientGroupID": "old-group", "cookie": nil}})
	if err != nil || !strings.Contains(string(ans), `"lastMutationIDChanges":{"old-tab":1}`) {
		t.Fatalf("recovery pull answered %s %v", ans, err)
	}
	// And the connection's own cookie chain is untouched by it: the next
	// poke still applies.
	mustMutate(t, c, "increment", map[string]any{"key": "n", "delta": 1})
	noErrors(t, c)
}

func TestPull_ExplicitPullFromAnyCookie(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	c := b.dial(t, "s", syncclient.Options{})
	mustMutate(t, c, "createTodo", map[string]any{"id": "a", "text": "a"})
	ans, err := c.Pull(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Type string `json:"type"`
		Body struct {
			Cookie int64             `json:"cookie"`
			Patch  []json.RawMessage `json:"patch"`
		} `json:"body"`
	}
	if err := json.Unmarshal(ans, &f); err != nil || f.Type != "pulled" || len(f.Body.Patch) != 0 || f.Body.Cookie != b.spacesVersion(t, "s") {
		t.Fatalf("pull at the current cookie answered %s (%v)", ans, err)
	}
	// The next poke's base is the pulled cookie.
	mustMutate(t, c, "createTodo", map[string]any{"id": "b", "text": "b"})
	noErrors(t, c)
}

func TestGC_ForgottenClientGroupGetsClientStateNotFound(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{
		GracePeriod: -1, ClientGroupTTL: time.Minute,
	}})
	c := b.dial(t, "s", syncclient.Options{})
	mustMutate(t, c, "increment", map[string]any{"key": "n", "delta": 1})
	state, group, id := c.State(), c.ClientGroupID, c.ClientID
	c.Close()
	b.waitUnloaded(t)
	storetest.Age(t, b.pool, "s", time.Hour) // older than the TTL

	// Reloading the space collects garbage before it runs any push.
	r := b.dial(t, "s", syncclient.Options{ClientGroupID: group, ClientID: id, State: state})
	if p := r.Pokes(); len(p) != 1 || p[0].Refused != "ClientStateNotFound" {
		t.Fatalf("forgotten group: first poke %+v, want a ClientStateNotFound refusal", p)
	}
	got := pushAnswer(t, r, r.Mutation("increment", map[string]any{"key": "n", "delta": 1}))
	if !strings.Contains(got, `"response":{"error":"ClientStateNotFound"}`) {
		t.Fatalf("push of a forgotten group answered %s", got)
	}
	pull, err := r.Pull(testCtx(t))
	if err != nil || !strings.Contains(string(pull), `ClientStateNotFound`) {
		t.Fatalf("pull of a forgotten group answered %s %v", pull, err)
	}
}

func (b *backend) waitUnloaded(t *testing.T) {
	t.Helper()
	waitUntil(t, "the space unloads", func() bool { return b.spaces.Loaded() == 0 })
}

func TestGC_CookieBelowTheTombstoneHorizonGetsAFullResync(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{space: space.Config{
		GracePeriod: -1, TombstoneTTL: time.Minute,
	}})
	c := b.dial(t, "s", syncclient.Options{})
	mustMutate(t, c, "createTodo", map[string]any{"id": "a", "text": "a"})
	mustMutate(t, c, "createTodo", map[string]any{"id": "b", "text": "b"})
	before := c.State() // a client that will miss the delete
	mustMutate(t, c, "deleteTodo", "a")
	after := c.State() // a client that saw it
	c.Close()
	b.waitUnloaded(t)
	storetest.Age(t, b.pool, "s", time.Hour) // the tombstone is older than the TTL

	old := b.dial(t, "s", syncclient.Options{State: before})
	if p := old.Pokes()[0]; !p.Cleared {
		t.Fatalf("cookie %s below the horizon got a diff: %+v", before.Cookie, p)
	}
	if _, ok := old.State().Data["todo/a"]; ok {
		t.Fatal("deleted todo survived the full resync")
	}
	cur := b.dial(t, "s", syncclient.Options{State: after})
	if p := cur.Pokes()[0]; p.Cleared || p.Ops != 0 {
		t.Fatalf("cookie at the horizon got %+v, want an empty diff", p)
	}
	var tombstones int
	if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM replica_entries WHERE deleted`).Scan(&tombstones); err != nil || tombstones != 0 {
		t.Fatalf("tombstones left: %d %v", tombstones, err)
	}
}

// A cookie newer than the space (the database was restored from a backup)
// cannot be answered with a lower cookie: Replicache would throw on it. The
// client is told ClientStateNotFound and starts afresh.
func TestCookie_FromTheFutureGetsClientStateNotFound(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{})
	c := b.dial(t, "s", syncclient.Options{})
	mustMutate(t, c, "createTodo", map[string]any{"id": "a", "text": "a"})
	s := c.State()
	s.Cookie = json.RawMessage("999")
	f := b.dial(t, "s", syncclient.Options{State: s})
	if p := f.Pokes(); len(p) != 1 || p[0].Refused != "ClientStateNotFound" {
		t.Fatalf("future cookie got %+v", p)
	}
	pull, err := f.Pull(testCtx(t))
	if err != nil || !strings.Contains(string(pull), `"body":{"error":"ClientStateNotFound"}`) {
		t.Fatalf("pull from the future answered %s %v", pull, err)
	}
}

// Fencing: a second machine loading the space takes it over; the first can
// never commit again and closes its connections with 4004.
func TestFencing_OnlyTheNewestOwnerCommits(t *testing.T) {
	db := pgtest.NewDatabase(t)
	b1 := startBackend(t, db, "m1", backendOpts{})
	b2 := startBackend(t, db, "m2", backendOpts{})
	c1 := b1.dial(t, "s", syncclient.Options{})
	mustMutate(t, c1, "increment", map[string]any{"key": "n", "delta": 1})

	c2 := b2.dial(t, "s", syncclient.Options{}) // m2 claims the space
	ctx := testCtx(t)
	m := c1.Mutation("increment", map[string]any{"key": "n", "delta": 100})
	if ans, err := c1.Push(ctx, m); err == nil {
		t.Fatalf("push on the fenced machine was answered: %s", ans)
	}
	waitClosed(t, c1)
	if got := c1.CloseStatus(); got != 4004 {
		t.Fatalf("fenced machine closed with %d, want 4004", got)
	}
	mustMutate(t, c2, "increment", map[string]any{"key": "n", "delta": 10})
	if got := string(c2.State().Data["n"]); got != "11" {
		t.Fatalf("n = %s, want 11 (the fenced push must not land)", got)
	}
	// Postgres agrees: the fenced mutation is not there, not even as c1's
	// lastMutationID.
	if got, lmid := storetest.Value(t, b2.pool, "s", "n"), storetest.LMID(t, b2.pool, "s", c1.ClientID); got != "11" || lmid != 1 {
		t.Fatalf("Postgres holds n = %s and c1's lastMutationID %d, want 11 and 1", got, lmid)
	}
	var owner string
	var epoch int64
	if err := b2.pool.QueryRow(ctx, `SELECT owner, epoch FROM replica_spaces WHERE id = 's'`).Scan(&owner, &epoch); err != nil || owner != "m2" || epoch != 2 {
		t.Fatalf("owner %s epoch %d %v", owner, epoch, err)
	}
}

// Loading a big space (held up here by a lock on its row) does not hold up
// any other space.
func TestLoad_ABigSpaceDoesNotBlockOthers(t *testing.T) {
	db := pgtest.NewDatabase(t)
	b := startBackend(t, db, "m1", backendOpts{})
	ctx := testCtx(t)
	if _, err := b.store.Claim(ctx, "big", "seed"); err != nil {
		t.Fatal(err)
	}
	batch := &store.Batch{Version: 1}
	for i := range 100_000 {
		batch.Entries = append(batch.Entries, store.Entry{Key: fmt.Sprintf("todo/%06d", i), Value: []byte(`{"text":"x"}`)})
	}
	var epoch int64
	if err := b.pool.QueryRow(ctx, `SELECT epoch FROM replica_spaces WHERE id='big'`).Scan(&epoch); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Commit(ctx, "big", epoch, batch); err != nil {
		t.Fatal(err)
	}

	lock := pgtest.HoldLock(t, db, `SELECT 1 FROM replica_spaces WHERE id = 'big' FOR UPDATE`)
	bigDone := make(chan *syncclient.Client, 1)
	go func() {
		c, err := syncclient.Dial(ctx, b.url("big"), syncclient.Options{})
		if err != nil {
			t.Error(err)
			bigDone <- nil
			return
		}
		_ = c.WaitPokes(ctx, 1)
		bigDone <- c
	}()
	lock.WaitBlocked(t) // the big space's load waits for its row
	small := b.dial(t, "small", syncclient.Options{})
	mustMutate(t, small, "increment", map[string]any{"key": "n", "delta": 1})
	select {
	case <-bigDone:
		t.Fatal("the big space loaded while its row was locked")
	default:
	}
	lock.Release()
	big := <-bigDone
	if big == nil {
		t.FailNow()
	}
	defer big.Kill()
	if got := len(big.State().Data); got != 100_000 {
		t.Fatalf("big space has %d entries at the client, want 100000", got)
	}
}
