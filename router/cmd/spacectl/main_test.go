package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// spacectl runs the command with the environment and returns its output, or fails the test.
func spacectl(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	out, errOut, err := try(env, args...)
	if err != nil {
		t.Fatalf("spacectl %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func try(env map[string]string, args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, func(k string) string { return env[k] }, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func TestSpacectl(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dir, err := directory.Open(ctx, pool, directory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"m1", "m2"} {
		if err := dir.RegisterMachine(ctx, directory.Machine{ID: id, App: "spaceport-backend", Region: "ord"}); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"DATABASE_URL": url}

	if out := spacectl(t, env, "create-space", "alpha"); !strings.Contains(out, "created space alpha on machine m") {
		t.Fatalf("create-space: %q", out)
	}
	for _, id := range []string{"beta", "gamma", "delta"} {
		spacectl(t, env, "create-space", id)
	}
	if out := spacectl(t, env, "move", "alpha", "m2"); !strings.Contains(out, "to m2") {
		t.Fatalf("move: %q", out)
	}
	out := spacectl(t, env, "machines")
	if !strings.Contains(out, "MACHINE") || !strings.Contains(out, "m1") || !strings.Contains(out, "m2") ||
		!strings.Contains(out, "started") {
		t.Fatalf("machines:\n%s", out)
	}
	if out := spacectl(t, env, "spaces"); strings.Count(out, "spaceport-backend") != 4 {
		t.Fatalf("spaces:\n%s", out)
	}

	// Draining m1 without stopping it moves its spaces to m2.
	out = spacectl(t, env, "drain", "-keep-running", "m1")
	if strings.Count(out, "moved") < 1 || !strings.Contains(out, "-> m2") {
		t.Fatalf("drain:\n%s", out)
	}
	ms, _ := dir.ListMachines(ctx)
	if ms[0].ID != "m1" || ms[0].Spaces != 0 || ms[1].Spaces != 4 {
		t.Fatalf("after drain: %+v", ms)
	}
	// m1 is cordoned until it registers again (as a restarted backend does); then rebalance evens things out.
	if err := dir.RegisterMachine(ctx, directory.Machine{ID: "m1", App: "spaceport-backend"}); err != nil {
		t.Fatal(err)
	}
	if out := spacectl(t, env, "rebalance", "-dry-run"); strings.Count(out, "would move") != 2 {
		t.Fatalf("rebalance -dry-run:\n%s", out)
	}
	if out := spacectl(t, env, "rebalance"); strings.Count(out, "moved") != 2 {
		t.Fatalf("rebalance:\n%s", out)
	}
	if out := spacectl(t, env, "rebalance"); !strings.Contains(out, "balanced") {
		t.Fatalf("second rebalance:\n%s", out)
	}

	// Mistakes get a clear error and change nothing.
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{}, []string{"machines"}, "DATABASE_URL is required"},
		{env, nil, "no command"},
		{env, []string{"bogus"}, "unknown command"},
		{env, []string{"move", "alpha"}, "usage: spacectl move"},
		{env, []string{"move", "alpha", "m9"}, "machine not found"},
		{env, []string{"drain", "m1"}, "Machines API"},
		{env, []string{"scale", "2"}, "Machines API"},
		{env, []string{"scale", "two"}, "not a number"},
		{env, []string{"drain", "-keep-running", "-destroy", "m1"}, "contradict"},
	} {
		_, _, err := try(tc.env, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spacectl %v: error %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}

func TestSpacectl_Clusters(t *testing.T) {
	ctx := context.Background()
	mainURL, bURL := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, mainURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dir, err := directory.Open(ctx, pool, directory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.RegisterMachine(ctx, directory.Machine{ID: "m1", App: "spaceport-backend"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": mainURL, "DATA_CLUSTERS": "b=" + bURL}

	// New spaces spread: b first (ties by name), then main.
	if out := spacectl(t, env, "create-space", "one"); !strings.Contains(out, "cluster b") {
		t.Fatalf("create-space one: %q", out)
	}
	if out := spacectl(t, env, "create-space", "two"); !strings.Contains(out, "cluster main") {
		t.Fatalf("create-space two: %q", out)
	}
	// NEW_SPACE_CLUSTERS limits where they go.
	onlyMain := map[string]string{"DATABASE_URL": mainURL, "DATA_CLUSTERS": "b=" + bURL, "NEW_SPACE_CLUSTERS": "main"}
	if out := spacectl(t, onlyMain, "create-space", "three"); !strings.Contains(out, "cluster main") {
		t.Fatalf("create-space three: %q", out)
	}

	out := spacectl(t, env, "move-cluster", "two", "b")
	if !strings.Contains(out, "moved space two from cluster main to b: version 0") {
		t.Fatalf("move-cluster: %q", out)
	}
	if sp, err := dir.Lookup(ctx, "two"); err != nil || sp.Cluster != "b" {
		t.Fatalf("after move-cluster: %+v, %v", sp, err)
	}
	out = spacectl(t, env, "clusters")
	if !strings.Contains(out, "main     1") || !strings.Contains(out, "b        2") || strings.Contains(out, "moving") {
		t.Fatalf("clusters:\n%s", out)
	}
	if out := spacectl(t, env, "spaces"); !strings.Contains(out, "two    spaceport-backend  m1       b") {
		t.Fatalf("spaces:\n%s", out)
	}

	// A move left by a dead spacectl shows, and abort-move clears it.
	if _, err := dir.BeginClusterMove(ctx, "one", "main"); err != nil {
		t.Fatal(err)
	}
	if out := spacectl(t, env, "clusters"); !strings.Contains(out, "moving one: b -> main") {
		t.Fatalf("clusters during a move:\n%s", out)
	}
	if out := spacectl(t, env, "abort-move", "one"); !strings.Contains(out, "served from cluster b") {
		t.Fatalf("abort-move: %q", out)
	}

	// Bad input.
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{env, []string{"move-cluster", "one"}, "usage: spacectl move-cluster SPACE CLUSTER"},
		{env, []string{"move-cluster", "one", "c"}, `cluster "c"`},
		{env, []string{"move-cluster", "nope", "main"}, "space not found"},
		{env, []string{"abort-move"}, "usage: spacectl abort-move SPACE"},
		{map[string]string{"DATABASE_URL": mainURL, "DATA_CLUSTERS": "b"}, []string{"clusters"}, "DATA_CLUSTERS"},
		{map[string]string{"DATABASE_URL": mainURL, "NEW_SPACE_CLUSTERS": "b"}, []string{"clusters"}, "not a known cluster"},
	} {
		if _, _, err := try(tc.env, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spacectl %v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if sp, err := dir.Lookup(ctx, "one"); err != nil || sp.Cluster != "b" || sp.MovingTo != "" {
		t.Fatalf("after refused moves: %+v, %v", sp, err)
	}
}
