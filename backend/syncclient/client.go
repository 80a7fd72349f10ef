// Package syncclient is a Go client of Spaceport's protocol that behaves like
// a Replicache client: it keeps a replica of the space, applies pokes only when
// their chain starts at its cookie (like rep.poke), tracks lastMutationIDs,
// and pushes mutations with sequential ids. Tests and the load generator use
// it to check, from the outside, what the server promises.
package syncclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// Options configure Dial.
type Options struct {
	// ClientGroupID and ClientID identify the client; zero values get random
	// IDs.
	ClientGroupID string
	ClientID      string
	// SchemaVersion sent in hello, push and pull. Zero value means "1".
	SchemaVersion string
	// State resumes a client from an earlier session (cookie, replica and
	// lastMutationIDs), as a reloaded tab would from IndexedDB.
	State *State
	// NextMutationID is the id the next mutation gets. Zero value means one
	// past this client's known lastMutationID.
	NextMutationID int64
	// Header is sent with the upgrade request.
	Header http.Header
	// NoHello connects without sending hello (for protocol tests).
	NoHello bool
	// Token is sent as the `token` query parameter. Zero value sends none.
	Token string
	// OnPoke, when set, is called from the client's reader goroutine after
	// each poke that the client applied, with the poke and its patch
	// operations (which the callee must not keep or modify past the call).
	// It must not block: the next frame waits for it. Zero value: no call.
	OnPoke func(p Poke, patch []PatchOp)
	// OnPing, when set, is called from the client's reader goroutine for
	// each WebSocket ping the server sends, before the client answers it.
	// It must not block. Zero value: no call.
	OnPing func()
	// DiscardPokes stops the client from keeping every applied poke for
	// Pokes (a long load run would keep them all); WaitPokes still counts
	// them. Zero value keeps them.
	DiscardPokes bool
}

// WithToken returns o with a connection token to add to the URL.
func (o Options) WithToken(token string) Options {
	o.Token = token
	return o
}

// State is a client's replica.
type State struct {
	Cookie json.RawMessage
	Data   map[string]json.RawMessage
	LMIDs  map[string]int64
}

// Clone returns a deep copy.
func (s *State) Clone() *State {
	return &State{Cookie: bytes.Clone(s.Cookie), Data: maps.Clone(s.Data), LMIDs: maps.Clone(s.LMIDs)}
}

// Poke records one poke the client applied.
type Poke struct {
	Base    json.RawMessage
	Cookie  int64
	Ops     int
	Bytes   int
	Cleared bool
	// Refused is the error of a refusal poke (ClientStateNotFound,
	// VersionNotSupported), which carries no state.
	Refused string
	// At is when the frame was read off the connection.
	At time.Time
}

