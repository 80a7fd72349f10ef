package wsserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
)

// outItem is one thing for the writer to do, in order.
type outItem struct {
	frame []byte
	pull  *protocol.Pull
	start *session
}

// session is what the writer needs once `hello` joined a space.
type session struct {
	space   *space.Space
	groupID string
	schema  string
	cookie  protocol.Cookie
	refused bool // a refusal poke went out: no more pokes
	welcome []byte
}

type conn struct {
	srv     *Server
	ws      *websocket.Conn
	spaceID string
	log     *slog.Logger
	caller  mutator.Caller
	expires time.Time // when the connection's token expires (zero: never)

	// Outbound queue, shared with whoever sends (space writer, reader).
	mu         sync.Mutex
	queue      []outItem
	queueBytes int
	wake       chan struct{} // capacity 1: "look at the queue and the poke flag"
	pokeWanted atomic.Bool

	// Writer state, owned by the writer goroutine.
	sess       *session
	sentCookie protocol.Cookie
	forcePoke  bool
	// nextPoke is the earliest time of the next poke (the space's
	// PokeInterval after the last); pokeTimer wakes the writer then, made
	// on first use so an idle connection carries no timer.
	nextPoke  time.Time
	pokeTimer *time.Timer

	// Reader state, owned by the reader (the handler goroutine).
	joined *space.Space
	// releaseGroup ends the claim on the hello's client group (set with
	// joined).
	releaseGroup func()
	inflight     chan struct{} // semaphore of pushes in flight
	limiter      bucket        // push rate

	// ctx ends when the connection is closing: the writer stops and waits
	// for the space end. Writes themselves use the server's context, because
	// cancelling a write's context tears the socket down at once and the
	// close frame would never go out.
	ctx          context.Context
	stopWriter   context.CancelFunc
	writerDone   chan struct{}
	closeOnce    sync.Once
	closeDone    chan struct{}
	closeCode    atomic.Int32
	helloTimer   *time.Timer
	helloArrived atomic.Bool
	lastRead     atomic.Int64 // unix nanoseconds of the last frame from the client
	pinging      sync.WaitGroup
	pingBusy     atomic.Bool
}

// pullCost is what a queued pull counts toward MaxQueueBytes before its
// answer exists, so that a flood of tiny pulls is bounded too.
const pullCost = 1024

func newConn(s *Server, ws *websocket.Conn, spaceID string) *conn {
	ctx, cancel := context.WithCancel(s.ctx)
	return &conn{
		srv:        s,
		ws:         ws,
		spaceID:    spaceID,
		log:        s.log.With("space", spaceID),
		caller:     mutator.Caller{Role: mutator.RoleEditor},
		wake:       make(chan struct{}, 1),
		inflight:   make(chan struct{}, s.cfg.MaxPushesInFlight),
		limiter:    bucket{rate: s.cfg.PushRate, burst: float64(s.cfg.PushBurst), tokens: float64(s.cfg.PushBurst)},
		ctx:        ctx,
		stopWriter: cancel,
		writerDone: make(chan struct{}),
		closeDone:  make(chan struct{}),
	}
}

// serve runs the connection until it ends. It returns only after the writer
// and the close handshake finished and the space was left.
func (c *conn) serve() {
	go c.writeLoop()
	c.helloTimer = time.AfterFunc(c.srv.cfg.HelloTimeout, func() {
		if !c.helloArrived.Load() {
			c.Close(protocol.CloseProtocol, "no hello within "+c.srv.cfg.HelloTimeout.String())
		}
	})
	if !c.expires.IsZero() {
		expiry := time.AfterFunc(time.Until(c.expires), func() { c.Close(protocol.CloseUnauthorized, "token expired") })
		defer expiry.Stop()
	}
	err := c.readLoop()
	c.helloTimer.Stop()
	code, reason := closeCodeOf(err)
	var ce websocket.CloseError
	if errors.As(err, &ce) || websocket.CloseStatus(err) != -1 {
		code = 0 // the peer closed, or we already did; nothing more to say
	}
	if code != 0 {
		c.Close(code, reason)
	} else {
		c.closeOnce.Do(func() { close(c.closeDone) })
	}
	<-c.closeDone
	c.stopWriter()
	<-c.writerDone
	c.pinging.Wait()
	_ = c.ws.CloseNow()
	if c.joined != nil {
		c.releaseGroup()
		c.srv.spaces.Leave(c.joined, c)
	}
}

