package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// syncBuffer collects the router's log safely across goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func TestRun_ServesAndShutsDown(t *testing.T) {
	static := t.TempDir()
	if err := os.WriteFile(filepath.Join(static, "index.html"), []byte("app"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	env := map[string]string{
		"PORT":           port,
		"DATABASE_URL":   pgtest.NewDatabase(t),
		"STATIC_DIR":     static,
		"FLY_MACHINE_ID": "148ed193b95068",
		"FLY_REGION":     "local",
		"AUTH_DISABLED":  "1",
	}
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	done := make(chan struct{})
	go func() { defer close(done); runErr = run(ctx, nil, func(k string) string { return env[k] }, &logs) }()
	t.Cleanup(func() { cancel(); <-done })

	base := "http://127.0.0.1:" + port
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("router never became ready; log:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / = %d, want the frontend", resp.StatusCode)
	}

	cancel()
	select {
	case <-done:
		if runErr != nil {
			t.Fatalf("run returned %v after shutdown, want nil", runErr)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after its context was canceled")
	}
	// On Fly (FLY_MACHINE_ID set) logs are JSON lines carrying the machine.
	first, _, _ := strings.Cut(logs.String(), "\n")
	var line map[string]any
	if err := json.Unmarshal([]byte(first), &line); err != nil || line["machine"] != "148ed193b95068" || line["region"] != "local" {
		t.Fatalf("first log line %q is not JSON with machine and region", first)
	}
}

func TestRun_BadConfig(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"no database":    {"AUTH_DISABLED": "1"},
		"bad log format": {"DATABASE_URL": "postgres://localhost/x", "LOG_FORMAT": "xml", "AUTH_DISABLED": "1"},
		"bad log level":  {"DATABASE_URL": "postgres://localhost/x", "LOG_LEVEL": "loud", "AUTH_DISABLED": "1"},
		"bad url":        {"DATABASE_URL": "postgres://u:secret@[::1", "AUTH_DISABLED": "1"},
		"no auth secret": {"DATABASE_URL": "postgres://localhost/x"},
		"short secret":   {"DATABASE_URL": "postgres://localhost/x", "AUTH_SECRET": "tiny"},
		// Handing out tokens to anyone is refused outside flylocal.
		"dev tokens in production": {"DATABASE_URL": "postgres://localhost/x", "AUTH_SECRET": strings.Repeat("k", 32), "DEV_TOKENS": "1", "FLY_REGION": "iad"},
		"dev tokens without auth":  {"DATABASE_URL": "postgres://localhost/x", "AUTH_DISABLED": "1", "DEV_TOKENS": "1", "FLY_REGION": "local"},
		"unknown placement":        {"DATABASE_URL": "postgres://localhost/x", "AUTH_DISABLED": "1", "PLACEMENT": "random"},
		"dedicated without image":  {"DATABASE_URL": "postgres://localhost/x", "AUTH_DISABLED": "1", "PLACEMENT": "dedicated"},
		"bad reconcile interval": {"DATABASE_URL": "postgres://localhost/x", "AUTH_DISABLED": "1", "PLACEMENT": "dedicated",
			"BACKEND_IMAGE": "img", "RECONCILE_INTERVAL": "often"},
		"bad data clusters": {"DATABASE_URL": "postgres://localhost/x", "AUTH_DISABLED": "1", "DATA_CLUSTERS": "b=postgres://u:secret@[::1"},
		"unknown new-space cluster": {"DATABASE_URL": "postgres://localhost/x", "AUTH_DISABLED": "1",
			"DATA_CLUSTERS": "b=postgres://h/db", "NEW_SPACE_CLUSTERS": "c"},
	} {
		var logs syncBuffer
		err := run(context.Background(), nil, func(k string) string { return env[k] }, &logs)
		if err == nil {
			t.Errorf("%s: run succeeded", name)
		} else if strings.Contains(err.Error(), ":secret@") || strings.Contains(err.Error(), "tiny") {
			t.Errorf("%s: error %q reveals the password", name, err)
		}
	}
	if err := run(context.Background(), []string{"extra"}, func(string) string { return "" }, &syncBuffer{}); err == nil {
		t.Error("run with an argument succeeded")
	}
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &syncBuffer{}); err != nil {
		t.Errorf("run -h = %v, want nil", err)
	}
}