// PatchOp is one operation of a poke's patch, as sent.
type PatchOp struct {
	Op    string          `json:"op"`
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

// pullResponse is a PullResponseV1: an OK body, or an error response.
type pullResponse struct {
	Cookie json.RawMessage  `json:"cookie"`
	LMIDs  map[string]int64 `json:"lastMutationIDChanges"`
	Patch  []PatchOp        `json:"patch"`
	Error  string           `json:"error"`
}

// ErrChainBroken is recorded when a poke does not start at the client's
// cookie: the server lost track of what it sent.
var ErrChainBroken = errors.New("poke chain broken")

// Client is one connection of one client.
type Client struct {
	ws            *websocket.Conn
	ClientGroupID string
	ClientID      string
	schema        string

	mu          sync.Mutex
	changed     chan struct{} // closed and replaced on every change
	state       *State
	nextID      int64
	welcome     *protocol.Welcome
	pokes       []Poke
	pokeCount   int
	onPoke      func(Poke, []PatchOp)
	keepPokes   bool
	waiters     map[string]chan json.RawMessage
	pullBases   map[string]json.RawMessage // cookie each pending Pull was sent from
	errs        []error
	closed      error
	closeStatus websocket.StatusCode
	reqSeq      int

	done chan struct{}
}

// Dial connects to a space's WebSocket URL (ws://host/api/replicache/websocket/ID)
// and says hello.
func Dial(ctx context.Context, url string, o Options) (*Client, error) {
	if o.Token != "" {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + "token=" + neturl.QueryEscape(o.Token)
	}
	dopts := &websocket.DialOptions{HTTPHeader: o.Header}
	if o.OnPing != nil {
		dopts.OnPingReceived = func(context.Context, []byte) bool { o.OnPing(); return true }
	}
	ws, resp, err := websocket.Dial(ctx, url, dopts)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: status %d: %w", url, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	ws.SetReadLimit(64 << 20)
	c := &Client{
		ws:            ws,
		ClientGroupID: o.ClientGroupID,
		ClientID:      o.ClientID,
		schema:        o.SchemaVersion,
		changed:       make(chan struct{}),
		waiters:       map[string]chan json.RawMessage{},
		pullBases:     map[string]json.RawMessage{},
		done:          make(chan struct{}),
		closeStatus:   -1,
		onPoke:        o.OnPoke,
		keepPokes:     !o.DiscardPokes,
	}
	if c.ClientGroupID == "" {
		c.ClientGroupID = "cg-" + randomID()
	}
	if c.ClientID == "" {
		c.ClientID = "c-" + randomID()
	}
	if c.schema == "" {
		c.schema = "1"
	}
	if o.State != nil {
		c.state = o.State.Clone()
	} else {
		c.state = &State{Cookie: json.RawMessage("null"), Data: map[string]json.RawMessage{}, LMIDs: map[string]int64{}}
	}
	c.nextID = o.NextMutationID
	if c.nextID == 0 {
		c.nextID = c.state.LMIDs[c.ClientID] + 1
	}
	go c.readLoop()
	if !o.NoHello {
		hello := map[string]any{"type": "hello", "clientGroupID": c.ClientGroupID, "clientID": c.ClientID,
			"cookie": c.state.Cookie, "schemaVersion": c.schema}
		if err := c.SendJSON(ctx, hello); err != nil {
			// A server that refuses the connection (bad token, wrong owner)
			// closes it right after the upgrade, possibly before our hello is
			// written. That close is the answer the caller wants, so hand back
			// the closed client when the reader saw a close frame.
			select {
			case <-c.done:
				if c.CloseStatus() >= 0 {
					return c, nil
				}
			case <-time.After(time.Second):
			}
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// SendJSON sends any value as a text frame.
func (c *Client) SendJSON(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.SendRaw(ctx, b)
}

// SendRaw sends bytes as one text frame.
func (c *Client) SendRaw(ctx context.Context, b []byte) error {
	return c.ws.Write(ctx, websocket.MessageText, b)
}

// SendBinary sends bytes as one binary frame (which the protocol refuses).
func (c *Client) SendBinary(ctx context.Context, b []byte) error {
	return c.ws.Write(ctx, websocket.MessageBinary, b)
}

// Close closes the connection (1000) and waits for the reader to stop.
func (c *Client) Close() {
	_ = c.ws.Close(websocket.StatusNormalClosure, "")
	<-c.done
}

// Kill drops the connection without a close handshake.
func (c *Client) Kill() {
	_ = c.ws.CloseNow()
	<-c.done
}

// Done is closed when the connection ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// CloseStatus is the close code the server sent, or -1.
func (c *Client) CloseStatus() websocket.StatusCode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeStatus
}

// CloseReason is the close reason the server sent, if any.
func (c *Client) CloseReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ce websocket.CloseError
	if errors.As(c.closed, &ce) {
		return ce.Reason
	}
	return ""
}

// Errors returns protocol violations seen from the server (broken poke
// chains, undecodable frames).
func (c *Client) Errors() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.errs...)
}

// Welcome returns the welcome frame, once received.
func (c *Client) Welcome() *protocol.Welcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.welcome
}

// State returns a copy of the replica.
func (c *Client) State() *State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state.Clone()
}

// Pokes returns the pokes applied so far (none with Options.DiscardPokes).
func (c *Client) Pokes() []Poke {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Poke(nil), c.pokes...)
}

// NextMutationID is the id the next mutation will get.
func (c *Client) NextMutationID() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nextID
}

