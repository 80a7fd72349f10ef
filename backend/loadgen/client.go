package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

// Reconnect backoff (docs/protocol.md §5): capped exponential, full jitter.
const (
	backoffMin = 250 * time.Millisecond
	backoffMax = 10 * time.Second
)

// errFatal marks a client failure that no reconnect or retry cures: the run
// fails.
var errFatal = errors.New("fatal")

// pendingMut is a mutation made and not yet acknowledged.
type pendingMut struct {
	m     protocol.Mutation
	inc   int64     // its increment number (1, 2, ...) if an increment of the client's counter
	made  time.Time // when the client made it
	first time.Time // when it was first sent; zero until then
}

// todo is what a client expects one of its todos to hold.
type todo struct {
	Text      string `json:"text"`
	Completed bool   `json:"completed"`
}

// simClient is one simulated Replicache client: a tab that makes mutations
// at its rate, keeps one push in flight, applies pokes to its replica and,
// like Replicache, re-sends what was not acknowledged after a reconnect.
type simClient struct {
	r     *run
	sp    *spaceRun
	id    string
	group string
	rng   *rand.Rand

	// Owned by the driver goroutine (and read by verification once it
	// stopped).
	conn      *syncclient.Client
	pastErrs  []error // protocol violations seen on earlier connections
	nextID    int64
	pending   []*pendingMut
	incs      int64 // increments made
	todos     map[string]todo
	todoIDs   []string
	todoSeq   int
	made      map[string]int64 // mutations made, by name
	acked     int64
	ackHist   Histogram
	ackedWin  int64 // acks that arrived in the measured window
	closes    map[int]int
	pushErrs  map[string]int
	reconns   int
	fatal     error
	connected time.Duration // dial to welcome of the first connection
	firstPoke time.Duration // dial to first poke of the first connection

	// sendTimes[k-1] is when increment k was first sent (unix ns; 0 until
	// then). Receivers read it to time the pokes they get.
	sendMu    sync.RWMutex
	sendTimes []int64

	// Receiver side, written by the connection's reader goroutine.
	recvMu       sync.Mutex
	lastSeen     map[*simClient]int64 // increments of each sender seen in pokes
	fanout       Histogram            // push (by the sender) to poke (here), other clients only
	pokeBytes    Histogram            // pokes in the measured window, resyncs excluded
	pokesWin     int64
	initialBytes int64 // the first poke of the first connection: the whole space
	firstPokeAt  time.Time
	refused      []string // refusal pokes (ClientStateNotFound, VersionNotSupported)
}

func newSimClient(r *run, sp *spaceRun, i int) *simClient {
	id := fmt.Sprintf("%s-c%d", sp.id, i)
	return &simClient{
		r:        r,
		sp:       sp,
		id:       id,
		group:    "g-" + id,
		rng:      rand.New(rand.NewPCG(uint64(i)+1, uint64(len(sp.id))<<32|uint64(sp.index))),
		nextID:   1,
		todos:    map[string]todo{},
		made:     map[string]int64{},
		closes:   map[int]int{},
		pushErrs: map[string]int{},
		lastSeen: map[*simClient]int64{},
	}
}

// dial connects with the client's state (nil: a new client) and waits for the
// session to be live (its first poke).
func (c *simClient) dial(ctx context.Context, state *syncclient.State) (*syncclient.Client, time.Duration, time.Duration, error) {
	tok, err := c.r.token(c.sp.id, c.id)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%w: %w", errFatal, err)
	}
	start := time.Now()
	cl, err := syncclient.Dial(ctx, c.sp.wsURL, syncclient.Options{
		Token:          tok,
		ClientGroupID:  c.group,
		ClientID:       c.id,
		State:          state,
		NextMutationID: c.nextID,
		OnPoke:         c.onPoke,
		DiscardPokes:   true,
	})
	if err != nil {
		return nil, 0, 0, err
	}
	if err := cl.WaitWelcome(ctx); err != nil {
		cl.Kill()
		return nil, 0, 0, fmt.Errorf("no welcome: %w", closeErr(cl, err))
	}
	welcome := time.Since(start)
	if err := cl.WaitPokes(ctx, 1); err != nil {
		cl.Kill()
		return nil, 0, 0, fmt.Errorf("no first poke: %w", closeErr(cl, err))
	}
	return cl, welcome, time.Since(start), nil
}

