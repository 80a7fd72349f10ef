package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

// Attacks a hostile client makes (Config.Hostile). Attacker k makes
// attacks[k % len(attacks)] over and over while the load runs.
const (
	// AttackGarbage sends a frame that is not JSON.
	AttackGarbage = "garbage"
	// AttackHuge sends a frame past the server's frame limit (HugeFrameBytes).
	AttackHuge = "huge"
	// AttackFlood sends pushes as fast as the socket takes them, never
	// waiting for an answer.
	AttackFlood = "flood"
	// AttackForeign pushes as an honest client of the space: its client
	// group and client ID, the next mutation ID.
	AttackForeign = "foreign"
	// AttackFuture pushes a mutation ID far beyond its client's last one.
	AttackFuture = "future"
	// AttackSlowloris says hello, then never reads (SlowlorisHold), while
	// the space's pokes pile up for it.
	AttackSlowloris = "slowloris"
)

var attacks = []string{AttackGarbage, AttackHuge, AttackFlood, AttackForeign, AttackFuture, AttackSlowloris}

// Sizes and times of the attacks.
const (
	// HugeFrameBytes is past the backend's default frame limit (4 MiB).
	HugeFrameBytes = 5 << 20
	// FloodPushes bounds one flood: past the default push burst (200).
	FloodPushes = 1000
	// SlowlorisHold is how long a slowloris connection stays unread.
	SlowlorisHold = 5 * time.Second
	// attackPause separates one attacker's rounds, so a refused attacker
	// reconnects as a browser retrying without backoff would.
	attackPause = 20 * time.Millisecond
	// attackTimeout bounds one round.
	attackTimeout = 15 * time.Second
)

// HostileResult is what the hostile clients did and how each attack ended:
// Outcomes counts "attack: outcome", the outcome being the close code the
// server sent ("closed 1009"), "answered <code>" for an error answer on an
// open connection, "pushed" for an accepted push, or what failed.
type HostileResult struct {
	Attackers int            `json:"attackers_per_space"`
	Rounds    int            `json:"rounds"`
	Outcomes  map[string]int `json:"outcomes"`
}

// hostiles runs cfg.Hostile attackers per space until ctx is done.
type hostiles struct {
	r *run
	// huge is the frame of AttackHuge, made once: every attacker sends it
	// over and over, and only the server need spend anything on it.
	huge []byte

	mu       sync.Mutex
	rounds   int
	outcomes map[string]int
}

func (h *hostiles) record(attack, outcome string) {
	h.mu.Lock()
	h.rounds++
	h.outcomes[attack+": "+outcome]++
	h.mu.Unlock()
}

// start launches the attackers; wait blocks until they all stopped after ctx
// is done.
func (h *hostiles) start(ctx context.Context) (wait func()) {
	h.huge = bytes.Repeat([]byte("x"), HugeFrameBytes)
	var wg sync.WaitGroup
	for _, sp := range h.r.spaces {
		for k := range h.r.cfg.Hostile {
			wg.Go(func() { h.attacker(ctx, sp, k) })
		}
	}
	return wg.Wait
}

func (h *hostiles) result() *HostileResult {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &HostileResult{Attackers: h.r.cfg.Hostile, Rounds: h.rounds, Outcomes: h.outcomes}
}

func (h *hostiles) attacker(ctx context.Context, sp *spaceRun, k int) {
	attack := attacks[k%len(attacks)]
	for round := 0; ctx.Err() == nil; round++ {
		rctx, cancel := context.WithTimeout(ctx, attackTimeout)
		outcome := h.attack(rctx, sp, attack, fmt.Sprintf("%s-h%d-%d", sp.id, k, round))
		cancel()
		if ctx.Err() != nil {
			return // a round cut short by the end of the load says nothing
		}
		h.record(attack, outcome)
		if !sleepCtx(ctx, attackPause) {
			return
		}
	}
}

