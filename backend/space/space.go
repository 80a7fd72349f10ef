package space

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// Errors returned by Join and Push.
var (
	// ErrClosed means the space is unloading or the process is shutting
	// down: the client reconnects with backoff.
	ErrClosed = errors.New("space closed")
	// ErrMoved means this machine no longer owns the space: the client
	// reconnects through the router at once.
	ErrMoved = errors.New("space moved to another owner")
	// ErrMoving means the space's data is being moved to another Postgres
	// cluster: nobody serves it until the move ends, and the client retries
	// later. It wraps ErrMoved, since this machine must not keep the space
	// either.
	ErrMoving = fmt.Errorf("space moving to another storage cluster: %w", ErrMoved)
	// ErrFull means a limit (connections of the space, spaces of the
	// machine) is reached: the client retries later.
	ErrFull = errors.New("limit reached")
	// ErrGroupTaken means the client group named in hello belongs to
	// another user: the connection is refused (4003).
	ErrGroupTaken = errors.New("client group belongs to another user")
)

// Assigner tells whether this machine may serve a space.
type Assigner interface {
	// Assigned returns nil if the space is assigned to this machine and an
	// error wrapping ErrMoved if it is not (or does not exist). Any other
	// error means the answer is unknown (directory unreachable).
	Assigned(ctx context.Context, spaceID string) error
	// Moved returns those of spaceIDs that are no longer assigned to this
	// machine (or no longer exist), in one question: how loaded spaces are
	// rechecked. An error means the answer is unknown.
	Moved(ctx context.Context, spaceIDs []string) ([]string, error)
}

// Peer is a connection attached to a space.
type Peer interface {
	// Notify tells the peer the space has a new version. It must not block.
	Notify()
	// Close ends the peer's connection with code. It must not block.
	Close(code protocol.CloseCode, reason string)
}

// PushJob is one `push` frame on its way to the space's writer.
type PushJob struct {
	Push   *protocol.Push
	Caller mutator.Caller // UserID and Role; ClientID is filled per mutation
	// Reply receives the encoded answer (`pushed` or `error`) after the
	// batch holding the push committed. It must not block.
	Reply func(frame []byte)
	// Queued is when the job was queued, for the queue-wait metric.
	Queued time.Time
}

// Space is one loaded space.
type Space struct {
	id  string
	m   *Manager
	cfg Config

	// Lifecycle, guarded by m.mu.
	refs     int
	closing  bool
	unloadAt *time.Timer

	stopCode protocol.CloseCode // why the writer was asked to stop (under m.mu)

	ready   chan struct{} // closed when loaded (or failed: loadErr)
	loadErr error
	stop    chan struct{} // closed to ask the writer to stop after its batch
	done    chan struct{} // closed when the writer exited
	stopper sync.Once

	queue chan *PushJob

	peersMu   sync.Mutex
	peers     map[Peer]struct{}
	peerCount atomic.Int64       // len(peers), for PokeInterval without the lock
	closeCode protocol.CloseCode // set once the space is closing its peers

	// claims binds client groups that have no rows yet to the user whose
	// connection named them in hello, while such a connection lasts.
	claimsMu sync.Mutex
	claims   map[string]*groupClaim

	*replica
}

// ID is the space's ID.
func (s *Space) ID() string { return s.id }

func (s *Space) requestStop() { s.stopper.Do(func() { close(s.stop) }) }