// Close ends the connection with code; any goroutine may call it, it does not
// block, and only the first call counts.
func (c *conn) Close(code protocol.CloseCode, reason string) { c.close(code, reason, false) }

// drop ends the connection without a close handshake, for a peer that does
// not read (a handshake would wait on it).
func (c *conn) drop(code protocol.CloseCode, reason string) { c.close(code, reason, true) }

func (c *conn) close(code protocol.CloseCode, reason string, now bool) {
	c.closeOnce.Do(func() {
		c.closeCode.Store(int32(code))
		metricCloses.WithLabelValues(strconv.Itoa(int(code))).Inc()
		if code != protocol.CloseNormal && code != protocol.CloseGoingAway {
			c.log.Info("closing connection", "code", int(code), "reason", reason)
		}
		c.stopWriter()
		// The close handshake waits for the peer; never make the caller (a
		// space's writer, say) wait for it. serve waits on closeDone.
		go func() {
			defer close(c.closeDone)
			if now {
				_ = c.ws.CloseNow()
				return
			}
			_ = c.ws.Close(websocket.StatusCode(code), reason)
		}()
	})
}

// Notify implements space.Peer: a new version is there to poke.
func (c *conn) Notify() {
	// A poke already wanted is the writer's to send (now, or when its poke
	// interval ends): waking it again for each commit of a busy space would
	// only cost a context switch per connection per commit.
	if !c.pokeWanted.Swap(true) {
		c.signal()
	}
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// enqueue hands the writer an item; past the queue bound the connection is
// closed with 4008 instead.
func (c *conn) enqueue(it outItem) {
	c.mu.Lock()
	c.queueBytes += len(it.frame)
	if it.pull != nil {
		c.queueBytes += pullCost
	}
	if c.queueBytes > c.srv.cfg.MaxQueueBytes {
		c.mu.Unlock()
		c.Close(protocol.CloseTooSlow, "send queue full")
		return
	}
	c.queue = append(c.queue, it)
	c.mu.Unlock()
	c.signal()
}

func (c *conn) take() []outItem {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queue
	c.queue, c.queueBytes = nil, 0
	return q
}

// framePool recycles the buffers frames are read into. Decoding copies what
// it keeps, so a buffer is free again once its frame is decoded. Reading
// into a fresh buffer instead (websocket.Conn.Read) allocates and zeroes
// about twice the frame's size every time; frames near MaxFrameBytes (a
// client's offline backlog, or a hostile client's oversized frames over and
// over) then cost every connection of the process in garbage collection.
var framePool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readFrame reads the next message into a buffer from framePool; the caller
// puts it back.
func (c *conn) readFrame() (websocket.MessageType, *bytes.Buffer, error) {
	typ, r, err := c.ws.Reader(c.srv.ctx)
	if err != nil {
		return 0, nil, err
	}
	buf := framePool.Get().(*bytes.Buffer)
	buf.Reset()
	if _, err := buf.ReadFrom(r); err != nil {
		framePool.Put(buf)
		return 0, nil, err
	}
	return typ, buf, nil
}

func (c *conn) readLoop() error {
	for {
		typ, buf, err := c.readFrame()
		if err != nil {
			return err
		}
		c.lastRead.Store(time.Now().UnixNano())
		metricFramesIn.Inc()
		if typ != websocket.MessageText {
			framePool.Put(buf)
			return &protocol.ProtocolError{Code: protocol.CloseProtocol, Reason: "frames must be JSON text"}
		}
		f, err := protocol.DecodeClientFrame(buf.Bytes())
		framePool.Put(buf)
		if err != nil {
			return err
		}
		switch f.Type {
		case protocol.TypePing:
			c.enqueue(outItem{frame: protocol.EncodePong()})
		case protocol.TypeHello:
			if err := c.hello(f.Hello); err != nil {
				return err
			}
		case protocol.TypePush:
			if c.joined == nil {
				return &protocol.ProtocolError{Code: protocol.CloseProtocol, Reason: "push before hello"}
			}
			if err := c.push(f.Push); err != nil {
				return err
			}
		case protocol.TypePull:
			if c.joined == nil {
				return &protocol.ProtocolError{Code: protocol.CloseProtocol, Reason: "pull before hello"}
			}
			c.enqueue(outItem{pull: f.Pull})
		}
	}
}

// closeErr is a read-loop result that closes the connection with a code.
func closeErr(code protocol.CloseCode, reason string) error {
	return &protocol.ProtocolError{Code: code, Reason: reason}
}

func (c *conn) hello(h *protocol.Hello) error {
	if c.joined != nil {
		return closeErr(protocol.CloseProtocol, "duplicate hello")
	}
	c.helloArrived.Store(true)
	c.helloTimer.Stop()
	s, err := c.srv.spaces.Join(c.srv.ctx, c.spaceID, c)
	switch {
	case errors.Is(err, space.ErrMoving):
		// Not 4004: that reconnects at once, and until the move ends the
		// router would send the client straight back here.
		return closeErr(protocol.CloseRateLimited, retryAfter("space moving", c.srv.cfg.MovingRetryAfter))
	case errors.Is(err, space.ErrMoved):
		return closeErr(protocol.CloseMoved, "space moved")
	case errors.Is(err, space.ErrClosed):
		return closeErr(protocol.CloseGoingAway, "space unloading")
	case errors.Is(err, space.ErrFull):
		c.log.Warn("join refused", "err", err)
		return closeErr(protocol.CloseRateLimited, retryAfter("full", c.srv.cfg.FullRetryAfter))
	case err != nil:
		c.log.Error("join space failed", "err", err)
		return closeErr(protocol.CloseInternal, "space unavailable")
	}
	release, err := s.ClaimGroup(h.ClientGroupID, c.caller.UserID)
	if err != nil {
		c.srv.spaces.Leave(s, c)
		c.log.Warn("hello refused", "err", err)
		return closeErr(protocol.CloseForbidden, "client group belongs to another user")
	}
	c.joined, c.releaseGroup = s, release
	c.enqueue(outItem{start: &session{
		space:   s,
		groupID: h.ClientGroupID,
		schema:  h.SchemaVersion,
		cookie:  h.Cookie,
		welcome: protocol.EncodeWelcome(c.spaceID, c.srv.cfg.MachineID, c.srv.cfg.Region),
	}})
	return nil
}

func (c *conn) push(p *protocol.Push) error {
	if wait := c.limiter.take(time.Now()); wait > 0 {
		return closeErr(protocol.CloseRateLimited, retryAfter("rate limited", wait))
	}
	select {
	case c.inflight <- struct{}{}:
	case <-c.ctx.Done():
		return context.Canceled
	}
	job := &space.PushJob{
		Push:   p,
		Caller: c.caller,
		Reply: func(frame []byte) {
			<-c.inflight
			c.enqueue(outItem{frame: frame})
		},
	}
	if err := c.joined.Push(c.ctx, job); err != nil {
		<-c.inflight
		if errors.Is(err, space.ErrClosed) {
			return closeErr(protocol.CloseGoingAway, "space unloading")
		}
		return err
	}
	return nil
}

func (c *conn) writeLoop() {
	defer close(c.writerDone)
	defer func() {
		if c.pokeTimer != nil {
			c.pokeTimer.Stop()
		}
	}()
	ping := time.NewTicker(c.srv.cfg.PingInterval)
	defer ping.Stop()
	c.lastRead.Store(time.Now().UnixNano())
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-ping.C:
			c.maybePing()
			continue
		case <-c.wake:
		}
		for c.ctx.Err() == nil {
			items := c.take()
			for _, it := range items {
				if err := c.handle(it); err != nil {
					c.writeFailed(err)
					return
				}
			}
			poked := false
			if c.sess != nil && !c.sess.refused && (c.forcePoke || c.pokeWanted.Load()) && !c.pokeHeld() {
				c.pokeWanted.Store(false)
				frame, next, ok, refused := c.sess.space.Poke(c.sentCookie, c.sess.groupID, c.sess.schema, c.forcePoke)
				c.forcePoke = false
				c.sess.refused = refused
				if ok {
					if err := c.write(frame); err != nil {
						c.writeFailed(err)
						return
					}
					c.sentCookie = next
					if iv := c.sess.space.PokeInterval(); iv > 0 {
						c.nextPoke = time.Now().Add(iv)
					}
					metricPokes.Inc()
					metricPokeBytes.Observe(float64(len(frame)))
					poked = true
				}
			}
			if len(items) == 0 && !poked {
				break
			}
		}
	}
}

