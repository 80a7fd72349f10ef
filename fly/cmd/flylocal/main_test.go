package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/internal/testmachine"
)

func TestMain(m *testing.M) { testmachine.Main(m) }

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestRun runs flylocal as main does, with a config file, serves a request and stops on cancellation.
func TestRun(t *testing.T) {
	cmd, env := testmachine.Command()
	dir := t.TempDir()
	cfg := flylocal.Config{
		StateDir: filepath.Join(dir, "state"),
		Env:      env,
		Apps:     []flylocal.AppConfig{{Name: "router", Machines: 1, Command: cmd}},
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "flylocal.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-config", path, "-listen", addr}, &out) }()

	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flylocal did not answer: %v\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("run did not return after cancellation\n%s", out.String())
	}
	if !strings.Contains(out.String(), "[router ") || !strings.Contains(out.String(), "machine stopped") {
		t.Fatalf("output lacks the machine's lines or its stop:\n%s", out.String())
	}
}

func TestRun_BadConfig(t *testing.T) {
	var out syncBuffer
	if err := run(context.Background(), []string{"-config", filepath.Join(t.TempDir(), "missing.json")}, &out); err == nil {
		t.Fatal("run with a missing config succeeded")
	}
	if err := run(context.Background(), []string{"extra"}, &out); err == nil {
		t.Fatal("run with an extra argument succeeded")
	}
}