// Push queues a push for the writer. It blocks while the queue is full (only
// the pushing connection waits) until ctx ends or the space closes.
func (s *Space) Push(ctx context.Context, job *PushJob) error {
	job.Queued = time.Now()
	select {
	case s.queue <- job:
		return nil
	case <-s.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Poke returns a `poke` frame that brings a connection whose last sent cookie
// is base up to date, and the cookie it leaves the connection at. ok is false
// when there is nothing to send (unless force: the first poke of a session is
// always sent, so the client knows where it stands).
//
// refused is true when the frame's body is a refusal instead of state: the
// client's schema is not served (VersionNotSupported), its client group was
// forgotten, or its cookie is newer than the space (ClientStateNotFound: a
// restored database; Replicache would throw on a response whose cookie went
// back, and must start afresh). After a refusal the connection gets no more
// pokes; its pulls and pushes get the same answer.
func (s *Space) Poke(base protocol.Cookie, groupID, schema string, force bool) (frame []byte, next protocol.Cookie, ok, refused bool) {
	if !s.cfg.servesSchema(schema) {
		return protocol.AppendPokeRefusal(nil, base.Raw, protocol.VersionNotSupported("schema")), base, true, true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if g := s.groups[groupID]; (g != nil && g.forgotten) || s.fromTheFuture(base) {
		return protocol.AppendPokeRefusal(nil, base.Raw, protocol.ClientStateNotFound), base, true, true
	}
	if !force && base.Numeric && base.Version == s.version {
		return nil, base, false, false
	}
	patch := s.patch(base)
	lmids := s.lmidChanges(groupID, base)
	frame = protocol.AppendPoke(make([]byte, 0, len(patch)+128), base.Raw, s.version, lmids, patch)
	return frame, protocol.VersionCookie(s.version), true, false
}

// Pull answers a `pull` frame. next is the cookie the client holds after
// applying the answer; ok is false when the answer carries no state (an
// error response), which leaves the client's cookie as it was.
func (s *Space) Pull(p *protocol.Pull, caller mutator.Caller) (frame []byte, next protocol.Cookie, ok bool) {
	req := &p.Body
	if req.PullVersion != 1 {
		return protocol.EncodePulledError(p.ID, protocol.VersionNotSupported("pull")), req.Cookie, false
	}
	if !s.cfg.servesSchema(req.SchemaVersion) {
		return protocol.EncodePulledError(p.ID, protocol.VersionNotSupported("schema")), req.Cookie, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.fromTheFuture(req.Cookie) {
		return protocol.EncodePulledError(p.ID, protocol.ClientStateNotFound), req.Cookie, false
	}
	g := s.groups[req.ClientGroupID]
	if g != nil && g.forgotten {
		return protocol.EncodePulledError(p.ID, protocol.ClientStateNotFound), req.Cookie, false
	}
	if s.othersGroup(g, req.ClientGroupID, caller.UserID) {
		return encodeGroupForbidden(p.ID), req.Cookie, false
	}
	patch := s.patch(req.Cookie)
	lmids := s.lmidChanges(req.ClientGroupID, req.Cookie)
	frame = protocol.AppendPulled(make([]byte, 0, len(patch)+128), p.ID, s.version, lmids, patch)
	return frame, protocol.VersionCookie(s.version), true
}

// groupClaim is a client group named in hello before it has rows.
type groupClaim struct {
	userID string
	conns  int
}

// ClaimGroup checks that the client group a connection names in hello is
// its user's, and binds it to that user while the connection lasts if the
// group has no rows yet. Without the claim a new group would belong to
// whoever pushes for it first, so another user who learnt its ID could take
// it before its owner's first push and lock the owner out. release ends the
// claim; call it once, when the connection leaves.
func (s *Space) ClaimGroup(groupID, userID string) (release func(), err error) {
	s.mu.RLock()
	g := s.groups[groupID]
	s.mu.RUnlock()
	if g != nil {
		if g.userID != userID {
			return nil, fmt.Errorf("claim group %.40s: %w", groupID, ErrGroupTaken)
		}
		return func() {}, nil
	}
	s.claimsMu.Lock()
	defer s.claimsMu.Unlock()
	c := s.claims[groupID]
	switch {
	case c == nil:
		c = &groupClaim{userID: userID}
		if s.claims == nil {
			s.claims = make(map[string]*groupClaim)
		}
		s.claims[groupID] = c
	case c.userID != userID:
		return nil, fmt.Errorf("claim group %.40s: %w", groupID, ErrGroupTaken)
	}
	c.conns++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.claimsMu.Lock()
			defer s.claimsMu.Unlock()
			if c.conns--; c.conns == 0 && s.claims[groupID] == c {
				delete(s.claims, groupID)
			}
		})
	}, nil
}

// othersGroup reports whether client group groupID (g, nil if it has no rows
// yet) belongs to a user other than userID: by its rows, or by the claim of
// another user's connection.
func (s *Space) othersGroup(g *group, groupID, userID string) bool {
	if g != nil {
		return g.userID != userID
	}
	s.claimsMu.Lock()
	defer s.claimsMu.Unlock()
	c := s.claims[groupID]
	return c != nil && c.userID != userID
}

// encodeGroupForbidden answers request id for another user's client group.
func encodeGroupForbidden(id string) []byte {
	return protocol.EncodeError(id, protocol.ErrCodeForbidden, "client group belongs to another user", false)
}

// PokeInterval is the least time between two pokes to one connection of
// the space (Config.PokeRate): a connection poked less than this long ago
// waits until the interval has passed, then gets everything since in one
// poke. Zero means no wait.
func (s *Space) PokeInterval() time.Duration {
	if s.cfg.PokeRate <= 0 {
		return 0
	}
	return time.Duration(s.peerCount.Load()) * time.Second / time.Duration(s.cfg.PokeRate)
}

// Version is the space's current version (its cookie).
func (s *Space) Version() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.version
}

