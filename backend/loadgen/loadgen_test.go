package loadgen_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/loadgen"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/backend/todoapp"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testSecret is the AUTH_SECRET of the backends that check tokens.
const testSecret = "loadgen-test-secret-loadgen-test-secret"

// startBackend runs a backend (engine, WebSocket server, todo app mutators)
// on a real socket and a real Postgres, and returns its base URL. With
// withAuth it checks tokens signed with testSecret.
func startBackend(t *testing.T, withAuth bool) string {
	t.Helper()
	st, _ := storetest.Open(t, pgtest.NewDatabase(t))
	reg := mutator.NewRegistry()
	todoapp.Register(reg)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	spaces := space.NewManager(space.Config{Owner: "m1", Logger: log}, st, reg)
	cfg := wsserver.Config{MachineID: "m1", Logger: log}
	if withAuth {
		var err error
		if cfg.Auth, err = auth.NewKeys(testSecret); err != nil {
			t.Fatal(err)
		}
	}
	srv := wsserver.New(cfg, spaces)
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		ts.Close()
	})
	return ts.URL
}

func TestRunVerifiesAgainstRealBackend(t *testing.T) {
	url := startBackend(t, true)
	mix, err := loadgen.ParseMix("increment=4,createTodo=1,updateTodo=2,deleteTodo=1")
	if err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	res, err := loadgen.Run(context.Background(), loadgen.Config{
		URLs:             []string{url},
		Spaces:           2,
		Clients:          4,
		Rate:             400,
		Duration:         2 * time.Second,
		Mix:              mix,
		Seed:             50,
		AuthSecret:       testSecret,
		Progress:         &progress,
		ProgressInterval: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(progress.String())
	if !res.OK {
		t.Fatalf("verification failed: %v", res.Failures)
	}
	l := res.Load
	if l == nil || l.AckedInWindow == 0 || l.PushToPushedMS.Count == 0 || l.PushToPokeMS.Count == 0 || l.PokeBytes.Count == 0 {
		t.Fatalf("nothing measured: %+v", l)
	}
	if l.MutationsByName["increment"] == 0 || l.MutationsByName["createTodo"] == 0 {
		t.Errorf("the mix was not followed: %v", l.MutationsByName)
	}
	v := res.Verify
	if v.Replicas != 8 || v.Increments != l.MutationsByName["increment"] || v.Todos == 0 {
		t.Errorf("verification compared too little: %+v (made %v)", v, l.MutationsByName)
	}
	// Every client's counter is in the server state, and the seed entries.
	if v.Keys < 2*50+8 {
		t.Errorf("server keys = %d, want at least the seed and the counters", v.Keys)
	}
	if res.Connect.InitialPokeBytes.Min == 0 || res.Connect.WelcomeMS.Count != 8 {
		t.Errorf("connect figures missing: %+v", res.Connect)
	}
	if !strings.Contains(progress.String(), "conns=8/8") {
		t.Errorf("no progress lines: %q", progress.String())
	}
	if s := res.Summary(); !strings.HasPrefix(s, "loadgen: OK") {
		t.Errorf("summary = %q", s)
	}
}

// A write the load generator did not make to a counter it owns must fail
// the run, named as a doubled increment: verification is not a formality.
func TestRunFailsLoudlyOnDoubledIncrement(t *testing.T) {
	url := startBackend(t, false)
	const prefix = "lg-rogue"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rogue, err := syncclient.Dial(ctx, strings.Replace(url, "http", "ws", 1)+"/api/replicache/websocket/"+prefix+"-0", syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	if _, err := rogue.Mutate(ctx, "increment", map[string]any{"key": "count/" + prefix + "-0-c1", "delta": 1}); err != nil {
		t.Fatal(err)
	}
	res, err := loadgen.Run(ctx, loadgen.Config{
		URLs: []string{url}, SpacePrefix: prefix, Clients: 3, Rate: 150, Duration: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK {
		t.Fatal("verification passed although a counter holds one increment more than was acknowledged")
	}
	found := false
	for _, f := range res.Failures {
		if strings.Contains(f, "DOUBLED 1 increments") && strings.Contains(f, prefix+"-0-c1") {
			found = true
		}
	}
	if !found || !strings.HasPrefix(res.Summary(), "loadgen: FAILED") {
		t.Fatalf("failures do not name the doubled increment: %v", res.Failures)
	}
}

func TestIdleModeAndConfigErrors(t *testing.T) {
	url := startBackend(t, false)
	res, err := loadgen.Run(context.Background(), loadgen.Config{
		URLs: []string{url}, Mode: loadgen.ModeIdle, Clients: 20, Duration: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK || res.Load != nil || res.Verify.Replicas != 20 {
		t.Fatalf("idle run: ok=%v load=%v verify=%+v failures=%v", res.OK, res.Load, res.Verify, res.Failures)
	}
	for _, cfg := range []loadgen.Config{
		{},
		{URLs: []string{"ftp://x"}},
		{URLs: []string{url}, Mode: "fly"},
		{URLs: []string{url}, Mode: loadgen.ModeSeed},
		{URLs: []string{url}, SpacePrefix: "bad prefix"},
		{URLs: []string{url}, Rate: -1},
		{URLs: []string{url}, AuthSecret: "short"},
	} {
		if _, err := loadgen.Run(context.Background(), cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	// Without a token, a backend that checks them refuses every client (4001):
	// the run cannot be carried out.
	secured := startBackend(t, true)
	if _, err := loadgen.Run(context.Background(), loadgen.Config{URLs: []string{secured}, Clients: 1, Duration: -1,
		ConnectTimeout: time.Second}); err == nil {
		t.Error("run without tokens against a backend that checks them did not fail")
	}
	for _, bad := range []string{"", "increment=x", "dance", "increment=0"} {
		if _, err := loadgen.ParseMix(bad); err == nil {
			t.Errorf("mix %q accepted", bad)
		}
	}
}

// Hostile clients attack a space while honest clients load it: each attack
// ends as the protocol says (its own close code or error answer), and the
// honest clients lose nothing (verification passes).
func TestRunWithHostileClients(t *testing.T) {
	url := startBackend(t, true)
	res, err := loadgen.Run(context.Background(), loadgen.Config{
		URLs: []string{url}, Clients: 4, Rate: 200, Duration: loadgen.SlowlorisHold + 3*time.Second,
		Hostile: 6, AuthSecret: testSecret,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK {
		t.Fatalf("honest clients' verification failed under attack: %v", res.Failures)
	}
	h := res.Hostile
	if h == nil {
		t.Fatal("no hostile result")
	}
	t.Logf("%d attack rounds: %v", h.Rounds, h.Outcomes)
	for _, want := range []string{
		loadgen.AttackGarbage + ": closed 4000",
		loadgen.AttackHuge + ": closed 1009",
		loadgen.AttackFlood + ": closed 4029",
		loadgen.AttackForeign + ": answered forbidden",
		loadgen.AttackFuture + ": pushed",
	} {
		if h.Outcomes[want] == 0 {
			t.Errorf("no attack ended as %q", want)
		}
	}
	for outcome, n := range h.Outcomes {
		if strings.HasPrefix(outcome, loadgen.AttackSlowloris+": ") {
			return
		} else if n == 0 {
			t.Errorf("outcome %q counted zero times", outcome)
		}
	}
	t.Error("no slowloris round finished")
}
