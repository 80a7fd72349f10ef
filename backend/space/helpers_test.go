package space_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/mutator/mutatortest"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
	"github.com/spaceport-sync/spaceport/backend/todoapp"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// waitTimeout bounds every wait in these tests: generous, for busy machines.
const waitTimeout = 30 * time.Second

// engine is a space.Manager on a real Postgres store.
type engine struct {
	url   string
	pool  *pgxpool.Pool
	store *store.Store
	m     *space.Manager
}

// newEngine starts a manager on a fresh database, running the example app's
// mutators and those in extra.
func newEngine(t *testing.T, cfg space.Config, extra map[string]mutator.Func) *engine {
	t.Helper()
	return openEngine(t, pgtest.NewDatabase(t), cfg, extra)
}

// openEngine starts a manager on the database at url (one more machine, when
// another engine uses it too).
func openEngine(t *testing.T, url string, cfg space.Config, extra map[string]mutator.Func) *engine {
	t.Helper()
	st, pool := storetest.Open(t, url)
	reg := mutator.NewRegistry()
	todoapp.Register(reg)
	mutatortest.Register(reg)
	for name, fn := range extra {
		reg.Register(name, fn)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := space.NewManager(cfg, st, reg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return &engine{url: url, pool: pool, store: st, m: m}
}

// peer is a space.Peer that records what the space told it.
type peer struct {
	notified chan struct{} // one token per Notify not yet taken
	closed   chan closed   // the first Close
}

type closed struct {
	code   protocol.CloseCode
	reason string
}

func newPeer() *peer {
	return &peer{notified: make(chan struct{}, 1), closed: make(chan closed, 1)}
}

func (p *peer) Notify() {
	select {
	case p.notified <- struct{}{}:
	default:
	}
}

func (p *peer) Close(code protocol.CloseCode, reason string) {
	select {
	case p.closed <- closed{code, reason}:
	default:
	}
}

// waitClosed waits for the space to close the peer.
func (p *peer) waitClosed(t *testing.T) closed {
	t.Helper()
	select {
	case c := <-p.closed:
		return c
	case <-time.After(waitTimeout):
		t.Fatal("the space never closed its peer")
		return closed{}
	}
}

// join attaches a new peer to spaceID.
func (e *engine) join(t *testing.T, spaceID string) (*space.Space, *peer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	p := newPeer()
	s, err := e.m.Join(ctx, spaceID, p)
	if err != nil {
		t.Fatalf("join %s: %v", spaceID, err)
	}
	return s, p
}

// client makes the mutations of one Replicache client.
type client struct {
	id, group string
	next      int64
}

func newClient(id string) *client { return &client{id: id, group: "g-" + id, next: 1} }

func (c *client) mutation(name string, args any) protocol.Mutation {
	raw, err := json.Marshal(args)
	if err != nil {
		panic(err)
	}
	m := protocol.Mutation{ID: c.next, ClientID: c.id, Name: name, Args: raw}
	c.next++
	return m
}

func (c *client) increment(key string) protocol.Mutation {
	return c.mutation("increment", map[string]any{"key": key, "delta": 1})
}

func (c *client) set(key string, value any) protocol.Mutation {
	return c.mutation("putRaw", map[string]any{"key": key, "value": value})
}

func (c *client) del(key string) protocol.Mutation { return c.mutation("del", key) }

// pushes numbers the pushes of a test binary (their frame IDs).
var pushes atomic.Int64

// queuePush queues a push of ms for client group group and returns the
// channel its answer arrives on. Any goroutine may call it.
func queuePush(ctx context.Context, s *space.Space, group string, ms ...protocol.Mutation) (<-chan []byte, error) {
	reply := make(chan []byte, 1)
	job := &space.PushJob{
		Push: &protocol.Push{ID: fmt.Sprint("p", pushes.Add(1)), Body: protocol.PushRequest{
			PushVersion: 1, SchemaVersion: "1", ClientGroupID: group, Mutations: ms,
		}},
		Caller: mutator.Caller{UserID: "u", Role: mutator.RoleEditor},
		Reply:  func(frame []byte) { reply <- frame },
	}
	return reply, s.Push(ctx, job)
}

// push queues a push of ms for client group group and returns the channel its
// answer arrives on.
func push(t *testing.T, s *space.Space, group string, ms ...protocol.Mutation) <-chan []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	reply, err := queuePush(ctx, s, group, ms...)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return reply
}

// answer waits for a push's answer.
func answer(t *testing.T, reply <-chan []byte) string {
	t.Helper()
	select {
	case f := <-reply:
		return string(f)
	case <-time.After(waitTimeout):
		t.Fatal("push never answered")
		return ""
	}
}

// mustPush pushes ms and requires a plain `pushed`.
func mustPush(t *testing.T, s *space.Space, group string, ms ...protocol.Mutation) {
	t.Helper()
	if got := answer(t, push(t, s, group, ms...)); !isPushed(got) {
		t.Fatalf("push answered %s, want a plain pushed", got)
	}
}

func isPushed(frame string) bool {
	var f protocol.Pushed
	return json.Unmarshal([]byte(frame), &f) == nil && f.Type == "pushed" && f.Response == nil
}

// value reads key of spaceID from Postgres ("" if absent or deleted).
func (e *engine) value(t *testing.T, spaceID, key string) string {
	t.Helper()
	return storetest.Value(t, e.pool, spaceID, key)
}

// lmid reads a client's last_mutation_id from Postgres (0 if it has none).
func (e *engine) lmid(t *testing.T, spaceID, clientID string) int64 {
	t.Helper()
	return storetest.LMID(t, e.pool, spaceID, clientID)
}

// poke is a decoded `poke` frame.
type poke struct {
	BaseCookie json.RawMessage `json:"baseCookie"`
	Body       struct {
		Cookie int64            `json:"cookie"`
		LMIDs  map[string]int64 `json:"lastMutationIDChanges"`
		Patch  []struct {
			Op    string          `json:"op"`
			Key   string          `json:"key"`
			Value json.RawMessage `json:"value"`
		} `json:"patch"`
		Error string `json:"error"`
	} `json:"body"`
}

// ops renders the patch as "put k v", "del k", "clear", in order.
func (p *poke) ops() []string {
	var out []string
	for _, op := range p.Body.Patch {
		switch op.Op {
		case "put":
			out = append(out, "put "+op.Key+" "+string(op.Value))
		case "del":
			out = append(out, "del "+op.Key)
		default:
			out = append(out, op.Op)
		}
	}
	return out
}

// pokeFrom is the poke the space sends a connection of group at cookie base.
func pokeFrom(t *testing.T, s *space.Space, base protocol.Cookie, group string) (p poke, next protocol.Cookie, ok bool) {
	t.Helper()
	frame, next, ok, refused := s.Poke(base, group, "1", false)
	if !ok {
		return p, next, false
	}
	if err := json.Unmarshal(frame, &p); err != nil {
		t.Fatalf("poke %s: %v", frame, err)
	}
	if refused != (p.Body.Error != "") {
		t.Fatalf("poke %s: refused = %v", frame, refused)
	}
	return p, next, true
}

// waitUnloaded waits until the manager holds no space.
func (e *engine) waitUnloaded(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for e.m.Loaded() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d spaces still loaded", e.m.Loaded())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
