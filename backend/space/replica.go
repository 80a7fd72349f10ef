package space

import (
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/store"
)

// entry is one key. Entries are also linked in version order (oldest first),
// so the diff since a cookie walks back from the newest only as far as the
// cookie: its cost is the size of the change, not of the space.
type entry struct {
	key        string
	value      json.RawMessage // nil for a tombstone
	version    int64
	deleted    bool
	prev, next *entry
}

type client struct {
	id      string
	group   *group
	lmid    int64
	version int64
}

type group struct {
	id        string
	userID    string
	forgotten bool
	clients   []*client
}

// replica is a space's state in memory. The writer goroutine mutates it
// under mu.Lock; connections read it under mu.RLock. The writer reads it
// without the lock: it is the only one that writes.
type replica struct {
	mu      sync.RWMutex
	epoch   int64
	version int64
	horizon int64
	entries map[string]*entry
	keys    []string // every key (tombstones too), sorted by bytes
	oldest  *entry
	newest  *entry
	clients map[string]*client
	groups  map[string]*group

	// patches caches encoded patches for the current version by the
	// version they start from (-1: the whole state), so many connections at
	// the same cookie share one encoding.
	patchMu      sync.Mutex
	patchVersion int64
	patches      map[int64][]byte
}

func newReplica(snap *store.Snapshot) *replica {
	r := &replica{
		epoch:   snap.Epoch,
		version: snap.Version,
		horizon: snap.Horizon,
		entries: make(map[string]*entry, len(snap.Entries)),
		keys:    make([]string, 0, len(snap.Entries)),
		clients: make(map[string]*client, len(snap.Clients)),
		groups:  make(map[string]*group, len(snap.Groups)),
	}
	sort.Slice(snap.Entries, func(i, j int) bool { return snap.Entries[i].Version < snap.Entries[j].Version })
	for _, se := range snap.Entries {
		e := &entry{key: se.Key, version: se.Version, deleted: se.Deleted}
		if !se.Deleted {
			e.value = se.Value
		}
		r.entries[e.key] = e
		r.keys = append(r.keys, e.key)
		r.linkNewest(e)
	}
	slices.Sort(r.keys)
	for _, sg := range snap.Groups {
		r.groups[sg.ID] = &group{id: sg.ID, userID: sg.UserID, forgotten: sg.Forgotten}
	}
	for _, sc := range snap.Clients {
		g := r.groups[sc.GroupID]
		if g == nil {
			// A client row without its group row (older data): recreate it.
			g = &group{id: sc.GroupID}
			r.groups[g.id] = g
		}
		c := &client{id: sc.ID, group: g, lmid: sc.LastMutationID, version: sc.Version}
		r.clients[c.id] = c
		g.clients = append(g.clients, c)
	}
	return r
}

func (r *replica) linkNewest(e *entry) {
	e.prev, e.next = r.newest, nil
	if r.newest != nil {
		r.newest.next = e
	} else {
		r.oldest = e
	}
	r.newest = e
}

func (r *replica) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		r.oldest = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		r.newest = e.prev
	}
	e.prev, e.next = nil, nil
}

// set records a committed write at version v (writer only, under Lock).
func (r *replica) set(key string, value json.RawMessage, deleted bool, v int64) {
	e := r.entries[key]
	if e == nil {
		e = &entry{key: key}
		r.entries[key] = e
		i, _ := slices.BinarySearch(r.keys, key)
		r.keys = slices.Insert(r.keys, i, key)
	} else {
		r.unlink(e)
	}
	e.value, e.deleted, e.version = value, deleted, v
	if deleted {
		e.value = nil
	}
	r.linkNewest(e)
}

// drop forgets a tombstone entirely (garbage collection; under Lock).
func (r *replica) drop(key string) {
	e := r.entries[key]
	if e == nil || !e.deleted {
		return
	}
	r.unlink(e)
	delete(r.entries, key)
	if i, found := slices.BinarySearch(r.keys, key); found {
		r.keys = slices.Delete(r.keys, i, i+1)
	}
}

// get returns the live value at key.
func (r *replica) get(key string) (json.RawMessage, bool) {
	e := r.entries[key]
	if e == nil || e.deleted {
		return nil, false
	}
	return e.value, true
}

// keyRange returns the sorted keys (tombstones too) starting with prefix.
func (r *replica) keyRange(prefix string) []string {
	lo, _ := slices.BinarySearch(r.keys, prefix)
	hi := lo
	for hi < len(r.keys) && strings.HasPrefix(r.keys[hi], prefix) {
		hi++
	}
	return r.keys[lo:hi]
}

// fromTheFuture reports whether cookie c is newer than the space: the
// database was restored from a backup after the client synced.
func (r *replica) fromTheFuture(c protocol.Cookie) bool {
	return c.Numeric && c.Version > r.version
}

// needsFull reports whether a client at cookie c must get clear + the whole
// space: it has no usable cookie, or its cookie is older than deletes we
// have forgotten. (A cookie newer than the space is refused before this.)
func (r *replica) needsFull(c protocol.Cookie) bool {
	return !c.Numeric || c.Version < r.horizon || c.Version > r.version
}

// patch returns the encoded patch operations (comma-separated, no brackets)
// that bring a client at cookie c to the current version. Under RLock.
func (r *replica) patch(c protocol.Cookie) []byte {
	from := int64(-1)
	if !r.needsFull(c) {
		from = c.Version
	}
	r.patchMu.Lock()
	if r.patchVersion == r.version {
		if p, ok := r.patches[from]; ok {
			r.patchMu.Unlock()
			return p
		}
	}
	r.patchMu.Unlock()

	var p []byte
	if from < 0 {
		p = protocol.PatchClear(nil, true)
		for _, k := range r.keys {
			if e := r.entries[k]; !e.deleted {
				p = protocol.PatchPut(p, false, k, e.value)
			}
		}
	} else {
		// Walk back to the first entry newer than the cookie, then forward.
		e := r.newest
		for e != nil && e.prev != nil && e.prev.version > from {
			e = e.prev
		}
		first := true
		for ; e != nil; e = e.next {
			if e.version <= from {
				continue
			}
			if e.deleted {
				p = protocol.PatchDel(p, first, e.key)
			} else {
				p = protocol.PatchPut(p, first, e.key, e.value)
			}
			first = false
		}
	}

	r.patchMu.Lock()
	if r.patchVersion != r.version || r.patches == nil {
		r.patchVersion, r.patches = r.version, make(map[int64][]byte, 2)
	}
	if len(r.patches) < 16 {
		r.patches[from] = p
	}
	r.patchMu.Unlock()
	return p
}

// lmidChanges returns the lastMutationIDs of groupID's clients changed after
// cookie c (all of them for a full resync). Under RLock.
func (r *replica) lmidChanges(groupID string, c protocol.Cookie) []protocol.LMIDChange {
	g := r.groups[groupID]
	if g == nil {
		return nil
	}
	full := r.needsFull(c)
	var out []protocol.LMIDChange
	for _, cl := range g.clients {
		if full || cl.version > c.Version {
			out = append(out, protocol.LMIDChange{ClientID: cl.id, LMID: cl.lmid})
		}
	}
	return out
}
