package space_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
)

// lockSpaceRow holds the row lock every commit of spaceID must take (its
// replica_spaces row, where the epoch fence is), so that the space's next
// commit waits until the test releases it.
func (e *engine) lockSpaceRow(t *testing.T, spaceID string) *pgtest.Lock {
	t.Helper()
	return pgtest.HoldLock(t, e.url, `SELECT 1 FROM replica_spaces WHERE id = $1 FOR UPDATE`, spaceID)
}

func waitNotified(t *testing.T, p *peer) {
	t.Helper()
	select {
	case <-p.notified:
	case <-time.After(waitTimeout):
		t.Fatal("peer never notified")
	}
}

// A push is answered only once the batch holding it committed: while its
// commit waits for a row lock, there is no answer, no notification and no
// new version in memory; once the lock goes, all three come, and the
// mutation is in Postgres.
func TestWriter_AcksOnlyAfterCommit(t *testing.T) {
	e := newEngine(t, space.Config{}, nil)
	s, p := e.join(t, "s")
	c := newClient("c1")
	mustPush(t, s, c.group, c.increment("n"))
	waitNotified(t, p)

	lock := e.lockSpaceRow(t, "s")
	reply := push(t, s, c.group, c.increment("n"))
	lock.WaitBlocked(t) // the writer is inside the commit, waiting for the row
	select {
	case f := <-reply:
		t.Fatalf("push answered while its commit waits for the lock: %s", f)
	case <-p.notified:
		t.Fatal("peers notified while the commit waits for the lock")
	default:
	}
	if v := s.Version(); v != 1 {
		t.Fatalf("version %d in memory while the commit waits, want 1", v)
	}
	if _, _, ok := pokeFrom(t, s, protocol.VersionCookie(1), c.group); ok {
		t.Fatal("a poke offers the uncommitted batch")
	}
	if got := e.value(t, "s", "n"); got != "1" {
		t.Fatalf("n = %s in Postgres while the commit waits, want 1", got)
	}

	lock.Release()
	if got := answer(t, reply); !isPushed(got) {
		t.Fatalf("push answered %s after the commit", got)
	}
	waitNotified(t, p)
	if got, lmid := e.value(t, "s", "n"), e.lmid(t, "s", c.id); got != "2" || lmid != 2 {
		t.Fatalf("after the ack Postgres holds n = %s, lastMutationID %d; want 2 and 2", got, lmid)
	}
	if v := s.Version(); v != 2 {
		t.Fatalf("version %d after the commit, want 2", v)
	}
}

// The same across spaces: a push to a space whose commit is held is not
// answered while it is held, whatever happens to the other space's push
// (a group commit across spaces may hold it too); once released both are
// answered and in Postgres.
func TestWriter_AcksOnlyAfterCommitAcrossSpaces(t *testing.T) {
	e := newEngine(t, space.Config{}, nil)
	a, _ := e.join(t, "a")
	b, _ := e.join(t, "b")
	c := newClient("c1")
	d := newClient("c2")
	mustPush(t, a, c.group, c.increment("n"))
	mustPush(t, b, d.group, d.increment("n"))

	lock := e.lockSpaceRow(t, "a")
	replyA := push(t, a, c.group, c.increment("n"))
	replyB := push(t, b, d.group, d.increment("n"))
	lock.WaitBlocked(t)
	select {
	case f := <-replyA:
		t.Fatalf("push to a answered while a's commit waits for the lock: %s", f)
	default:
	}
	if got := e.value(t, "a", "n"); got != "1" {
		t.Fatalf("a's n = %s in Postgres while its commit waits, want 1", got)
	}
	lock.Release()
	for name, reply := range map[string]<-chan []byte{"a": replyA, "b": replyB} {
		if got := answer(t, reply); !isPushed(got) {
			t.Fatalf("push to %s answered %s", name, got)
		}
		if got := e.value(t, name, "n"); got != "2" {
			t.Fatalf("after its ack, %s's n = %s in Postgres, want 2", name, got)
		}
	}
}

// A commit that fails (here: it waits for a lock past CommitTimeout) answers
// its pushes with a retryable storage error and leaves memory as Postgres
// is; the re-sent push then lands, once.
func TestWriter_FailedCommitAnswersRetryAndChangesNothing(t *testing.T) {
	e := newEngine(t, space.Config{CommitTimeout: time.Second}, nil)
	s, _ := e.join(t, "s")
	c := newClient("c1")
	mustPush(t, s, c.group, c.increment("n"))

	lock := e.lockSpaceRow(t, "s")
	m := c.increment("n")
	reply := push(t, s, c.group, m)
	got := answer(t, reply) // the lock is held until the commit gave up
	lock.Release()
	var f protocol.ErrorFrame
	if err := json.Unmarshal([]byte(got), &f); err != nil || f.Type != "error" || f.Code != protocol.ErrCodeStorage || !f.Retryable {
		t.Fatalf("failed commit answered %s, want a retryable storage error", got)
	}
	if v := s.Version(); v != 1 {
		t.Fatalf("version %d in memory after a failed commit, want 1", v)
	}
	if _, _, ok := pokeFrom(t, s, protocol.VersionCookie(1), c.group); ok {
		t.Fatal("a poke offers the batch that failed to commit")
	}
	mustPush(t, s, c.group, m)
	mustPush(t, s, c.group, m) // a duplicate re-send is skipped
	if got, lmid := e.value(t, "s", "n"), e.lmid(t, "s", c.id); got != "2" || lmid != 2 {
		t.Fatalf("after the re-send Postgres holds n = %s, lastMutationID %d; want 2 and 2", got, lmid)
	}
}