// Mutation builds the client's next mutation (and consumes its id).
func (c *Client) Mutation(name string, args any) protocol.Mutation {
	raw, err := json.Marshal(args)
	if err != nil {
		panic(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := protocol.Mutation{ID: c.nextID, ClientID: c.ClientID, Name: name, Args: raw, Timestamp: float64(time.Now().UnixMilli())}
	c.nextID++
	return m
}

// Push sends one push with the mutations and waits for its answer frame
// (`pushed` or `error`), which it returns raw.
func (c *Client) Push(ctx context.Context, ms ...protocol.Mutation) (json.RawMessage, error) {
	return c.PushAs(ctx, c.ClientGroupID, ms...)
}

// PushAs pushes for another client group (mutation recovery).
func (c *Client) PushAs(ctx context.Context, groupID string, ms ...protocol.Mutation) (json.RawMessage, error) {
	id, ch := c.newRequest("push")
	if ms == nil {
		ms = []protocol.Mutation{}
	}
	body := map[string]any{"pushVersion": 1, "schemaVersion": c.schema, "profileID": "p", "clientGroupID": groupID, "mutations": ms}
	return c.request(ctx, id, ch, map[string]any{"type": "push", "id": id, "body": body})
}

// Mutate pushes one mutation and waits for its ack.
func (c *Client) Mutate(ctx context.Context, name string, args any) (protocol.Mutation, error) {
	m := c.Mutation(name, args)
	ans, err := c.Push(ctx, m)
	if err != nil {
		return m, err
	}
	if !bytes.Contains(ans, []byte(`"type":"pushed"`)) {
		return m, fmt.Errorf("push answered %s", ans)
	}
	return m, nil
}

// Pull sends an explicit pull from the client's cookie, applies the answer
// like Replicache does and returns it raw.
func (c *Client) Pull(ctx context.Context) (json.RawMessage, error) {
	id, ch := c.newRequest("pull")
	c.mu.Lock()
	cookie := c.state.Cookie
	// The answer is applied by the reader as it arrives, before any poke
	// that follows it (the server pokes from the pulled cookie at once).
	c.pullBases[id] = cookie
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pullBases, id)
		c.mu.Unlock()
	}()
	body := map[string]any{"pullVersion": 1, "schemaVersion": c.schema, "profileID": "p", "clientGroupID": c.ClientGroupID, "cookie": cookie}
	return c.request(ctx, id, ch, map[string]any{"type": "pull", "id": id, "body": body})
}

// Request sends a frame carrying id and waits for the answer with that id.
func (c *Client) Request(ctx context.Context, id string, frame any) (json.RawMessage, error) {
	ch := make(chan json.RawMessage, 1)
	c.mu.Lock()
	c.waiters[id] = ch
	c.mu.Unlock()
	return c.request(ctx, id, ch, frame)
}

func (c *Client) newRequest(kind string) (string, chan json.RawMessage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqSeq++
	id := c.ClientID + "-" + kind + "-" + strconv.Itoa(c.reqSeq)
	ch := make(chan json.RawMessage, 1)
	c.waiters[id] = ch
	return id, ch
}

func (c *Client) request(ctx context.Context, id string, ch chan json.RawMessage, frame any) (json.RawMessage, error) {
	defer func() {
		c.mu.Lock()
		delete(c.waiters, id)
		c.mu.Unlock()
	}()
	if err := c.SendJSON(ctx, frame); err != nil {
		return nil, err
	}
	select {
	case ans := <-ch:
		return ans, nil
	case <-c.done:
		return nil, fmt.Errorf("connection closed (status %d) before answer to %s", c.CloseStatus(), id)
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for answer to %s: %w", id, ctx.Err())
	}
}

// WaitFor blocks until cond holds for the replica, the connection ends or
// ctx ends.
func (c *Client) WaitFor(ctx context.Context, cond func(*State) bool) error {
	for {
		c.mu.Lock()
		ok := cond(c.state)
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-c.done:
			c.mu.Lock()
			ok := cond(c.state)
			c.mu.Unlock()
			if ok {
				return nil
			}
			return fmt.Errorf("connection closed (status %d) while waiting", c.CloseStatus())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitWelcome waits for the welcome frame.
func (c *Client) WaitWelcome(ctx context.Context) error {
	return c.WaitFor(ctx, func(*State) bool { return c.welcome != nil })
}

// WaitPokes waits until the client received at least n pokes.
func (c *Client) WaitPokes(ctx context.Context, n int) error {
	return c.WaitFor(ctx, func(*State) bool { return c.pokeCount >= n })
}

// PokeCount is the number of pokes applied so far.
func (c *Client) PokeCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pokeCount
}

// WaitLMID waits until the replica confirms the client's mutation id.
func (c *Client) WaitLMID(ctx context.Context, id int64) error {
	return c.WaitFor(ctx, func(s *State) bool { return s.LMIDs[c.ClientID] >= id })
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		_, data, err := c.ws.Read(context.Background())
		if err != nil {
			c.mu.Lock()
			c.closed = err
			c.closeStatus = websocket.CloseStatus(err)
			c.signalLocked()
			c.mu.Unlock()
			return
		}
		c.handle(data, time.Now())
	}
}

