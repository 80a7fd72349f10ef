package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/loadgen"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
	"github.com/spaceport-sync/spaceport/backend/todoapp"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func startBackend(t *testing.T) string {
	t.Helper()
	st, _ := storetest.Open(t, pgtest.NewDatabase(t))
	reg := mutator.NewRegistry()
	todoapp.Register(reg)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := wsserver.New(wsserver.Config{Logger: log}, space.NewManager(space.Config{Logger: log}, st, reg))
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		ts.Close()
	})
	return ts.URL
}

func noEnv(string) string { return "" }

func TestCommandPrintsVerifiedResult(t *testing.T) {
	url := startBackend(t)
	var stdout, stderr bytes.Buffer
	args := []string{"-url", url, "-clients", "3", "-rate", "90", "-duration", "1s", "-mix", "increment=2,updateTodo=1",
		"-metrics-url", url + "/metrics"}
	if err := run(context.Background(), args, noEnv, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	var res loadgen.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not a JSON result: %v\n%s", err, stdout.String())
	}
	if !res.OK || res.Load == nil || res.Load.AckedInWindow == 0 || res.Command != "loadgen "+strings.Join(args, " ") {
		t.Fatalf("result: ok=%v load=%+v command=%q", res.OK, res.Load, res.Command)
	}
	if res.Server["mutations_ok"] < float64(res.Load.AckedInWindow) {
		t.Errorf("server counted %v mutations, the clients %d", res.Server["mutations_ok"], res.Load.AckedInWindow)
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "loadgen: OK") {
		t.Errorf("last stderr line is not the summary: %q", last)
	}
}

func TestCommandUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-url", "http://127.0.0.1:1", "extra"},
		{"-url", "http://127.0.0.1:1", "-mix", "nope"},
		{"-bogus"},
	} {
		if err := run(context.Background(), args, noEnv, io.Discard, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}