// attack makes one round of an attack as a new client named id and says how
// it ended.
func (h *hostiles) attack(ctx context.Context, sp *spaceRun, attack, id string) string {
	tok, err := h.r.token(sp.id, id)
	if err != nil {
		return "token: " + err.Error()
	}
	if attack == AttackSlowloris {
		return slowloris(ctx, sp.wsURL, tok, id)
	}
	c, err := syncclient.Dial(ctx, sp.wsURL, syncclient.Options{
		Token: tok, ClientGroupID: "g-" + id, ClientID: id, DiscardPokes: true,
	})
	if err != nil {
		return "dial failed"
	}
	defer c.Kill()
	if err := c.WaitWelcome(ctx); err != nil {
		return closedOr(c, "no welcome")
	}
	switch attack {
	case AttackGarbage:
		_ = c.SendRaw(ctx, []byte("GET / HTTP/1.1 this is not a frame"))
	case AttackHuge:
		_ = c.SendRaw(ctx, h.huge)
	case AttackFlood:
		for i := range FloodPushes {
			m := c.Mutation("increment", map[string]any{"key": "hostile/" + id, "delta": 1})
			frame := map[string]any{"type": "push", "id": "f" + strconv.Itoa(i), "body": map[string]any{
				"pushVersion": 1, "schemaVersion": "1", "profileID": "p", "clientGroupID": c.ClientGroupID,
				"mutations": []protocol.Mutation{m}}}
			if c.SendJSON(ctx, frame) != nil {
				break
			}
		}
	case AttackForeign:
		// The server must refuse the group (it belongs to another user)
		// before it looks at the mutations; if it did not, the victim's
		// counter would be off and verification would fail the run.
		victim := sp.clients[len(id)%len(sp.clients)]
		m := protocol.Mutation{ClientID: victim.id, ID: 1, Name: "increment",
			Args: []byte(`{"key":"` + counterPrefix + victim.id + `","delta":1000}`), Timestamp: 1}
		return answer(c, func() ([]byte, error) { return c.PushAs(ctx, victim.group, m) })
	case AttackFuture:
		m := c.Mutation("increment", map[string]any{"key": "hostile/" + id, "delta": 1})
		m.ID = 1 << 40
		return answer(c, func() ([]byte, error) { return c.Push(ctx, m) })
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
	}
	return closedOr(c, "not closed")
}

// answer runs a push and says how the server answered it.
func answer(c *syncclient.Client, push func() ([]byte, error)) string {
	ans, err := push()
	if err != nil {
		return closedOr(c, "no answer")
	}
	var frame struct {
		Type     string `json:"type"`
		Code     string `json:"code"`
		Response *struct {
			Error string `json:"error"`
		} `json:"response"`
	}
	if json.Unmarshal(ans, &frame) != nil {
		return "unreadable answer"
	}
	switch {
	case frame.Type == "error":
		return "answered " + frame.Code
	case frame.Response != nil:
		return "pushed with " + frame.Response.Error
	default:
		return frame.Type
	}
}

// closedOr names the close code the server sent, or what when it sent none.
func closedOr(c *syncclient.Client, what string) string {
	select {
	case <-c.Done():
	case <-time.After(time.Second):
	}
	if code := c.CloseStatus(); code >= 0 {
		return "closed " + strconv.Itoa(int(code))
	}
	return what
}

// slowloris says hello and then never reads, for SlowlorisHold or until the
// server ends the connection (which it sees only as a failed write of its
// own: it sends nothing more).
func slowloris(ctx context.Context, wsURL, token, id string) string {
	ws, _, err := websocket.Dial(ctx, wsURL+"?token="+url.QueryEscape(token), nil)
	if err != nil {
		return "dial failed"
	}
	defer func() { _ = ws.CloseNow() }()
	hello := `{"type":"hello","clientGroupID":"g-` + id + `","clientID":"` + id + `","cookie":null,"schemaVersion":"1"}`
	if err := ws.Write(ctx, websocket.MessageText, []byte(hello)); err != nil {
		return "hello not sent"
	}
	if !sleepCtx(ctx, SlowlorisHold) {
		return "held"
	}
	// Now read what piled up: the server either dropped us or is still
	// sending.
	rctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
	defer cancel()
	for {
		if _, _, err := ws.Read(rctx); err != nil {
			if code := websocket.CloseStatus(err); code >= 0 {
				return "closed " + strconv.Itoa(int(code))
			}
			if errors.Is(err, context.DeadlineExceeded) || rctx.Err() != nil {
				return "held, still served"
			}
			return "dropped"
		}
	}
}
