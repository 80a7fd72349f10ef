package space

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/store"
)

// Store is the persistence the engine needs: *store.Store (one Postgres), or
// clusters.Store (several, each space on the one the directory names).
type Store interface {
	Claim(ctx context.Context, spaceID, owner string) (*store.Snapshot, error)
	Commit(ctx context.Context, spaceID string, epoch int64, b *store.Batch) error
	CollectGarbage(ctx context.Context, spaceID string, epoch int64, tombstoneTTL, groupTTL time.Duration) (*store.Garbage, error)
}

// Releaser may be implemented by a Store that keeps something per claim
// (which cluster a space was claimed on): Release(spaceID, epoch) tells it
// that the writer that claimed the space at epoch has exited and will
// neither commit nor collect garbage at that epoch again.
type Releaser interface {
	Release(spaceID string, epoch int64)
}

// run is the space's single writer: it loads the space, then applies
// batches of pushes until asked to stop or until it loses the space.
func (s *Space) run() {
	defer s.m.exited(s)
	log := s.cfg.Logger.With("space", s.id)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.LoadTimeout)
	snap, err := s.m.store.Claim(ctx, s.id, s.cfg.Owner)
	cancel()
	if err != nil {
		if errors.Is(err, ErrMoved) {
			// Not a failure: the store found the space is not to be
			// served here (moving between clusters, moved meanwhile).
			log.Info("space not loaded", "err", err)
		} else {
			log.Error("space load failed", "err", err)
		}
		s.loadErr = fmt.Errorf("load space %s: %w", s.id, err)
		close(s.ready)
		return
	}
	if r, ok := s.m.store.(Releaser); ok {
		defer r.Release(s.id, snap.Epoch)
	}
	s.replica = newReplica(snap)
	metricLoadSeconds.Observe(time.Since(start).Seconds())
	metricSpacesLoaded.Inc()
	defer metricSpacesLoaded.Dec()
	log.Info("space loaded", "epoch", snap.Epoch, "version", snap.Version, "entries", len(snap.Entries),
		"clients", len(snap.Clients), "took", time.Since(start).Round(time.Millisecond))
	// Collect garbage before serving, so that what a client sees first
	// already reflects the horizon.
	s.collectGarbage(log)
	close(s.ready)

	gc := time.NewTicker(s.cfg.GCInterval)
	defer gc.Stop()

	batch := make([]*PushJob, 0, s.cfg.MaxBatchPushes)
	for {
		select {
		case <-s.stop:
			s.m.mu.Lock()
			code := s.stopCode
			s.m.mu.Unlock()
			reason := "space unloading"
			if code == protocol.CloseMoved {
				reason = "space moved"
			}
			s.closePeers(code, reason)
			log.Info("space unloaded", "version", s.version, "code", int(code))
			return
		case <-gc.C:
			s.collectGarbage(log)
			continue
		case job := <-s.queue:
			batch = append(batch[:0], job)
		}
		// Group commit: everything queued while the last batch committed
		// goes into this one, up to the bounds.
		n := len(batch[0].Push.Body.Mutations)
	gather:
		for len(batch) < s.cfg.MaxBatchPushes && n < s.cfg.MaxBatchMutations {
			select {
			case job := <-s.queue:
				batch = append(batch, job)
				n += len(job.Push.Body.Mutations)
			default:
				break gather
			}
		}
		if lost := s.applyBatch(log, batch); lost {
			return
		}
		clear(batch)
	}
}