func (s *Space) addPeer(p Peer) error {
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	switch s.closeCode {
	case 0:
		if len(s.peers) >= s.cfg.MaxPeers {
			return fmt.Errorf("space %s has %d connections: %w", s.id, s.cfg.MaxPeers, ErrFull)
		}
		s.peers[p] = struct{}{}
		s.peerCount.Store(int64(len(s.peers)))
		return nil
	case protocol.CloseMoved:
		return ErrMoved
	default:
		return ErrClosed
	}
}

func (s *Space) removePeer(p Peer) {
	s.peersMu.Lock()
	delete(s.peers, p)
	s.peerCount.Store(int64(len(s.peers)))
	s.peersMu.Unlock()
}

func (s *Space) notifyPeers() {
	s.peersMu.Lock()
	for p := range s.peers {
		p.Notify()
	}
	s.peersMu.Unlock()
}

// closePeers closes every peer with code and refuses new ones.
func (s *Space) closePeers(code protocol.CloseCode, reason string) {
	s.peersMu.Lock()
	if s.closeCode == 0 {
		s.closeCode = code
	}
	peers := s.peers
	s.peers = map[Peer]struct{}{}
	s.peersMu.Unlock()
	for p := range peers {
		p.Close(code, reason)
	}
}

// Manager loads, serves and unloads spaces.
type Manager struct {
	cfg   Config
	store Store
	reg   *mutator.Registry

	mu     sync.Mutex
	spaces map[string]*Space
	closed bool
	wg     sync.WaitGroup // one per space writer
}

// NewManager returns a manager of spaces kept in st, running reg's mutators.
func NewManager(cfg Config, st Store, reg *mutator.Registry) *Manager {
	return &Manager{cfg: cfg.withDefaults(), store: st, reg: reg, spaces: make(map[string]*Space)}
}

// Join attaches p to the space, loading it first if needed. Loading one
// space never holds up another: only joiners of the same space wait.
func (m *Manager) Join(ctx context.Context, spaceID string, p Peer) (*Space, error) {
	// Never serve (and never claim, which would fence the rightful owner) a
	// space the directory gives to another machine. Asked on every join and
	// again right before a load, since the space may move while we wait
	// for an unload to finish.
	if err := m.assigned(ctx, spaceID); err != nil {
		m.letGoIfMoved(spaceID, err)
		return nil, err
	}
	checked := true
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		s := m.spaces[spaceID]
		if s == nil && !checked {
			m.mu.Unlock()
			if err := m.assigned(ctx, spaceID); err != nil {
				m.letGoIfMoved(spaceID, err)
				return nil, err
			}
			checked = true
			continue
		}
		if s == nil {
			if len(m.spaces) >= m.cfg.MaxSpaces {
				m.mu.Unlock()
				return nil, fmt.Errorf("join space %s: %d spaces loaded: %w", spaceID, m.cfg.MaxSpaces, ErrFull)
			}
			s = m.newSpace(spaceID)
		}
		if s.closing {
			// An unload (or a loss) is under way; wait for it, then load anew.
			m.mu.Unlock()
			select {
			case <-s.done:
				checked = false
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		s.refs++
		if s.unloadAt != nil {
			s.unloadAt.Stop()
			s.unloadAt = nil
		}
		m.mu.Unlock()

		select {
		case <-s.ready:
		case <-ctx.Done():
			m.release(s)
			return nil, ctx.Err()
		}
		if s.loadErr != nil {
			m.release(s)
			return nil, s.loadErr
		}
		if err := s.addPeer(p); err != nil {
			m.release(s)
			return nil, err
		}
		return s, nil
	}
}

func (m *Manager) assigned(ctx context.Context, spaceID string) error {
	if m.cfg.Assigner == nil {
		return nil
	}
	if err := m.cfg.Assigner.Assigned(ctx, spaceID); err != nil {
		return fmt.Errorf("join space %s: %w", spaceID, err)
	}
	return nil
}

// Leave detaches p; the last peer to leave starts the grace period.
func (m *Manager) Leave(s *Space, p Peer) {
	s.removePeer(p)
	m.release(s)
}

func (m *Manager) release(s *Space) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s.refs--
	if s.refs > 0 || s.closing {
		return
	}
	if m.cfg.GracePeriod < 0 {
		m.unloadLocked(s)
		return
	}
	s.unloadAt = time.AfterFunc(m.cfg.GracePeriod, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if s.refs == 0 && !s.closing {
			m.unloadLocked(s)
		}
	})
}

func (m *Manager) unloadLocked(s *Space) {
	m.stopLocked(s, protocol.CloseGoingAway)
}

func (m *Manager) stopLocked(s *Space, code protocol.CloseCode) {
	if s.stopCode == 0 {
		s.stopCode = code
	}
	s.closing = true
	s.requestStop()
}