// pokeHeld reports whether a wanted poke must wait for the space's poke
// interval, and if so makes sure the writer wakes when it has passed. The
// first poke of a session is never held.
func (c *conn) pokeHeld() bool {
	if c.forcePoke || c.nextPoke.IsZero() {
		return false
	}
	wait := time.Until(c.nextPoke)
	if wait <= 0 {
		return false
	}
	if c.pokeTimer == nil {
		c.pokeTimer = time.AfterFunc(wait, c.signal)
	} else {
		c.pokeTimer.Reset(wait)
	}
	return true
}

func (c *conn) handle(it outItem) error {
	switch {
	case it.start != nil:
		c.sess = it.start
		c.sentCookie = it.start.cookie
		c.forcePoke = true
		return c.write(it.start.welcome)
	case it.pull != nil:
		frame, next, ok := c.sess.space.Pull(it.pull, c.caller)
		if err := c.write(frame); err != nil {
			return err
		}
		// A pull for another client group (mutation recovery) does not move
		// this client's cookie.
		if ok && it.pull.Body.ClientGroupID == c.sess.groupID {
			c.sentCookie = next
		}
		return nil
	default:
		return c.write(it.frame)
	}
}

func (c *conn) write(frame []byte) error {
	// A client that does not read makes the write block; past WriteTimeout
	// it is dropped as too slow. (Not a deadline on the write's context:
	// that would tear the socket down before we could say why.)
	slow := time.AfterFunc(c.srv.cfg.WriteTimeout, func() { c.drop(protocol.CloseTooSlow, "too slow") })
	err := c.ws.Write(c.srv.ctx, websocket.MessageText, frame)
	slow.Stop()
	if err == nil {
		metricBytesOut.Add(float64(len(frame)))
	}
	return err
}

