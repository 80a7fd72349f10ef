package space

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/todoapp"
)

// todoValue is an entry the size of the example app's todos.
func todoValue(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"id":"%08d","text":"todo number %d, to do soon","completed":false,"sort":%d}`, i, i, i))
}

// benchSnapshot is a space of n todos written at versions 1..n.
func benchSnapshot(n int) *store.Snapshot {
	snap := &store.Snapshot{Epoch: 1, Version: int64(n)}
	for i := range n {
		snap.Entries = append(snap.Entries, store.Entry{Key: fmt.Sprintf("todo/%08d", i), Value: todoValue(i), Version: int64(i + 1)})
	}
	return snap
}

// BenchmarkPatchAfterOneChange is the diff a poke carries after one commit
// that changed one entry of a space of n entries: its cost must follow the
// change, not the space.
func BenchmarkPatchAfterOneChange(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			r := newReplica(benchSnapshot(n))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// One commit: entry i changes at the next version. Then the
				// diff from the version before (the patch cache holds only
				// the current version, so this computes afresh).
				v := r.version + 1
				r.set(fmt.Sprintf("todo/%08d", i%n), todoValue(i+n), false, v)
				r.version = v
				if p := r.patch(protocol.VersionCookie(v - 1)); len(p) == 0 {
					b.Fatal("empty patch")
				}
				i++
			}
		})
	}
}

// BenchmarkPatchFull is the whole space for a client with no cookie (first
// connection, resync): the cost of a new client, paid once per version since
// the patch is cached.
func BenchmarkPatchFull(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			r := newReplica(benchSnapshot(n))
			b.SetBytes(int64(len(r.patch(protocol.NullCookie))))
			b.ReportAllocs()
			for b.Loop() {
				r.patches = nil // drop the cache: measure the encoding
				r.patch(protocol.NullCookie)
			}
		})
	}
}

// BenchmarkPokeCached is one connection's poke when another connection at the
// same cookie already had its patch encoded: the per-connection cost of
// fan-out.
func BenchmarkPokeCached(b *testing.B) {
	s := &Space{replica: newReplica(benchSnapshot(10_000))}
	v := s.version + 1
	s.set("todo/00000001", todoValue(-1), false, v)
	s.version = v
	base := protocol.VersionCookie(v - 1)
	s.Poke(base, "g", "1", false)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, ok, _ := s.Poke(base, "g", "1", false); !ok {
				b.Fatal("no poke")
			}
		}
	})
}

// BenchmarkNewReplica is the in-memory part of loading a space of n entries
// (after Postgres returned its rows).
func BenchmarkNewReplica(b *testing.B) {
	for _, n := range []int{100_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			snap := benchSnapshot(n)
			b.ReportAllocs()
			for b.Loop() {
				newReplica(snap)
			}
		})
	}
}

// BenchmarkApplyPush is the writer's CPU per push of one mutation, from
// running the mutator to the committed state in memory (Postgres left out):
// an increment, and a createTodo in a list of 100 and of 1,000 todos
// (createTodo scans the list for the largest sort).
func BenchmarkApplyPush(b *testing.B) {
	reg := mutator.NewRegistry()
	todoapp.Register(reg)
	m := NewManager(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil, reg)
	log := m.cfg.Logger
	for _, bc := range []struct {
		name    string
		todos   int
		mutator string
		args    func(i int) string
	}{
		{"increment", 0, "increment", func(int) string { return `{"key":"counter","delta":1}` }},
		{"updateTodo/todos=1000", 1000, "updateTodo", func(i int) string {
			return fmt.Sprintf(`{"id":"%08d","completed":%v}`, i%1000, i%2 == 0)
		}},
		{"createTodo/todos=100", 100, "createTodo", func(i int) string { return fmt.Sprintf(`{"id":"n%d","text":"new","completed":false}`, i) }},
		{"createTodo/todos=1000", 1000, "createTodo", func(i int) string { return fmt.Sprintf(`{"id":"n%d","text":"new","completed":false}`, i) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := &Space{m: m, cfg: m.cfg, replica: newReplica(benchSnapshot(bc.todos))}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				i++
				job := &PushJob{Push: &protocol.Push{ID: "p", Body: protocol.PushRequest{
					PushVersion: 1, SchemaVersion: "1", ClientGroupID: "g",
					Mutations: []protocol.Mutation{{ID: int64(i), ClientID: "c", Name: bc.mutator, Args: json.RawMessage(bc.args(i))}},
				}}}
				bt := newBatch(s)
				if _, changed := bt.applyPush(log, job); !changed {
					b.Fatal("nothing applied")
				}
				s.mu.Lock()
				bt.applyCommitted(s.version + 1)
				s.mu.Unlock()
				if bc.mutator == "createTodo" {
					// Keep the list at its size: drop the new todo again.
					s.mu.Lock()
					s.set(fmt.Sprintf("todo/n%d", i), nil, true, s.version)
					s.drop(fmt.Sprintf("todo/n%d", i))
					s.mu.Unlock()
				}
			}
		})
	}
}