// applyBatch runs a batch of pushes and commits it. It reports whether the
// space must stop serving (lost or in an unknown state).
func (s *Space) applyBatch(log *slog.Logger, jobs []*PushJob) (stop bool) {
	start := time.Now()
	b := newBatch(s)
	replies := make([][]byte, len(jobs))
	changed := make([]bool, len(jobs))
	for i, job := range jobs {
		metricQueueWait.Observe(start.Sub(job.Queued).Seconds())
		replies[i], changed[i] = b.applyPush(log, job)
	}

	if b.changed() {
		next := s.version + 1
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CommitTimeout)
		err := s.m.store.Commit(ctx, s.id, s.epoch, b.storeBatch(next))
		cancel()
		metricCommitSeconds.Observe(time.Since(start).Seconds())
		switch {
		case errors.Is(err, store.ErrFenced):
			log.Warn("space lost to another owner; closing its connections", "epoch", s.epoch)
			metricSpacesLost.Inc()
			s.closePeers(protocol.CloseMoved, "space moved")
			return true
		case errors.Is(err, store.ErrCommitUnknown):
			// Memory no longer matches a known database state: let clients
			// reconnect to a fresh load (they re-send what was not acked).
			log.Error("commit outcome unknown; unloading space", "err", err)
			s.closePeers(protocol.CloseInternal, "storage failure")
			return true
		case err != nil:
			log.Error("commit failed", "err", err, "pushes", len(jobs))
			metricCommits.WithLabelValues("error").Inc()
			for i, job := range jobs {
				if changed[i] {
					replies[i] = protocol.EncodeError(job.Push.ID, protocol.ErrCodeStorage, "could not commit; retry later", true)
				}
			}
		default:
			metricCommits.WithLabelValues("ok").Inc()
			metricBatchMutations.Observe(float64(b.mutations))
			s.mu.Lock()
			b.applyCommitted(next)
			s.mu.Unlock()
			s.notifyPeers()
		}
	}
	for i, job := range jobs {
		job.Reply(replies[i])
	}
	return false
}

func (s *Space) collectGarbage(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CommitTimeout)
	defer cancel()
	g, err := s.m.store.CollectGarbage(ctx, s.id, s.epoch, s.cfg.TombstoneTTL, s.cfg.ClientGroupTTL)
	if err != nil {
		// Not fatal: garbage waits for the next round. A fenced space finds
		// out for sure at its next commit.
		log.Warn("garbage collection failed", "err", err)
		return
	}
	if len(g.Tombstones) == 0 && len(g.ForgottenGroups) == 0 {
		return
	}
	s.mu.Lock()
	for _, k := range g.Tombstones {
		s.drop(k)
	}
	s.horizon = g.Horizon
	for _, id := range g.ForgottenGroups {
		if grp := s.groups[id]; grp != nil {
			grp.forgotten = true
			for _, c := range grp.clients {
				delete(s.clients, c.id)
			}
			grp.clients = nil
		}
	}
	s.mu.Unlock()
	log.Info("garbage collected", "tombstones", len(g.Tombstones), "forgotten_groups", len(g.ForgottenGroups), "horizon", g.Horizon)
}

// write is a pending change of one key.
type write struct {
	value   json.RawMessage
	deleted bool
}

// batch is the state of one group commit before it commits: writes and
// lastMutationIDs layered over the replica.
type batch struct {
	s         *Space
	writes    map[string]write
	order     []string           // keys in first-write order
	clients   map[string]*client // new or advanced, detached copies
	groups    map[string]*group  // new groups, or groups to refresh
	newGroups map[string]bool
	mutations int
}

func newBatch(s *Space) *batch {
	return &batch{s: s, writes: map[string]write{}, clients: map[string]*client{}, groups: map[string]*group{}, newGroups: map[string]bool{}}
}

func (b *batch) changed() bool { return len(b.clients) > 0 || len(b.writes) > 0 }

func (b *batch) group(id string) *group {
	if g := b.groups[id]; g != nil {
		return g
	}
	return b.s.groups[id]
}

func (b *batch) client(id string) *client {
	if c := b.clients[id]; c != nil {
		return c
	}
	return b.s.clients[id]
}

