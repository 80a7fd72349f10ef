package flylocal_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/replay"
)

// routerAndBackends opens the system's shape: a router app (the edge) with one machine and a backend app with n.
func routerAndBackends(t *testing.T, n int) (*testServer, flylocal.Machine, []flylocal.Machine) {
	t.Helper()
	ts := openServer(t, testConfig(t, app("router", 1), app("backend", n)))
	return ts, ts.machines(t, "router", 1)[0], ts.machines(t, "backend", n)
}

func TestReplay_ToInstance(t *testing.T) {
	ts, router, backends := routerAndBackends(t, 3)
	for _, state := range []string{"", "s1", `a;b,"c"=\d é`} {
		for _, target := range backends {
			r := replay.Replay{App: "backend", Instance: target.ID, State: state}
			before := time.Now()
			e := ts.echo(t, http.MethodGet, "/some/path?x=1&y=two", nil, header("X-Test-Replay", r.String()))
			if e.Machine != target.ID || e.App != "backend" {
				t.Fatalf("served by %s/%s, want backend/%s", e.App, e.Machine, target.ID)
			}
			if e.Method != http.MethodGet || e.Path != "/some/path" || e.RawQuery != "x=1&y=two" {
				t.Fatalf("target saw %s %s?%s", e.Method, e.Path, e.RawQuery)
			}
			src, err := replay.ParseSource(e.ReplaySrc)
			if err != nil {
				t.Fatalf("Fly-Replay-Src %q: %v", e.ReplaySrc, err)
			}
			if src.Instance != router.ID || src.Region != "local" || src.State != state {
				t.Fatalf("Fly-Replay-Src=%#v, want instance %s, region local, state %q", src, router.ID, state)
			}
			if src.Time.Before(before.Truncate(time.Microsecond)) || src.Time.After(time.Now()) {
				t.Fatalf("Fly-Replay-Src t=%v, want between %v and now", src.Time, before)
			}
			if got := e.Header.Get(replay.Header); got != "" {
				t.Fatalf("target got fly-replay %q", got)
			}
		}
	}
}

func TestReplay_PostBody(t *testing.T) {
	ts, _, backends := routerAndBackends(t, 2)
	body := make([]byte, 300<<10)
	_, _ = rand.Read(body)
	sum := sha256.Sum256(body)
	for _, tt := range []struct {
		name string
		body io.Reader
	}{
		{"content-length", bytes.NewReader(body)},
		{"chunked", struct{ io.Reader }{bytes.NewReader(body)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := header("X-Test-Replay", "app=backend;instance="+backends[1].ID, "Content-Type", "application/octet-stream")
			e := ts.echo(t, http.MethodPost, "/upload?n=1", tt.body, h)
			if e.Machine != backends[1].ID || e.Method != http.MethodPost || e.Path != "/upload" {
				t.Fatalf("served by %s: %s %s", e.Machine, e.Method, e.Path)
			}
			if e.BodyLen != len(body) || e.BodySHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("target got %d bytes (sha256 %s), want %d", e.BodyLen, e.BodySHA256, len(body))
			}
			if ct := e.Header.Get("Content-Type"); ct != "application/octet-stream" {
				t.Fatalf("Content-Type=%q", ct)
			}
		})
	}
}

func TestReplay_BodyLimit(t *testing.T) {
	ts, _, backends := routerAndBackends(t, 1)
	toBackend := "app=backend;instance=" + backends[0].ID

	// Exactly the limit can be replayed.
	e := ts.echo(t, http.MethodPut, "/", bytes.NewReader(make([]byte, flylocal.MaxReplayBody)), header("X-Test-Replay", toBackend))
	if e.Machine != backends[0].ID || e.BodyLen != flylocal.MaxReplayBody {
		t.Fatalf("served by %s with %d bytes", e.Machine, e.BodyLen)
	}
	// A larger body still reaches the edge app whole...
	big := make([]byte, 3*flylocal.MaxReplayBody+5)
	if e := ts.echo(t, http.MethodPut, "/", bytes.NewReader(big), nil); e.App != "router" || e.BodyLen != len(big) {
		t.Fatalf("served by %s with %d bytes, want router with %d", e.App, e.BodyLen, len(big))
	}
	// ...but cannot be replayed.
	resp, b := ts.do(t, http.MethodPut, "/", bytes.NewReader(big), header("X-Test-Replay", toBackend))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), `"PA01"`) {
		t.Fatalf("status %d, body %s; want 502 PA01", resp.StatusCode, b)
	}
}

