package wsserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
	"github.com/spaceport-sync/spaceport/fly/replay"
)

const testSecret = "test-secret-test-secret-test-secret!"

func authBackend(t *testing.T, cfg wsserver.Config) (*backend, *auth.Keys) {
	t.Helper()
	keys, err := auth.NewKeys(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Auth = keys
	return startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{ws: cfg}), keys
}

func token(t *testing.T, k *auth.Keys, user, spaces string, role mutator.Role, ttl time.Duration) string {
	t.Helper()
	tok, err := k.Issue(auth.Grant{UserID: user, Spaces: spaces, Role: role, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dialClosed connects with o and waits for the server to close the
// connection; it returns the close code.
func dialClosed(t *testing.T, url string, o syncclient.Options) int {
	t.Helper()
	c, err := syncclient.Dial(testCtx(t), url, o)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c)
	return int(c.CloseStatus())
}

func TestAuth_TokensAreCheckedAfterTheUpgrade(t *testing.T) {
	b, k := authBackend(t, wsserver.Config{})
	expired := expiredToken(t, testSecret)
	for name, tc := range map[string]struct {
		query string
		code  int
	}{
		"missing":     {"", 4001},
		"garbage":     {"?token=garbage", 4001},
		"expired":     {"?token=" + expired, 4001},
		"other space": {"?token=" + token(t, k, "alice", "other-*", mutator.RoleEditor, time.Hour), 4003},
		"forged":      {"?token=" + token(t, mustKeys(t, strings.Repeat("z", 40)), "alice", "*", mutator.RoleEditor, time.Hour), 4001},
	} {
		if got := dialClosed(t, b.url("s")+tc.query, syncclient.Options{}); got != tc.code {
			t.Errorf("%s: closed with %d, want %d", name, got, tc.code)
		}
	}
	ok := b.dial(t, "s", syncclient.Options{}.WithToken(token(t, k, "alice", "s", mutator.RoleEditor, time.Hour)))
	mustMutate(t, ok, "increment", map[string]any{"key": "n", "delta": 1})
}

// expiredToken is a token signed with secret, as Issue would sign it, that
// expired an hour ago.
func expiredToken(t *testing.T, secret string) string {
	t.Helper()
	claims := auth.Claims{Spaces: "*", Role: mutator.RoleEditor, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: auth.Issuer, Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Hour)),
	}}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustKeys(t *testing.T, secret string) *auth.Keys {
	t.Helper()
	k, err := auth.NewKeys(secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Mutators see the caller: a viewer may only increment reactions/ keys; its
// other mutations are refused as permanent errors (lastMutationID advances).
func TestAuth_ViewersMayOnlyReact(t *testing.T) {
	b, k := authBackend(t, wsserver.Config{})
	editor := b.dial(t, "s", syncclient.Options{}.WithToken(token(t, k, "ed", "s", mutator.RoleEditor, time.Hour)))
	mustMutate(t, editor, "createTodo", map[string]any{"id": "t1", "text": "mine"})
	viewer := b.dial(t, "s", syncclient.Options{}.WithToken(token(t, k, "vi", "s", mutator.RoleViewer, time.Hour)))
	mustMutate(t, viewer, "createTodo", map[string]any{"id": "t2", "text": "sneaky"})
	mustMutate(t, viewer, "deleteTodo", "t1")
	mustMutate(t, viewer, "increment", map[string]any{"key": "counter", "delta": 1})
	mustMutate(t, viewer, "increment", map[string]any{"key": "reactions/like", "delta": 1})
	s := viewer.State()
	if s.Data["todo/t1"] == nil || s.Data["todo/t2"] != nil || s.Data["counter"] != nil || string(s.Data["reactions/like"]) != "1" {
		t.Fatalf("viewer's effects: %v", keys(s))
	}
}

// Mutation recovery may push for another client group, but only for a group
// of the same user.
func TestAuth_ClientGroupsBelongToTheirUser(t *testing.T) {
	b, k := authBackend(t, wsserver.Config{})
	alice := b.dial(t, "s", syncclient.Options{ClientGroupID: "alice-group"}.WithToken(token(t, k, "alice", "s", mutator.RoleEditor, time.Hour)))
	mustMutate(t, alice, "increment", map[string]any{"key": "n", "delta": 1})
	mallory := b.dial(t, "s", syncclient.Options{}.WithToken(token(t, k, "mallory", "s", mutator.RoleEditor, time.Hour)))
	m := mallory.Mutation("increment", map[string]any{"key": "n", "delta": 100})
	ans, err := mallory.PushAs(testCtx(t), "alice-group", m)
	if err != nil || !strings.Contains(string(ans), `"code":"forbidden"`) {
		t.Fatalf("push into another user's group: %s %v", ans, err)
	}
}

// A new client group belongs to the user whose connection named it first,
// from its hello on, not from its first push: another user who learnt its ID
// can neither push into it nor open a connection with it meanwhile.
func TestAuth_NewClientGroupIsClaimedAtHello(t *testing.T) {
	b, k := authBackend(t, wsserver.Config{})
	aliceTok, malloryTok := token(t, k, "alice", "s", mutator.RoleEditor, time.Hour), token(t, k, "mallory", "s", mutator.RoleEditor, time.Hour)
	alice := b.dial(t, "s", syncclient.Options{ClientGroupID: "alice-new", ClientID: "alice-tab"}.WithToken(aliceTok))

	mallory := b.dial(t, "s", syncclient.Options{}.WithToken(malloryTok))
	m := protocol.Mutation{ClientID: "alice-tab", ID: 1, Name: "increment", Args: json.RawMessage(`{"key":"n","delta":100}`), Timestamp: 1}
	ans, err := mallory.PushAs(testCtx(t), "alice-new", m)
	if err != nil || !strings.Contains(string(ans), `"code":"forbidden"`) {
		t.Fatalf("push into a group alice claimed at hello: %s %v", ans, err)
	}
	squat := syncclient.Options{ClientGroupID: "alice-new"}.WithToken(malloryTok)
	if got := dialClosed(t, b.url("s"), squat); got != 4003 {
		t.Fatalf("hello with another user's client group closed with %d, want 4003", got)
	}

	// Alice's first push is hers; the counter holds only her increment.
	mustMutate(t, alice, "increment", map[string]any{"key": "n", "delta": 1})
	if got := string(alice.State().Data["n"]); got != "1" {
		t.Fatalf("n = %s, want 1", got)
	}
}

func TestAuth_TokenExpiringWhileConnectedCloses4001(t *testing.T) {
	b, k := authBackend(t, wsserver.Config{})
	// The token must outlive the dial and the first poke. A busy machine may
	// take longer than a short token lives: then the connection is refused
	// (4001 too, but not what this test is about), and it tries again with a
	// token that lives twice as long.
	for ttl := 2 * time.Second; ; ttl *= 2 {
		if ttl > time.Minute {
			t.Fatal("the connection never got its first poke before its token expired")
		}
		ctx, cancel := context.WithTimeout(context.Background(), ttl+30*time.Second)
		defer cancel()
		c, err := syncclient.Dial(ctx, b.url("s"), syncclient.Options{}.WithToken(token(t, k, "alice", "s", mutator.RoleEditor, ttl)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Kill()
		if err := c.WaitPokes(ctx, 1); err != nil {
			if got := c.CloseStatus(); got != 4001 {
				t.Fatalf("closed with %d before the first poke, want 4001 (expired)", got)
			}
			t.Logf("the %s token expired before the first poke; trying a longer one", ttl)
			continue
		}
		select {
		case <-c.Done():
		case <-ctx.Done():
			t.Fatal("not closed when the token expired")
		}
		if got, reason := c.CloseStatus(), c.CloseReason(); got != 4001 || reason != "token expired" {
			t.Fatalf("closed with %d %q, want 4001 \"token expired\"", got, reason)
		}
		return
	}
}

// With a replay secret, only requests replayed by the edge with that secret
// in their state reach the WebSocket.
func TestReplaySecret_RefusesRequestsAroundTheRouter(t *testing.T) {
	b := startBackend(t, pgtest.NewDatabase(t), "m1", backendOpts{ws: wsserver.Config{ReplaySecret: "s3cret"}})
	for name, h := range map[string]string{
		"no header":    "",
		"wrong secret": replay.Source{Instance: "aaaaaaaaaaaaaa", Region: "local", Time: time.Now(), State: "guess"}.String(),
		"malformed":    `state="unterminated`,
	} {
		req, _ := http.NewRequest("GET", b.http.URL+"/api/replicache/websocket/s", nil)
		if h != "" {
			req.Header.Set(replay.SourceHeader, h)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", name, resp.StatusCode)
		}
	}
	hdr := http.Header{}
	hdr.Set(replay.SourceHeader, replay.Source{Instance: "aaaaaaaaaaaaaa", Region: "local", Time: time.Now(), State: "s3cret"}.String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := syncclient.Dial(ctx, b.url("s"), syncclient.Options{Header: hdr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Kill()
	if err := c.WaitPokes(ctx, 1); err != nil {
		t.Fatal(err)
	}
}