// applyPush runs one push's mutations into the batch and returns the frame to
// answer it with, and whether that answer depends on the batch committing.
func (b *batch) applyPush(log *slog.Logger, job *PushJob) (reply []byte, changed bool) {
	p := job.Push
	req := &p.Body
	if req.PushVersion != 1 {
		return protocol.EncodePushed(p.ID, protocol.VersionNotSupported("push")), false
	}
	if !b.s.cfg.servesSchema(req.SchemaVersion) {
		return protocol.EncodePushed(p.ID, protocol.VersionNotSupported("schema")), false
	}
	g := b.group(req.ClientGroupID)
	if g != nil && g.forgotten {
		return protocol.EncodePushed(p.ID, protocol.ClientStateNotFound), false
	}
	if b.s.othersGroup(g, req.ClientGroupID, job.Caller.UserID) {
		return encodeGroupForbidden(p.ID), false
	}
	ran := 0
	for _, m := range req.Mutations {
		// Acked only after this batch commits if any of its mutations was
		// not committed before the batch, even when an earlier push of the
		// same batch is the one that ran it.
		if committed := b.s.clients[m.ClientID]; committed == nil || m.ID > committed.lmid {
			changed = true
		}
		c := b.client(m.ClientID)
		lmid := int64(0)
		if c != nil {
			if c.group.id != req.ClientGroupID {
				log.Warn("client bound to another group", "client", m.ClientID, "group", req.ClientGroupID, "bound_to", c.group.id)
				return protocol.EncodeError(p.ID, protocol.ErrCodeClientGroupMismatch,
					fmt.Sprintf("client %.40s belongs to another client group", m.ClientID), false), changed
			}
			lmid = c.lmid
		}
		if m.ID <= lmid {
			continue // already applied: pushes are idempotent
		}
		if m.ID > lmid+1 {
			break // a gap: the missing mutations come again, then these
		}
		if ran == b.s.cfg.MaxPushMutations {
			break // the rest come again in the client's next push
		}
		ran++
		caller := job.Caller
		caller.ClientID = m.ClientID
		b.runMutator(log, &m, caller)
		b.advance(m.ClientID, req.ClientGroupID, job.Caller.UserID, m.ID)
		b.mutations++
	}
	return protocol.EncodePushed(p.ID, nil), changed
}

// runMutator runs one mutation; on success its writes join the batch, on any
// failure (error or panic) they are discarded.
func (b *batch) runMutator(log *slog.Logger, m *protocol.Mutation, caller mutator.Caller) {
	fn, ok := b.s.m.reg.Lookup(m.Name)
	if !ok {
		metricMutations.WithLabelValues("unknown").Inc()
		log.Warn("unknown mutator", "name", m.Name, "client", m.ClientID, "id", m.ID)
		return
	}
	tx := &tx{b: b, caller: caller, writes: map[string]write{}}
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("mutator panicked: %v", r)
			}
		}()
		return fn(tx, m.Args)
	}()
	if err != nil {
		metricMutations.WithLabelValues("error").Inc()
		log.Warn("mutation failed", "name", m.Name, "client", m.ClientID, "id", m.ID, "err", err)
		return
	}
	metricMutations.WithLabelValues("ok").Inc()
	for _, k := range tx.order {
		b.put(k, tx.writes[k])
	}
}

func (b *batch) put(key string, w write) {
	if _, seen := b.writes[key]; !seen {
		b.order = append(b.order, key)
	}
	b.writes[key] = w
}

func (b *batch) advance(clientID, groupID, userID string, id int64) {
	c := b.clients[clientID]
	if c == nil {
		g := b.group(groupID)
		if g == nil {
			g = &group{id: groupID, userID: userID}
			b.newGroups[groupID] = true
		}
		b.groups[groupID] = g
		c = &client{id: clientID, group: g}
		if old := b.s.clients[clientID]; old != nil {
			c.lmid = old.lmid
		}
		b.clients[clientID] = c
	}
	c.lmid = id
}

func (b *batch) storeBatch(version int64) *store.Batch {
	sb := &store.Batch{Version: version}
	for _, k := range b.order {
		w := b.writes[k]
		sb.Entries = append(sb.Entries, store.Entry{Key: k, Value: w.value, Deleted: w.deleted, Version: version})
	}
	for _, c := range b.clients {
		sb.Clients = append(sb.Clients, store.Client{ID: c.id, GroupID: c.group.id, LastMutationID: c.lmid, Version: version})
	}
	for _, g := range b.groups {
		sb.Groups = append(sb.Groups, store.Group{ID: g.id, UserID: g.userID})
	}
	return sb
}