func TestReplay_ChainLimit(t *testing.T) {
	ts := openServer(t, testConfig(t, app("backend", 2)))
	// Ten replays in a row are allowed.
	e := ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay-Until", strconv.Itoa(flylocal.MaxReplays)))
	src, err := replay.ParseSource(e.ReplaySrc)
	if err != nil || src.State != strconv.Itoa(flylocal.MaxReplays) {
		t.Fatalf("Fly-Replay-Src %q (%v), want state %d", e.ReplaySrc, err, flylocal.MaxReplays)
	}
	// The eleventh is not.
	ts.proxyError(t, http.StatusBadGateway, "PA02", "/", header("X-Test-Replay-Until", strconv.Itoa(flylocal.MaxReplays+1)))
}

func TestReplay_Errors(t *testing.T) {
	ts, router, _ := routerAndBackends(t, 1)
	for _, tt := range []struct {
		name, replay string
		status       int
		code         string
	}{
		{"unknown instance", "app=backend;instance=0123456789abcd", http.StatusBadGateway, "PR02"},
		{"instance of another app", "app=backend;instance=" + router.ID, http.StatusBadGateway, "PR02"},
		{"instance not in the replaying app", "instance=0123456789abcd", http.StatusBadGateway, "PR02"},
		{"unknown app", "app=nowhere", http.StatusBadGateway, "PA04"},
		{"invalid replay", "instance=00bb33ff", http.StatusBadGateway, "PA03"},
		{"malformed replay", `app="backend`, http.StatusBadGateway, "PA03"},
		{"empty replay", "state=x", http.StatusBadGateway, "PA03"},
		{"other region", "app=backend;region=iad", http.StatusServiceUnavailable, "PR03"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			msg := ts.proxyError(t, tt.status, tt.code, "/", header("X-Test-Replay", tt.replay))
			t.Log(msg)
		})
	}
	// Regions flylocal has.
	for _, r := range []string{"app=backend;region=local", `app=backend;region="iad,any"`} {
		if e := ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", r)); e.App != "backend" {
			t.Fatalf("%s: served by %s", r, e.App)
		}
	}
}

func TestReplay_PreferInstance(t *testing.T) {
	ts, _, backends := routerAndBackends(t, 2)
	e := ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "app=backend;prefer_instance="+backends[1].ID))
	if e.Machine != backends[1].ID || e.Header.Get(replay.PreferredInstanceUnavailableHeader) != "" {
		t.Fatalf("served by %s with %q", e.Machine, e.Header.Get(replay.PreferredInstanceUnavailableHeader))
	}
	const gone = "0123456789abcd"
	e = ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "app=backend;prefer_instance="+gone))
	if e.App != "backend" || e.Header.Get(replay.PreferredInstanceUnavailableHeader) != gone {
		t.Fatalf("served by %s/%s with %s=%q", e.App, e.Machine, replay.PreferredInstanceUnavailableHeader,
			e.Header.Get(replay.PreferredInstanceUnavailableHeader))
	}
}

func TestReplay_Elsewhere(t *testing.T) {
	ts := openServer(t, testConfig(t, app("backend", 2)))
	ms := ts.machines(t, "backend", 2)
	ctx := context.Background()

	// With the other machine stopped, every request lands on ms[0]; elsewhere must wake ms[1] rather than send
	// the request back.
	if err := ts.Supervisor.Stop(ctx, ms[1].ID); err != nil {
		t.Fatal(err)
	}
	e := ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "elsewhere=true"))
	src, _ := replay.ParseSource(e.ReplaySrc)
	if src.Instance != ms[0].ID || e.Machine != ms[1].ID {
		t.Fatalf("replayed by %s to %s, want %s to %s", src.Instance, e.Machine, ms[0].ID, ms[1].ID)
	}

	// Both started: a replay never returns to the machine that asked.
	for range 6 {
		e := ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "elsewhere=true"))
		src, _ := replay.ParseSource(e.ReplaySrc)
		if src.Instance == "" || src.Instance == e.Machine {
			t.Fatalf("replayed by %q to %s", src.Instance, e.Machine)
		}
	}

}