// connect makes the client's first connection, retrying with backoff
// until ConnectTimeout (a machine the edge is starting may refuse at first).
func (c *simClient) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.r.cfg.ConnectTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		cl, welcome, first, err := c.dial(ctx, nil)
		if err == nil {
			c.conn, c.connected, c.firstPoke = cl, welcome, first
			return nil
		}
		c.r.dialErrors.Add(1)
		if errors.Is(err, errFatal) || !sleepBackoff(ctx, attempt) {
			return fmt.Errorf("connect %s: %w", c.id, err)
		}
	}
}

// reconnect replaces a connection that ended, keeping the replica, as a tab
// whose socket dropped does. It returns an errFatal error for close codes
// after which a client must not reconnect.
func (c *simClient) reconnect(ctx context.Context) error {
	old := c.conn
	old.Kill()
	code := int(old.CloseStatus())
	c.closes[code]++
	c.pastErrs = append(c.pastErrs, old.Errors()...)
	if fatalClose(code) {
		return fmt.Errorf("%w: connection closed with %d", errFatal, code)
	}
	c.reconns++
	c.r.reconnects.Add(1)
	state := old.State()
	for attempt := 0; ; attempt++ {
		// 4004 means "go through the router again, now"; others back off.
		if code != int(protocol.CloseMoved) || attempt > 0 {
			if !sleepBackoff(ctx, attempt) {
				return fmt.Errorf("reconnect %s: %w", c.id, ctx.Err())
			}
		}
		cl, _, _, err := c.dial(ctx, state)
		if err == nil {
			c.conn = cl
			return nil
		}
		c.r.dialErrors.Add(1)
		if errors.Is(err, errFatal) || ctx.Err() != nil {
			return fmt.Errorf("reconnect %s: %w", c.id, err)
		}
	}
}

// fatalClose reports close codes after which a client must not reconnect
// (docs/protocol.md §5): a bad request, a refused token, a frame too large.
func fatalClose(code int) bool {
	switch protocol.CloseCode(code) {
	case protocol.CloseProtocol, protocol.CloseUnauthorized, protocol.CloseForbidden, protocol.CloseTooBig:
		return true
	}
	return false
}

// closeErr marks err fatal if the connection was closed with a fatal code.
func closeErr(cl *syncclient.Client, err error) error {
	if code := int(cl.CloseStatus()); fatalClose(code) {
		return fmt.Errorf("%w: closed with %d: %w", errFatal, code, err)
	}
	return err
}

