package dedicated_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/fly/flylocal"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
)

// stackTimeout bounds every wait of the stack test: generous, because it runs real processes built with -race
// on two cores beside other test binaries.
const stackTimeout = 90 * time.Second

const (
	routerApp  = "spaceport-router"
	backendApp = "spaceport-backend"
	adminToken = "dedicated-test-admin-token"
)

// openStack runs the real router binary in PLACEMENT=dedicated under flylocal, with flylocal's Machines API and
// a backend app of no machines whose machines stop after idleStop without connections, on a new database; it
// returns the stack with the test's own directory and Machines API client (no Placer yet).
func openStack(ctx context.Context, t *testing.T, idleStop time.Duration) *stack {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	stacktest.MigrateFirst(t, dbURL, stackTimeout)
	bins := stacktest.Build(t)
	srv := stacktest.Open(t, flylocal.Config{
		Listen:    "127.0.0.1:0",
		APIListen: "127.0.0.1:0",
		StateDir:  t.TempDir(),
		EdgeApp:   routerApp,
		Env:       map[string]string{"DATABASE_URL": dbURL, "AUTH_DISABLED": "1", "REPLAY_SECRET": "dedicated-test-replay"},
		Apps: []flylocal.AppConfig{
			{Name: routerApp, Machines: 1, Command: []string{bins.Router}, Env: map[string]string{
				"STATIC_DIR": t.TempDir(), "PLACEMENT": "dedicated", "BACKEND_IMAGE": "flylocal/" + backendApp,
				"ADMIN_TOKEN": adminToken,
				// The test runs the reconciler itself, when no space is being created.
				"RECONCILE_INTERVAL": "0",
			}},
			{Name: backendApp, Command: []string{bins.Backend}, KillTimeout: flylocal.Duration(30 * time.Second),
				IdleStop: flylocal.Duration(idleStop)},
		},
	}, stackTimeout)
	s := &stack{t: t, srv: srv}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if s.dir, err = directory.Open(ctx, pool, directory.Config{}); err != nil {
		t.Fatal(err)
	}
	if s.api, err = machines.New(machines.Config{BaseURL: srv.APIURL()}); err != nil {
		t.Fatal(err)
	}
	return s
}