// The single writer: pushes from many goroutines run one mutation at a time,
// each client's in its order, each mutation once however often it is
// re-sent; the count in Postgres is exact.
func TestWriter_RunsMutationsOneAtATimeInOrderAndOnce(t *testing.T) {
	const clients, each = 8, 25
	var running, overlaps, runs atomic.Int64
	var mu sync.Mutex
	ran := map[string][]int64{} // client -> mutation IDs in the order they ran
	record := func(tx mutator.Tx, args json.RawMessage) error {
		if running.Add(1) != 1 {
			overlaps.Add(1)
		}
		defer running.Add(-1)
		runs.Add(1)
		id, err := mutator.DecodeArgs[int64](args)
		if err != nil {
			return err
		}
		caller := tx.Caller().ClientID
		mu.Lock()
		ran[caller] = append(ran[caller], id)
		mu.Unlock()
		var n int64
		if v, ok := tx.Get("count"); ok {
			if err := json.Unmarshal(v, &n); err != nil {
				return err
			}
		}
		return tx.Put("count", n+1)
	}
	e := newEngine(t, space.Config{}, map[string]mutator.Func{"record": record})
	s, _ := e.join(t, "s")

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			c := newClient(fmt.Sprint("c", i))
			var sent []protocol.Mutation
			for range each {
				m := c.mutation("record", c.next)
				sent = append(sent, m)
				// Every push re-sends the client's last few mutations, as
				// Replicache re-sends what it has not seen confirmed.
				batch := sent[max(0, len(sent)-3):]
				if err := pushAndWait(s, c.group, batch); err != nil {
					errs <- fmt.Errorf("client %s: %w", c.id, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := overlaps.Load(); n > 0 {
		t.Fatalf("%d mutations ran while another was running", n)
	}
	if n := runs.Load(); n != clients*each {
		t.Fatalf("%d mutations ran, want %d (each once)", n, clients*each)
	}
	for id, ids := range ran {
		for k, got := range ids {
			if got != int64(k+1) {
				t.Fatalf("client %s ran its mutations in the order %v", id, ids)
			}
		}
		if lmid := e.lmid(t, "s", id); lmid != each {
			t.Fatalf("client %s: last_mutation_id %d in Postgres, want %d", id, lmid, each)
		}
	}
	if got := e.value(t, "s", "count"); got != fmt.Sprint(clients*each) {
		t.Fatalf("count = %s in Postgres, want %d", got, clients*each)
	}
}

// pushAndWait pushes ms and waits for a plain `pushed`, from any goroutine.
func pushAndWait(s *space.Space, group string, ms []protocol.Mutation) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	reply, err := queuePush(ctx, s, group, ms...)
	if err != nil {
		return err
	}
	select {
	case f := <-reply:
		if !isPushed(string(f)) {
			return fmt.Errorf("push answered %s", f)
		}
		return nil
	case <-ctx.Done():
		return errors.New("push never answered")
	}
}

// What a mutator sees and what of it is kept: its own writes, then the
// earlier mutations' of the same batch, then the space's; Scan in key order
// with all of those; a failed or panicking mutation's writes are dropped
// (its lastMutationID still advances); the limits are errors to it; a Put
// of the value already there is no change.
func TestTx_ReadsItsWritesAndKeepsOnlyThoseOfMutationsThatSucceeded(t *testing.T) {
	var mu sync.Mutex
	var problems []string
	expect := func(what string, ok bool) {
		if !ok {
			mu.Lock()
			problems = append(problems, what)
			mu.Unlock()
		}
	}
	get := func(tx mutator.Tx, key string) string {
		v, ok := tx.Get(key)
		if !ok {
			return "<none>"
		}
		return string(v)
	}
	scan := func(tx mutator.Tx, prefix string) string {
		var out []string
		for k, v := range tx.Scan(prefix) {
			out = append(out, k+"="+string(v))
		}
		return strings.Join(out, " ")
	}
	e := newEngine(t, space.Config{MaxKeyBytes: 8, MaxValueBytes: 16}, map[string]mutator.Func{
		"own": func(tx mutator.Tx, _ json.RawMessage) error {
			expect("own write read back", tx.Put("s/b", 2) == nil && get(tx, "s/b") == "2")
			expect("Has sees the committed key", tx.Has("s/a"))
			expect("Del of a committed key", tx.Del("s/a") && !tx.Has("s/a") && get(tx, "s/a") == "<none>")
			expect("Del of a missing key", !tx.Del("s/zz"))
			expect("Put of a raw value", tx.Put("s/c", json.RawMessage(` { "x" : 1 } `)) == nil && get(tx, "s/c") == `{"x":1}`)
			expect("Scan holds own writes, in order, without the deleted: "+scan(tx, "s/"), scan(tx, "s/") == `s/b=2 s/c={"x":1}`)
			return nil
		},
		"later": func(tx mutator.Tx, _ json.RawMessage) error {
			// The same batch, after "own": its writes are visible.
			expect("the batch's earlier writes: "+scan(tx, "s/"), scan(tx, "s/") == `s/b=2 s/c={"x":1}` && !tx.Has("s/a"))
			return nil
		},
		"fails": func(tx mutator.Tx, _ json.RawMessage) error {
			_ = tx.Put("s/f", 1)
			return mutator.ErrForbidden
		},
		"panics": func(tx mutator.Tx, _ json.RawMessage) error {
			_ = tx.Put("s/p", 1)
			panic("boom")
		},
		"limits": func(tx mutator.Tx, _ json.RawMessage) error {
			expect("key too large", errors.Is(tx.Put("123456789", 1), mutator.ErrKeyTooLarge))
			expect("key with NUL", errors.Is(tx.Put("a\x00b", 1), mutator.ErrInvalidKey))
			expect("key not UTF-8", errors.Is(tx.Put("a\xffb", 1), mutator.ErrInvalidKey))
			expect("invalid JSON", errors.Is(tx.Put("k", json.RawMessage(`{nope`)), mutator.ErrInvalidJSON))
			expect("value too large", errors.Is(tx.Put("k", "12345678901234567"), mutator.ErrValueTooLarge))
			expect("limits themselves", tx.Put("12345678", "12345678901234") == nil)
			return nil
		},
	})
	s, _ := e.join(t, "s")
	c := newClient("c1")
	mustPush(t, s, c.group, c.set("s/a", 1))
	mustPush(t, s, c.group, c.mutation("own", nil), c.mutation("later", nil), c.mutation("fails", nil), c.mutation("panics", nil), c.mutation("limits", nil))
	for _, p := range problems {
		t.Errorf("mutator saw: %s", p)
	}
	for key, want := range map[string]string{"s/a": "", "s/b": "2", "s/c": `{"x":1}`, "s/f": "", "s/p": "", "12345678": `"12345678901234"`, "k": ""} {
		if got := e.value(t, "s", key); got != want {
			t.Errorf("%s = %q in Postgres, want %q", key, got, want)
		}
	}
	if lmid := e.lmid(t, "s", c.id); lmid != 6 {
		t.Fatalf("last_mutation_id %d, want 6: failed mutations advance it too", lmid)
	}
	// Setting a value already there writes nothing: the poke carries only
	// the lastMutationID.
	v := s.Version()
	mustPush(t, s, c.group, c.set("s/b", 2))
	p, _, ok := pokeFrom(t, s, protocol.VersionCookie(v), c.group)
	if !ok || len(p.Body.Patch) != 0 || p.Body.LMIDs[c.id] != 7 {
		t.Fatalf("poke after an unchanged Put: %+v (ok %v), want no patch and lastMutationID 7", p, ok)
	}
}

// A space another machine claimed: the next commit is fenced, the push is
// not answered, the peers are closed with 4004 and nothing lands in
// Postgres. Joined again, the space loads anew and takes the re-sent push.
func TestWriter_FencedCommitClosesPeersWith4004(t *testing.T) {
	e := newEngine(t, space.Config{}, nil)
	s, p := e.join(t, "s")
	c := newClient("c1")
	mustPush(t, s, c.group, c.increment("n"))

	if _, err := e.store.Claim(context.Background(), "s", "another machine"); err != nil {
		t.Fatal(err)
	}
	m := c.increment("n")
	reply := push(t, s, c.group, m)
	if got := p.waitClosed(t); got.code != protocol.CloseMoved || got.reason != "space moved" {
		t.Fatalf("fenced space closed its peer with %d %q, want 4004 \"space moved\"", got.code, got.reason)
	}
	e.m.Leave(s, p)
	e.waitUnloaded(t) // the writer exited: it will never answer
	select {
	case f := <-reply:
		t.Fatalf("a fenced push was answered: %s", f)
	default:
	}
	if got, lmid := e.value(t, "s", "n"), e.lmid(t, "s", c.id); got != "1" || lmid != 1 {
		t.Fatalf("after the fenced commit Postgres holds n = %s, lastMutationID %d; want 1 and 1", got, lmid)
	}

	s2, _ := e.join(t, "s")
	mustPush(t, s2, c.group, m)
	if got := e.value(t, "s", "n"); got != "2" {
		t.Fatalf("after reloading, n = %s, want 2", got)
	}
	var epoch int64
	if err := e.pool.QueryRow(context.Background(), `SELECT epoch FROM replica_spaces WHERE id = 's'`).Scan(&epoch); err != nil || epoch != 3 {
		t.Fatalf("epoch %d (%v), want 3: loaded, claimed by another, loaded again", epoch, err)
	}
}