func sleepBackoff(ctx context.Context, attempt int) bool {
	d := backoffMin << min(attempt, 6)
	d = min(d, backoffMax)
	t := time.NewTimer(rand.N(d) + time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// make adds the client's next mutation to its pending list.
func (c *simClient) make() {
	name := c.r.cfg.Mix.pick(c.rng.Float64())
	switch {
	case (name == opUpdateTodo || name == opDeleteTodo) && len(c.todoIDs) == 0:
		name = opCreateTodo
	case name == opCreateTodo && len(c.todoIDs) >= c.r.cfg.MaxTodos:
		name = opUpdateTodo
	}
	var args any
	pm := &pendingMut{made: time.Now()}
	switch name {
	case opIncrement:
		c.incs++
		pm.inc = c.incs
		args = map[string]any{"key": counterPrefix + c.id, "delta": 1}
		c.sendMu.Lock()
		c.sendTimes = append(c.sendTimes, 0)
		c.sendMu.Unlock()
	case opCreateTodo:
		c.todoSeq++
		id := c.id + "-" + strconv.Itoa(c.todoSeq)
		t := todo{Text: "todo " + id + " v" + strconv.FormatInt(c.nextID, 10)}
		c.todos[id] = t
		c.todoIDs = append(c.todoIDs, id)
		args = map[string]any{"id": id, "text": t.Text, "completed": false}
	case opUpdateTodo:
		id := c.todoIDs[c.rng.IntN(len(c.todoIDs))]
		t := c.todos[id]
		t.Text = "todo " + id + " v" + strconv.FormatInt(c.nextID, 10)
		t.Completed = !t.Completed
		c.todos[id] = t
		args = map[string]any{"id": id, "text": t.Text, "completed": t.Completed}
	case opDeleteTodo:
		i := c.rng.IntN(len(c.todoIDs))
		id := c.todoIDs[i]
		c.todoIDs[i] = c.todoIDs[len(c.todoIDs)-1]
		c.todoIDs = c.todoIDs[:len(c.todoIDs)-1]
		delete(c.todos, id)
		args = id
	}
	raw, err := json.Marshal(args)
	if err != nil {
		panic(err) // only maps of strings, numbers and bools
	}
	pm.m = protocol.Mutation{ID: c.nextID, ClientID: c.id, Name: name, Args: raw, Timestamp: float64(time.Now().UnixMilli())}
	c.nextID++
	c.made[name]++
	c.pending = append(c.pending, pm)
}

// drive makes and pushes the client's mutations until the load ends and
// everything it made is acknowledged, or ctx ends.
func (c *simClient) drive(ctx context.Context) {
	cfg := c.r.cfg
	generate := cfg.Mode == ModeRun
	var interval time.Duration
	next := c.r.loadStart
	if generate && cfg.Rate > 0 {
		perClient := cfg.Rate / float64(c.r.totalClients)
		interval = time.Duration(float64(time.Second) / perClient)
		next = next.Add(time.Duration(c.rng.Int64N(int64(interval) + 1))) // spread the clients out
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		making := generate && now.Before(c.r.loadEnd)
		if making {
			if cfg.Rate > 0 {
				for !next.After(now) && next.Before(c.r.loadEnd) {
					c.make()
					next = next.Add(interval)
				}
			} else if len(c.pending) == 0 {
				for range cfg.Batch {
					c.make()
				}
			}
		}
		// Wait for the next mutation to make, or for the push delay of the
		// first unsent one (Replicache's pushDelay gathers mutations made
		// meanwhile into the same push); re-sends go at once.
		var wake time.Time
		switch {
		case len(c.pending) == 0 && !making:
			return
		case len(c.pending) == 0:
			wake = c.r.loadEnd
			if cfg.Rate > 0 && next.Before(wake) {
				wake = next
			}
		case c.pending[0].first.IsZero() && now.Before(c.pending[0].made.Add(cfg.PushDelay)):
			wake = c.pending[0].made.Add(cfg.PushDelay)
			if cfg.Rate > 0 && making && next.Before(wake) {
				wake = next
			}
		}
		if !wake.IsZero() {
			timer.Reset(time.Until(wake))
			select {
			case <-timer.C:
			case <-c.conn.Done():
				// The server closed the connection while we waited: come
				// back now, so that pokes keep arriving.
				if err := c.reconnect(ctx); err != nil {
					c.fatal = err
					return
				}
			case <-ctx.Done():
				return
			}
			continue
		}
		if err := c.push(ctx); err != nil {
			if ctx.Err() == nil {
				c.fatal = err
			}
			return
		}
	}
}

// pushAnswer is a `pushed` or `error` frame.
type pushAnswer struct {
	Type      string          `json:"type"`
	Response  json.RawMessage `json:"response"`
	Code      string          `json:"code"`
	Message   string          `json:"message"`
	Retryable bool            `json:"retryable"`
}

// push sends the pending mutations (up to MaxPushMutations) and handles the
// answer. A connection that ended is replaced; the mutations go again on the
// next call.
func (c *simClient) push(ctx context.Context) error {
	n := min(len(c.pending), c.r.cfg.MaxPushMutations)
	batch := c.pending[:n]
	ms := make([]protocol.Mutation, n)
	sent := time.Now()
	for i, pm := range batch {
		ms[i] = pm.m
		if pm.first.IsZero() {
			pm.first = sent
			if pm.inc > 0 {
				c.sendMu.Lock()
				c.sendTimes[pm.inc-1] = sent.UnixNano()
				c.sendMu.Unlock()
			}
		}
	}
	raw, err := c.conn.Push(ctx, ms...)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.reconnect(ctx)
	}
	now := time.Now()
	var ans pushAnswer
	if err := json.Unmarshal(raw, &ans); err != nil {
		return fmt.Errorf("%w: undecodable answer to a push: %v", errFatal, err)
	}
	switch {
	case ans.Type == protocol.TypePushed && (len(ans.Response) == 0 || string(ans.Response) == "null"):
		if c.r.inWindow(sent) {
			c.ackHist.RecordDuration(now.Sub(sent))
		}
		if c.r.inWindow(now) {
			c.ackedWin += int64(n)
		}
		c.acked += int64(n)
		c.r.acked.Add(int64(n))
		clear(batch)
		c.pending = c.pending[n:]
		return nil
	case ans.Type == protocol.TypePushed:
		return fmt.Errorf("%w: push refused: %s", errFatal, ans.Response)
	case ans.Type == protocol.TypeError && ans.Retryable:
		c.pushErrs[ans.Code]++
		c.r.pushErrors.Add(1)
		if !sleepBackoff(ctx, 0) {
			return ctx.Err()
		}
		return nil
	default:
		c.pushErrs[ans.Code]++
		c.r.pushErrors.Add(1)
		return fmt.Errorf("%w: push failed: %s: %s", errFatal, ans.Code, ans.Message)
	}
}

// onPoke runs on the connection's reader goroutine for every applied poke:
// it times the increments of other clients that the poke brings.
func (c *simClient) onPoke(p syncclient.Poke, patch []syncclient.PatchOp) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	c.r.pokes.Add(1)
	if p.Refused != "" {
		c.refused = append(c.refused, p.Refused)
		return
	}
	if c.firstPokeAt.IsZero() {
		c.firstPokeAt = p.At
		c.initialBytes = int64(p.Bytes)
	} else if !p.Cleared && c.r.inWindow(p.At) {
		c.pokeBytes.Record(int64(p.Bytes))
		c.pokesWin++
	}
	at := p.At.UnixNano()
	for i := range patch {
		op := &patch[i]
		if op.Op != "put" || !strings.HasPrefix(op.Key, counterPrefix) {
			continue
		}
		sender := c.sp.byID[op.Key[len(counterPrefix):]]
		if sender == nil {
			continue
		}
		v, err := strconv.ParseFloat(string(op.Value), 64)
		if err != nil {
			continue // verification reports a counter that is not a number
		}
		n, last := int64(v), c.lastSeen[sender]
		if n <= last {
			continue
		}
		c.lastSeen[sender] = n
		// A resync (clear) says nothing about when each change was made.
		if p.Cleared || sender == c {
			continue
		}
		sender.sendMu.RLock()
		for k := last + 1; k <= n && k <= int64(len(sender.sendTimes)); k++ {
			if t := sender.sendTimes[k-1]; t != 0 && c.r.inWindowNS(t) {
				c.fanout.Record(at - t)
			}
		}
		sender.sendMu.RUnlock()
	}
}

// closeStatusName labels a close code for the result.
func closeStatusName(code int) string {
	if code == -1 {
		return "dropped" // no close frame: the TCP connection ended
	}
	return strconv.Itoa(code)
}