func (c *conn) writeFailed(err error) {
	if c.ctx.Err() == nil && c.srv.ctx.Err() == nil {
		c.log.Debug("write failed", "err", err)
		c.Close(protocol.CloseInternal, "write failed")
	}
}

// maybePing pings a client that has been silent for a ping interval, in a
// goroutine of its own (a ping waits for its pong, which the reader
// receives); serve waits for it.
func (c *conn) maybePing() {
	idle := time.Since(time.Unix(0, c.lastRead.Load()))
	if idle < c.srv.cfg.PingInterval || !c.pingBusy.CompareAndSwap(false, true) {
		return
	}
	c.pinging.Add(1)
	go func() {
		defer c.pinging.Done()
		defer c.pingBusy.Store(false)
		// Not c.ctx: cancelling a ping's context tears the socket down,
		// which would cut a close handshake short. Once the connection is
		// closed the ping returns at once.
		ctx, cancel := context.WithTimeout(c.srv.ctx, c.srv.cfg.PingTimeout)
		defer cancel()
		if err := c.ws.Ping(ctx); err != nil && c.ctx.Err() == nil {
			c.drop(protocol.CloseGoingAway, "no pong")
		}
	}()
}

// bucket is a token bucket, used by one goroutine (the reader).
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

// take spends a token; if none is left it returns how long until one is.
func (b *bucket) take(now time.Time) time.Duration {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}

// retryAfter is the reason of a 4029 close: "<why>; retry after <N>s"
// (whole seconds, at least 1), which clients parse.
func retryAfter(why string, wait time.Duration) string {
	return fmt.Sprintf("%s; retry after %ds", why, max(1, int(math.Ceil(wait.Seconds()))))
}