func TestAutostart(t *testing.T) {
	noAuto := app("manual", 1)
	noAuto.Autostart = boolPtr(false)
	ts := openServer(t, testConfig(t, app("router", 1), app("backend", 2), noAuto))
	backends := ts.machines(t, "backend", 2)
	manual := ts.machines(t, "manual", 1)[0]
	ctx := context.Background()

	for _, id := range []string{backends[0].ID, manual.ID} {
		if err := ts.Supervisor.Stop(ctx, id); err != nil {
			t.Fatal(err)
		}
		if st, _ := ts.Supervisor.State(id); st != flylocal.StateStopped {
			t.Fatalf("machine %s is %s after Stop", id, st)
		}
	}

	e := ts.echo(t, http.MethodGet, "/", nil, header("X-Test-Replay", "app=backend;instance="+backends[0].ID))
	if e.Machine != backends[0].ID {
		t.Fatalf("served by %s, want %s", e.Machine, backends[0].ID)
	}
	if st, _ := ts.Supervisor.State(backends[0].ID); st != flylocal.StateStarted {
		t.Fatalf("autostarted machine is %s", st)
	}

	ts.proxyError(t, http.StatusServiceUnavailable, "PR01", "/", header("X-Test-Replay", "app=manual;instance="+manual.ID))
	ts.proxyError(t, http.StatusServiceUnavailable, "PR01", "/", header("X-Test-Replay", "app=manual"))
	if st, _ := ts.Supervisor.State(manual.ID); st != flylocal.StateStopped {
		t.Fatalf("machine of an app without autostart is %s", st)
	}

	// The edge app's only machine stopped: the next request starts it.
	router := ts.machines(t, "router", 1)[0]
	if err := ts.Supervisor.Stop(ctx, router.ID); err != nil {
		t.Fatal(err)
	}
	if e := ts.echo(t, http.MethodGet, "/", nil, nil); e.Machine != router.ID {
		t.Fatalf("served by %s, want %s", e.Machine, router.ID)
	}
}

func TestWebSocket_ReplayedAndTunnelled(t *testing.T) {
	ts, _, backends := routerAndBackends(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	wsURL := "ws" + strings.TrimPrefix(ts.URL(), "http") + "/ws"

	for _, target := range backends {
		c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{
			HTTPHeader: header("X-Test-Replay", "app=backend;instance="+target.ID),
		})
		if err != nil {
			t.Fatalf("dial: %v (response %v)", err, resp)
		}
		for i := range 3 {
			msg := "hello " + strconv.Itoa(i)
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := target.ID + ": " + msg; string(got) != want {
				t.Fatalf("read %q, want %q", got, want)
			}
		}
		if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
			t.Fatalf("close: %v", err)
		}
	}

	// A tunnel ends when its machine stops.
	c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{
		HTTPHeader: header("X-Test-Replay", "app=backend;instance="+backends[0].ID),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.CloseNow() }()
	if err := ts.Supervisor.Stop(ctx, backends[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); err == nil {
		t.Fatal("read from a tunnel to a stopped machine succeeded")
	}

	// A router that upgrades itself is tunnelled too (no fly-replay).
	c2, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c2.CloseNow() }()
	if err := c2.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c2.Read(ctx); err != nil || !strings.HasSuffix(string(got), ": x") {
		t.Fatalf("read %q, %v", got, err)
	}
}

func TestEdgeHeaders(t *testing.T) {
	ts, _, backends := routerAndBackends(t, 1)
	forged := replay.Source{Instance: "0123456789abcd", Region: "iad", State: "admin"}.String()
	for _, h := range []http.Header{
		header("X-Forwarded-For", "203.0.113.7", replay.SourceHeader, forged, "Fly-Client-IP", "203.0.113.7"),
		header("X-Forwarded-For", "203.0.113.7", replay.SourceHeader, forged, "Fly-Client-IP", "203.0.113.7",
			"X-Test-Replay", "app=backend;instance="+backends[0].ID),
	} {
		e := ts.echo(t, http.MethodGet, "/", nil, h)
		if got := e.Header.Get("Fly-Client-IP"); got != "127.0.0.1" {
			t.Errorf("Fly-Client-IP=%q", got)
		}
		if got := e.Header.Get("X-Forwarded-For"); got != "203.0.113.7, 127.0.0.1" {
			t.Errorf("X-Forwarded-For=%q", got)
		}
		if got := e.Header.Get("X-Forwarded-Proto"); got != "http" {
			t.Errorf("X-Forwarded-Proto=%q", got)
		}
		if got := e.Header.Get("Fly-Region"); got != "local" {
			t.Errorf("Fly-Region=%q", got)
		}
		if e.App == "router" && e.ReplaySrc != "" {
			t.Errorf("the client's Fly-Replay-Src reached the edge app: %q", e.ReplaySrc)
		}
		if src, _ := replay.ParseSource(e.ReplaySrc); e.App == "backend" && src.State == "admin" {
			t.Errorf("the client's Fly-Replay-Src reached the replay target: %q", e.ReplaySrc)
		}
	}
}
