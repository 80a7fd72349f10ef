package space_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
)

// writeHistory commits, as client c of space s: v1 a=1 b=2, v2 c=3, v3 delete
// a and b=20.
func writeHistory(t *testing.T, s *space.Space, c *client) {
	t.Helper()
	mustPush(t, s, c.group, c.set("a", 1), c.set("b", 2))
	mustPush(t, s, c.group, c.set("c", 3))
	mustPush(t, s, c.group, c.del("a"), c.set("b", 20))
	if v := s.Version(); v != 3 {
		t.Fatalf("version %d after three commits, want 3", v)
	}
}

// A poke carries exactly what changed since the connection's cookie, oldest
// change first, deletes included; a client with no cookie gets clear and the
// whole space in key order; the lastMutationIDs are those of the client's
// own group that changed since the cookie.
func TestPoke_IsTheDiffSinceTheCookie(t *testing.T) {
	e := newEngine(t, space.Config{}, nil)
	s, _ := e.join(t, "s")
	c := newClient("c1")
	writeHistory(t, s, c)

	for _, tc := range []struct {
		name  string
		base  protocol.Cookie
		ops   []string
		lmids map[string]int64
	}{
		{"no cookie", protocol.NullCookie, []string{"clear", "put b 20", "put c 3"}, map[string]int64{c.id: 5}},
		{"a cookie we did not make", protocol.Cookie{Raw: []byte(`"x"`)}, []string{"clear", "put b 20", "put c 3"}, map[string]int64{c.id: 5}},
		{"version 0", protocol.VersionCookie(0), []string{"put c 3", "del a", "put b 20"}, map[string]int64{c.id: 5}},
		{"version 1", protocol.VersionCookie(1), []string{"put c 3", "del a", "put b 20"}, map[string]int64{c.id: 5}},
		{"version 2", protocol.VersionCookie(2), []string{"del a", "put b 20"}, map[string]int64{c.id: 5}},
	} {
		p, next, ok := pokeFrom(t, s, tc.base, c.group)
		if !ok {
			t.Fatalf("%s: no poke", tc.name)
		}
		if got := p.ops(); !slices.Equal(got, tc.ops) {
			t.Errorf("%s: patch %q, want %q", tc.name, got, tc.ops)
		}
		if p.Body.Cookie != 3 || !next.Numeric || next.Version != 3 || string(p.BaseCookie) != string(tc.base.Raw) {
			t.Errorf("%s: cookie %d from base %s (next %+v), want 3 from %s", tc.name, p.Body.Cookie, p.BaseCookie, next, tc.base.Raw)
		}
		if !maps.Equal(p.Body.LMIDs, tc.lmids) {
			t.Errorf("%s: lastMutationIDChanges %v, want %v", tc.name, p.Body.LMIDs, tc.lmids)
		}
	}
	// Up to date: nothing to send, unless forced (a session's first poke).
	if _, _, ok := pokeFrom(t, s, protocol.VersionCookie(3), c.group); ok {
		t.Error("a poke for a connection already at the current version")
	}
	frame, _, ok, _ := s.Poke(protocol.VersionCookie(3), c.group, "1", true)
	if !ok || string(frame) != `{"type":"poke","baseCookie":3,"body":{"cookie":3,"lastMutationIDChanges":{},"patch":[]}}` {
		t.Errorf("forced poke at the current version: %s", frame)
	}

	// Another group's commit: its data reaches c's group, its
	// lastMutationIDs do not; c's own are not repeated.
	o := newClient("other")
	mustPush(t, s, o.group, o.set("d", 4))
	p, _, _ := pokeFrom(t, s, protocol.VersionCookie(3), c.group)
	if got := p.ops(); !slices.Equal(got, []string{"put d 4"}) || len(p.Body.LMIDs) != 0 {
		t.Errorf("after another group's commit: patch %q lmids %v, want only put d 4", got, p.Body.LMIDs)
	}
	if p, _, _ := pokeFrom(t, s, protocol.VersionCookie(3), o.group); !maps.Equal(p.Body.LMIDs, map[string]int64{o.id: 1}) {
		t.Errorf("the other group's poke: lmids %v, want its own client's", p.Body.LMIDs)
	}

	// A cookie from the future (a restored database) is refused.
	if p, _, _ := pokeFrom(t, s, protocol.VersionCookie(99), c.group); p.Body.Error != "ClientStateNotFound" {
		t.Errorf("cookie from the future: %+v, want ClientStateNotFound", p)
	}
}

// After the space is unloaded and loaded again from Postgres, the diffs are
// the same (within one version the order is not kept).
func TestPoke_DiffAfterReloadIsTheSame(t *testing.T) {
	e := newEngine(t, space.Config{GracePeriod: -1}, nil)
	s, p := e.join(t, "s")
	c := newClient("c1")
	writeHistory(t, s, c)
	e.m.Leave(s, p)
	e.waitUnloaded(t)

	s, _ = e.join(t, "s")
	for base, want := range map[int64][]string{
		0: {"put c 3", "del a", "put b 20"},
		1: {"put c 3", "del a", "put b 20"},
		2: {"del a", "put b 20"},
	} {
		p, _, ok := pokeFrom(t, s, protocol.VersionCookie(base), c.group)
		got := p.ops()
		slices.Sort(got)
		slices.Sort(want)
		if !ok || !slices.Equal(got, want) || p.Body.Cookie != 3 {
			t.Errorf("after reload, from version %d: patch %q at cookie %d, want %q at 3", base, got, p.Body.Cookie, want)
		}
	}
}

// A cookie below the tombstone horizon (deletes since it were forgotten) gets
// a full resync; at or above it, a diff.
func TestPoke_BelowTheTombstoneHorizonIsAFullResync(t *testing.T) {
	e := newEngine(t, space.Config{GracePeriod: -1, TombstoneTTL: time.Minute}, nil)
	s, p := e.join(t, "s")
	c := newClient("c1")
	writeHistory(t, s, c)
	e.m.Leave(s, p)
	e.waitUnloaded(t)
	// The tombstone of a is an hour old: the next load collects it.
	storetest.Age(t, e.pool, "s", time.Hour)

	s, _ = e.join(t, "s")
	for base, want := range map[int64][]string{
		1: {"clear", "put b 20", "put c 3"},
		2: {"clear", "put b 20", "put c 3"},
	} {
		p, _, _ := pokeFrom(t, s, protocol.VersionCookie(base), c.group)
		if got := p.ops(); !slices.Equal(got, want) {
			t.Errorf("from version %d below the horizon 3: patch %q, want %q", base, got, want)
		}
	}
	if _, _, ok := pokeFrom(t, s, protocol.VersionCookie(3), c.group); ok {
		t.Error("a poke for a connection at the horizon, which is the current version")
	}
	mustPush(t, s, c.group, c.set("e", 5))
	if p, _, _ := pokeFrom(t, s, protocol.VersionCookie(3), c.group); !slices.Equal(p.ops(), []string{"put e 5"}) {
		t.Errorf("from the horizon: patch %q, want put e 5", p.ops())
	}
}