// applyCommitted makes the committed batch the replica's state. Under Lock.
func (b *batch) applyCommitted(version int64) {
	r := b.s.replica
	for _, k := range b.order {
		w := b.writes[k]
		r.set(k, w.value, w.deleted, version)
	}
	for id := range b.newGroups {
		r.groups[id] = b.groups[id]
	}
	for _, c := range b.clients {
		if cur := r.clients[c.id]; cur != nil {
			cur.lmid, cur.version = c.lmid, version
			continue
		}
		c.version = version
		c.group = r.groups[c.group.id]
		r.clients[c.id] = c
		c.group.clients = append(c.group.clients, c)
	}
	r.version = version
}

// tx is the mutator.Tx of one mutation: its writes over the batch's over the
// replica's.
type tx struct {
	b      *batch
	caller mutator.Caller
	writes map[string]write
	order  []string
}

var _ mutator.Tx = (*tx)(nil)

func (t *tx) Caller() mutator.Caller { return t.caller }

func (t *tx) Get(key string) (json.RawMessage, bool) {
	if w, ok := t.writes[key]; ok {
		return w.value, !w.deleted
	}
	if w, ok := t.b.writes[key]; ok {
		return w.value, !w.deleted
	}
	return t.b.s.get(key)
}

func (t *tx) Has(key string) bool {
	_, ok := t.Get(key)
	return ok
}

func (t *tx) Put(key string, value any) error {
	if len(key) > t.b.s.cfg.MaxKeyBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", mutator.ErrKeyTooLarge, len(key), t.b.s.cfg.MaxKeyBytes)
	}
	if !utf8.ValidString(key) || strings.IndexByte(key, 0) >= 0 {
		// Postgres text cannot hold it, and one such row would fail the
		// whole group commit.
		return mutator.ErrInvalidKey
	}
	var raw []byte
	switch v := value.(type) {
	case json.RawMessage:
		raw = compactJSON(v)
	case []byte:
		raw = compactJSON(v)
	default:
		var err error
		if raw, err = json.Marshal(v); err != nil {
			return fmt.Errorf("%w: %v", mutator.ErrInvalidJSON, err)
		}
	}
	if len(raw) > t.b.s.cfg.MaxValueBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", mutator.ErrValueTooLarge, len(raw), t.b.s.cfg.MaxValueBytes)
	}
	if raw == nil {
		return mutator.ErrInvalidJSON
	}
	if cur, ok := t.Get(key); ok && string(cur) == string(raw) {
		return nil // unchanged: no write, no patch
	}
	t.set(key, write{value: raw})
	return nil
}

func (t *tx) Del(key string) bool {
	if !t.Has(key) {
		return false
	}
	t.set(key, write{deleted: true})
	return true
}

func (t *tx) set(key string, w write) {
	if _, seen := t.writes[key]; !seen {
		t.order = append(t.order, key)
	}
	t.writes[key] = w
}

func (t *tx) Scan(prefix string) iter.Seq2[string, json.RawMessage] {
	return func(yield func(string, json.RawMessage) bool) {
		keys := slices.Clone(t.b.s.keyRange(prefix))
		extra := false
		for _, src := range []map[string]write{t.b.writes, t.writes} {
			for k := range src {
				if strings.HasPrefix(k, prefix) {
					keys = append(keys, k)
					extra = true
				}
			}
		}
		if extra {
			slices.Sort(keys)
			keys = slices.Compact(keys)
		}
		for _, k := range keys {
			if v, ok := t.Get(k); ok {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// compactJSON returns a compact copy of raw (so the stored value never
// aliases the frame it came from), or nil if raw is not valid JSON.
func compactJSON(raw []byte) []byte {
	var buf bytes.Buffer
	buf.Grow(len(raw))
	if err := json.Compact(&buf, raw); err != nil {
		return nil
	}
	return buf.Bytes()
}