// frame is any server frame, decoded in one pass: a poke's body is parsed
// along with the rest (pulled bodies are too, and ignored here).
type frame struct {
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	BaseCookie json.RawMessage `json:"baseCookie"`
	Body       *pullResponse   `json:"body"`
}

func (c *Client) handle(data []byte, at time.Time) {
	var f frame
	var err error
	if base, body, ok := decodePokeFast(data); ok {
		f = frame{Type: protocol.TypePoke, BaseCookie: base, Body: body}
	} else {
		err = json.Unmarshal(data, &f)
	}
	c.mu.Lock()
	if err != nil {
		// A pulled body that is not a pull response is not ours to judge
		// here (its waiter gets it raw); anything else is a broken frame.
		var head struct {
			Type string `json:"type"`
			ID   string `json:"id"`
		}
		if json.Unmarshal(data, &head) != nil || head.Type == protocol.TypePoke {
			c.errs = append(c.errs, fmt.Errorf("undecodable frame %.200q: %w", data, err))
			c.signalLocked()
			c.mu.Unlock()
			return
		}
		f = frame{Type: head.Type, ID: head.ID}
	}
	var (
		p       Poke
		patch   []PatchOp
		applied bool
	)
	switch f.Type {
	case protocol.TypeWelcome:
		var w protocol.Welcome
		_ = json.Unmarshal(data, &w)
		c.welcome = &w
	case protocol.TypePoke:
		if !jsonEqual(f.BaseCookie, c.state.Cookie) {
			c.errs = append(c.errs, fmt.Errorf("%w: poke base %s, client at %s", ErrChainBroken, f.BaseCookie, c.state.Cookie))
			break
		}
		if f.Body == nil {
			c.errs = append(c.errs, fmt.Errorf("poke without body: %.200q", data))
			break
		}
		p = c.apply(f.BaseCookie, f.Body)
		p.Bytes, p.At = len(data), at
		patch, applied = f.Body.Patch, true
		c.pokeCount++
		if c.keepPokes {
			c.pokes = append(c.pokes, p)
		}
	case protocol.TypePulled:
		if base, ok := c.pullBases[f.ID]; ok && f.Body != nil {
			c.apply(base, f.Body)
		}
		if ch, ok := c.waiters[f.ID]; ok {
			ch <- json.RawMessage(bytes.Clone(data))
		}
	case protocol.TypePushed, protocol.TypeError:
		if ch, ok := c.waiters[f.ID]; ok {
			ch <- json.RawMessage(bytes.Clone(data))
		}
	}
	c.signalLocked()
	onPoke := c.onPoke
	c.mu.Unlock()
	if applied && onPoke != nil {
		onPoke(p, patch)
	}
}

// apply applies a pull response whose request cookie was base, as Replicache
// does: ignored unless base is the current cookie; ignored if its cookie
// equals base. Under mu.
func (c *Client) apply(base json.RawMessage, r *pullResponse) Poke {
	p := Poke{Base: base, At: time.Now()}
	if r.Error != "" {
		p.Refused = r.Error
		return p
	}
	p.Cookie, _ = strconv.ParseInt(string(r.Cookie), 10, 64)
	p.Ops = len(r.Patch)
	if !jsonEqual(base, c.state.Cookie) || jsonEqual(r.Cookie, base) {
		return p
	}
	for id, lmid := range r.LMIDs {
		if lmid < c.state.LMIDs[id] {
			c.errs = append(c.errs, fmt.Errorf("lastMutationID of %s went back from %d to %d", id, c.state.LMIDs[id], lmid))
		}
		c.state.LMIDs[id] = lmid
	}
	for _, op := range r.Patch {
		switch op.Op {
		case "clear":
			p.Cleared = true
			c.state.Data = map[string]json.RawMessage{}
		case "put":
			c.state.Data[op.Key] = op.Value
		case "del":
			delete(c.state.Data, op.Key)
		}
	}
	c.state.Cookie = r.Cookie
	return p
}

func (c *Client) signalLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func jsonEqual(a, b json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(a), bytes.TrimSpace(b))
}