// Recheck asks the Assigner whether a loaded space is still ours; if it
// moved, its connections are closed with 4004 (they reconnect through the
// router to the new owner) and it unloads. Call it when the directory
// announces a change.
func (m *Manager) Recheck(ctx context.Context, spaceID string) { m.recheck(ctx, []string{spaceID}) }

// RecheckAll rechecks every loaded space: after the directory's change feed
// reconnected and may have missed announcements, and every RECHECK_INTERVAL.
func (m *Manager) RecheckAll(ctx context.Context) { m.recheck(ctx, nil) }

// recheck asks the Assigner which of the loaded spaces among ids (all of
// them if ids is nil) moved, recheckBatch spaces per question, and lets go
// of those.
func (m *Manager) recheck(ctx context.Context, ids []string) {
	if m.cfg.Assigner == nil {
		return
	}
	m.mu.Lock()
	loaded := make(map[string]*Space, len(ids))
	if ids == nil {
		for id, s := range m.spaces {
			loaded[id] = s
		}
	}
	for _, id := range ids {
		if s := m.spaces[id]; s != nil {
			loaded[id] = s
		}
	}
	m.mu.Unlock()
	for batch := range slices.Chunk(slices.Collect(maps.Keys(loaded)), recheckBatch) {
		// Bounded: rechecks run on the directory listener's goroutine too,
		// and one stuck query must not hold it up.
		cctx, cancel := context.WithTimeout(ctx, recheckTimeout)
		moved, err := m.cfg.Assigner.Moved(cctx, batch)
		cancel()
		if err != nil {
			m.cfg.Logger.Warn("recheck of loaded spaces' assignment failed", "spaces", len(batch), "err", err)
			return
		}
		for _, id := range moved {
			m.letGo(id, loaded[id])
		}
	}
}

// letGoIfMoved lets go of a loaded space when err says the directory gives
// it to another machine. A join refused as moved is how a machine learns of
// a move whose announcement it missed (the router that sent the client had
// missed it too): keeping the space would leave its clients on a machine
// that no longer owns it.
func (m *Manager) letGoIfMoved(spaceID string, err error) {
	if errors.Is(err, ErrMoved) {
		m.letGo(spaceID, nil)
	}
}

// letGo closes a loaded space with 4004 and unloads it: it moved away. only,
// when set, limits this to that instance of the space.
func (m *Manager) letGo(spaceID string, only *Space) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.spaces[spaceID]
	if s == nil || s.closing || (only != nil && s != only) {
		return
	}
	m.cfg.Logger.Info("space moved away; closing its connections", "space", spaceID)
	m.stopLocked(s, protocol.CloseMoved)
}

// recheckBatch is how many spaces recheck asks about in one question.
const recheckBatch = 1000

// recheckTimeout bounds one question of recheck to the directory.
const recheckTimeout = 5 * time.Second

// RunRecheck rechecks every loaded space each interval (0 means
// DefaultRecheckInterval) until ctx is done; run it in a goroutine whose owner
// cancels ctx. The directory's NOTIFY tells a machine of a move at once, and
// a client the router sends here after a move tells it too; this bounds the
// rest: a move whose announcement was lost, with every client of the space
// still connected here, would otherwise leave them reading a state the new
// owner has moved past for as long as they stay.
func (m *Manager) RunRecheck(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRecheckInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.RecheckAll(ctx)
	}
}

// Loaded reports how many spaces are in memory.
func (m *Manager) Loaded() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.spaces)
}

// Shutdown stops every space: each writer finishes the batch in flight, then
// closes its connections with 1001. It returns when all writers exited or
// ctx ends.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	for _, s := range m.spaces {
		if s.unloadAt != nil {
			s.unloadAt.Stop()
		}
		m.stopLocked(s, protocol.CloseGoingAway)
	}
	m.mu.Unlock()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("shutdown spaces: %w", ctx.Err())
	}
}

// newSpace registers a space and starts its writer (which loads it first).
// Under m.mu.
func (m *Manager) newSpace(id string) *Space {
	s := &Space{
		id:    id,
		m:     m,
		cfg:   m.cfg,
		ready: make(chan struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		queue: make(chan *PushJob, m.cfg.QueueLen),
		peers: make(map[Peer]struct{}),
	}
	m.spaces[id] = s
	m.wg.Add(1)
	go s.run()
	return s
}

// exited removes the space from the manager once its writer is gone.
func (m *Manager) exited(s *Space) {
	m.mu.Lock()
	s.closing = true
	if m.spaces[s.id] == s {
		delete(m.spaces, s.id)
	}
	m.mu.Unlock()
	close(s.done)
	m.wg.Done()
}
