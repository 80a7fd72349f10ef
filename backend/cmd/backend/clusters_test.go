package main_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

// TestClusters_SpaceServedFromItsClusterAndNowhereWhileMoving runs the
// backend with a second data cluster: a space placed there is written
// there; marked as moving, its client is closed with 4004 and a new one is
// refused with 4029 until the move is aborted, when the space is served
// again, intact; switched to another cluster, the copy loaded is let go. A
// space on a cluster the backend was not given is refused.
func TestClusters_SpaceServedFromItsClusterAndNowhereWhileMoving(t *testing.T) {
	mainURL, bURL := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	const me = "cccccccccccccc"
	p := startProc(t, mainURL, 0, "FLY_MACHINE_ID="+me, "FLY_APP_NAME=spaceport-backend", "DIRECTORY_CHECK=true",
		"DATA_CLUSTERS=b="+bURL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, mainURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	bPool, err := pgxpool.New(ctx, bURL)
	if err != nil {
		t.Fatal(err)
	}
	defer bPool.Close()
	dir, err := directory.Open(ctx, pool, directory.Config{Clusters: []string{"b"}})
	if err != nil {
		t.Fatal(err)
	}
	if sp, err := dir.CreateSpace(ctx, "on-b", "spaceport-backend"); err != nil || sp.Cluster != "b" {
		t.Fatalf("create = %+v, %v; want on cluster b", sp, err)
	}

	c, err := syncclient.Dial(ctx, p.url("on-b"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Mutate(ctx, "increment", map[string]any{"key": "n", "delta": 1}); err != nil {
		t.Fatal(err)
	}
	var onB, onMain int
	if err := bPool.QueryRow(ctx, `SELECT count(*) FROM replica_entries WHERE space_id = 'on-b'`).Scan(&onB); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM replica_spaces WHERE id = 'on-b'`).Scan(&onMain); err != nil {
		t.Fatal(err)
	}
	if onB != 1 || onMain != 0 {
		t.Fatalf("space on b: %d entries on b, %d rows on main; want 1 and 0", onB, onMain)
	}

	// Marked as moving: let go (4004), then refused with a retry-later.
	if _, err := dir.BeginClusterMove(ctx, "on-b", "main"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the backend kept a space marked as moving")
	}
	if got := c.CloseStatus(); got != 4004 {
		t.Fatalf("marked moving: close %d, want 4004", got)
	}
	r, err := syncclient.Dial(ctx, p.url("on-b"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	<-r.Done()
	if got, reason := r.CloseStatus(), r.CloseReason(); got != 4029 || !strings.Contains(reason, "space moving; retry after 1s") {
		t.Fatalf("connect while moving: close %d %q, want 4029 with a retry-after", got, reason)
	}

	// Aborted: served again from b, with its data.
	if _, err := dir.AbortClusterMove(ctx, "on-b", ""); err != nil {
		t.Fatal(err)
	}
	again, err := syncclient.Dial(ctx, p.url("on-b"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if _, err := again.Pull(ctx); err != nil {
		t.Fatal(err)
	}
	if got := string(again.State().Data["n"]); got != "1" {
		t.Fatalf("after the abort the counter is %q, want 1", got)
	}

	// The directory now places the data elsewhere, as a move whose mark this
	// backend never heard of would leave it: the copy loaded from b is let go.
	if _, err := pool.Exec(ctx, `UPDATE directory.spaces SET cluster = 'main' WHERE id = 'on-b'`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-again.Done():
	case <-ctx.Done():
		t.Fatal("the backend kept serving a copy from a cluster the space left")
	}
	if got := again.CloseStatus(); got != 4004 {
		t.Fatalf("space switched to another cluster: close %d, want 4004", got)
	}

	// A cluster this backend was not given: refused, nothing claimed.
	if _, err := dir.CreateSpace(ctx, "far", "spaceport-backend"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE directory.spaces SET cluster = 'elsewhere' WHERE id = 'far'`); err != nil {
		t.Fatal(err)
	}
	f, err := syncclient.Dial(ctx, p.url("far"), syncclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	<-f.Done()
	if got := f.CloseStatus(); got != 1011 {
		t.Fatalf("space on an unknown cluster: close %d, want 1011", got)
	}
}

func TestClusters_BadConfigurationStopsTheStart(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"DATA_CLUSTERS=b=mysql://u:secret@h/db"}, "DATA_CLUSTERS: cluster b: want a postgres:// URL"},
		{[]string{"DATA_CLUSTERS=main=postgres://h/db"}, "the directory's own database"},
		{[]string{"DATA_CLUSTERS=b=postgres://h/db", "DIRECTORY_CHECK=false"}, "DATA_CLUSTERS needs the directory"},
	} {
		cmd := exec.Command(binary)
		cmd.Env = append(os.Environ(), "DATABASE_URL=postgres://127.0.0.1:1/x", "FLY_MACHINE_ID=m", "FLY_APP_NAME=a", "AUTH_DISABLED=1")
		cmd.Env = append(cmd.Env, tc.env...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "secret") {
			t.Errorf("%v: %v, output %q; want a failed start saying %q", tc.env, err, out, tc.want)
		}
	}
}
