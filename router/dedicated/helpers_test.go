package dedicated_test

import (
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
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
// a backend app of no machines whose machines stop after idleStop without connections, against dbURL.
func openStack(t *testing.T, bins stacktest.Binaries, dbURL string, idleStop time.Duration) *flylocal.Server {
	t.Helper()
	stacktest.MigrateFirst(t, dbURL, stackTimeout)
	return stacktest.Open(t, flylocal.Config{
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
}
