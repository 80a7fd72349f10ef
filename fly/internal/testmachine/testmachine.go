// Package testmachine is a small machine for flylocal's tests: a test binary re-executes itself as a machine
// (Main checks EnvVar), which is then a real process with Fly's environment that serves HTTP and WebSockets on
// PORT. Tests steer it with request headers:
//
//   - X-Test-Replay: v — if the request has no Fly-Replay-Src, answer 307 with fly-replay: v (what the router
//     does); WebSocket upgrades included.
//   - X-Test-Replay-Until: n — answer fly-replay: elsewhere=true;state=<k+1> while the state k of the request's
//     Fly-Replay-Src (0 without one) is below n: a chain of n replays.
//
// Paths: /ws accepts a WebSocket and echoes each message prefixed with "<machine id>: "; /exit?code=n answers,
// then exits with status n; anything else answers 200 with an Echo of the request as JSON. With
// TEST_IGNORE_SIGTERM=1 the machine ignores SIGTERM (to test SIGKILL after the kill timeout); otherwise SIGTERM
// makes it exit with status 0.
package testmachine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/coder/websocket"

	"github.com/spaceport-sync/spaceport/fly/replay"
)

// EnvVar, when set in a test binary's environment, makes Main run the machine instead of the tests.
const EnvVar = "FLYLOCAL_TEST_MACHINE"

// Main runs the machine if this process was started as one (EnvVar set), else the tests. Call it from TestMain.
func Main(m *testing.M) {
	if os.Getenv(EnvVar) != "" {
		if err := Run(); err != nil {
			fmt.Fprintln(os.Stderr, "testmachine:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Command returns the command that runs the current test binary as a machine, and the environment that selects
// it. The environment also stops the race detector's one-second sleep at exit, which would slow every stop.
func Command() (command []string, env map[string]string) {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return []string{exe}, map[string]string{
		EnvVar:   "1",
		"GORACE": strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0"),
	}
}

// Echo is what the machine answers: who it is and the request it received.
type Echo struct {
	App, Machine string
	Pid          int
	Env          map[string]string // the environment variables named in EchoEnv
	Method, Path string
	RawQuery     string
	Header       http.Header
	BodyLen      int
	BodySHA256   string
	ReplaySrc    string // the Fly-Replay-Src header
}

// EchoEnv are the environment variables an Echo reports.
var EchoEnv = []string{"FLY_APP_NAME", "FLY_MACHINE_ID", "FLY_ALLOC_ID", "FLY_REGION", "PRIMARY_REGION",
	"FLY_PRIVATE_IP", "PORT", "DATABASE_URL", "TEST_GLOBAL", "TEST_APP"}

// Run serves on PORT until SIGTERM.
func Run() error {
	id := os.Getenv("FLY_MACHINE_ID")
	ctx := context.Background()
	if os.Getenv("TEST_IGNORE_SIGTERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
	} else {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGTERM)
		defer stop()
	}

	srv := &http.Server{Addr: ":" + os.Getenv("PORT"), Handler: http.HandlerFunc(serve)}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Printf("machine %s listening on %s\n", id, srv.Addr)
	fmt.Fprintf(os.Stderr, "machine %s says hello on stderr\n", id)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	fmt.Printf("machine %s stopping\n", id)
	return nil
}

func serve(w http.ResponseWriter, r *http.Request) {
	id := os.Getenv("FLY_MACHINE_ID")
	src := r.Header.Get(replay.SourceHeader)

	if v := r.Header.Get("X-Test-Replay"); v != "" && src == "" {
		w.Header().Set(replay.Header, v)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	if v := r.Header.Get("X-Test-Replay-Until"); v != "" {
		until, _ := strconv.Atoi(v)
		hop := 0
		if src != "" {
			s, err := replay.ParseSource(src)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			hop, _ = strconv.Atoi(s.State)
		}
		if hop < until {
			w.Header().Set(replay.Header, replay.Replay{Elsewhere: true, State: strconv.Itoa(hop + 1)}.String())
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
	}

	switch r.URL.Path {
	case "/ws":
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer func() { _ = c.CloseNow() }()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte(id+": "), msg...)); err != nil {
				return
			}
		}
	case "/exit":
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
		_ = http.NewResponseController(w).Flush()
		os.Exit(code)
	}

	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sum := sha256.Sum256(body)
	e := Echo{
		App: os.Getenv("FLY_APP_NAME"), Machine: id, Pid: os.Getpid(), Env: map[string]string{},
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header,
		BodyLen: len(body), BodySHA256: hex.EncodeToString(sum[:]), ReplaySrc: src,
	}
	for _, k := range EchoEnv {
		if v, ok := os.LookupEnv(k); ok {
			e.Env[k] = v
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(e)
}
