package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/backend/pglocal"
)

// TestRun_StartStop runs start and stop as scripts/dev does, with a relative -dir, on the folder an earlier
// `make dev` left as root (the cluster nested in .dev/postgres/.dev/postgres/data): the first start moves it and
// says so on stderr, the next says nothing; stop on a stopped cluster is no error.
func TestRun_StartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	wd := t.TempDir()
	t.Chdir(wd)
	old, err := pglocal.Start(ctx, pglocal.Config{Dir: filepath.Join(wd, ".dev", "postgres", ".dev", "postgres")})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	args := func(cmd string) []string { return []string{cmd, "-dir", ".dev/postgres", "-port", port} }
	wantURL := "postgres://postgres@127.0.0.1:" + port + "/spaceport?sslmode=disable\n"

	var stdout, stderr bytes.Buffer
	if err := run(ctx, args("start"), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = run(context.Background(), args("stop"), new(bytes.Buffer), new(bytes.Buffer)) })
	if stdout.String() != wantURL {
		t.Fatalf("start printed %q, want %q", stdout.String(), wantURL)
	}
	from, to := filepath.Join(wd, ".dev", "postgres", ".dev", "postgres", "data"), filepath.Join(wd, ".dev", "postgres", "data")
	if s := stderr.String(); strings.Count(s, "\n") != 1 || !strings.Contains(s, from) || !strings.Contains(s, to) {
		t.Fatalf("start's notice %q, want one line naming %s and %s", s, from, to)
	}

	for i := range 2 {
		stdout.Reset()
		stderr.Reset()
		if err := run(ctx, args("stop"), &stdout, &stderr); err != nil {
			t.Fatalf("stop %d: %v", i+1, err)
		}
		if stdout.Len()+stderr.Len() > 0 {
			t.Fatalf("stop %d printed %q %q", i+1, stdout.String(), stderr.String())
		}
	}
	if err := run(ctx, args("start"), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != wantURL || stderr.Len() > 0 {
		t.Fatalf("second start printed %q and %q, want the URL alone", stdout.String(), stderr.String())
	}
	if err := run(ctx, args("stop"), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
