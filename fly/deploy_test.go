package fly_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/spaceport-sync/spaceport/backend/directory"
)

// flyToml is the part of Fly's fly.toml (https://fly.io/docs/reference/configuration/) that Spaceport's apps
// use. Decoding is strict, so a misspelt key fails here instead of being ignored by flyctl; add a field when a
// fly.toml needs a new key.
type flyToml struct {
	App           string `toml:"app"`
	PrimaryRegion string `toml:"primary_region"`
	KillSignal    string `toml:"kill_signal"`
	KillTimeout   any    `toml:"kill_timeout"` // seconds, or a duration string
	Build         struct {
		Dockerfile string `toml:"dockerfile"`
	} `toml:"build"`
	Deploy struct {
		Strategy       string `toml:"strategy"`
		MaxUnavailable any    `toml:"max_unavailable"`
	} `toml:"deploy"`
	Env         map[string]string `toml:"env"`
	HTTPService *struct {
		InternalPort       int   `toml:"internal_port"`
		ForceHTTPS         bool  `toml:"force_https"`
		AutoStopMachines   any   `toml:"auto_stop_machines"` // "off" | "stop" | "suspend", or a bool
		AutoStartMachines  *bool `toml:"auto_start_machines"`
		MinMachinesRunning int   `toml:"min_machines_running"`
		Concurrency        *struct {
			Type      string `toml:"type"`
			SoftLimit int    `toml:"soft_limit"`
			HardLimit int    `toml:"hard_limit"`
		} `toml:"concurrency"`
		Checks []struct {
			GracePeriod string `toml:"grace_period"`
			Interval    string `toml:"interval"`
			Method      string `toml:"method"`
			Path        string `toml:"path"`
			Timeout     string `toml:"timeout"`
		} `toml:"checks"`
	} `toml:"http_service"`
	Checks map[string]struct {
		Type        string `toml:"type"`
		Port        int    `toml:"port"`
		Method      string `toml:"method"`
		Path        string `toml:"path"`
		Interval    string `toml:"interval"`
		Timeout     string `toml:"timeout"`
		GracePeriod string `toml:"grace_period"`
	} `toml:"checks"`
	Metrics *struct {
		Port int    `toml:"port"`
		Path string `toml:"path"`
	} `toml:"metrics"`
	VM []struct {
		Size   string `toml:"size"`
		Memory string `toml:"memory"`
	} `toml:"vm"`
}

// maxKillTimeout is the longest kill_timeout Fly accepts.
const maxKillTimeout = 300 * time.Second

func load(t *testing.T, app string) flyToml {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(app, "fly.toml"))
	if err != nil {
		t.Fatal(err)
	}
	var f flyToml
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			t.Fatalf("%s/fly.toml: keys this test does not know (a typo, or add them to flyToml):\n%s", app, strict.String())
		}
		t.Fatalf("%s/fly.toml: %v", app, err)
	}
	return f
}

// source reads a file of the repository.
func source(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// goSeconds finds `name = N * time.Second` in Go source.
func goSeconds(t *testing.T, path, name string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(name + `\s*=\s*(\d+)\s*\*\s*time\.Second`).FindStringSubmatch(source(t, path))
	if m == nil {
		t.Fatalf("%s: no %s = N * time.Second", path, name)
	}
	n, _ := strconv.Atoi(m[1])
	return time.Duration(n) * time.Second
}

func killTimeout(t *testing.T, f flyToml) time.Duration {
	t.Helper()
	switch v := f.KillTimeout.(type) {
	case int64:
		return time.Duration(v) * time.Second
	case string:
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s: kill_timeout %q: %v", f.App, v, err)
		}
		return d
	}
	t.Fatalf("%s: kill_timeout %v (%T): want seconds or a duration", f.App, f.KillTimeout, f.KillTimeout)
	return 0
}

func TestFlyToml(t *testing.T) {
	router, backend := load(t, "router"), load(t, "backend")

	// The router replays connections to the backend app by name: fly-replay: app=<BACKEND_APP>;instance=...
	if router.Env["BACKEND_APP"] != backend.App {
		t.Errorf("router BACKEND_APP %q, but the backend app is %q: replays would go nowhere", router.Env["BACKEND_APP"], backend.App)
	}
	if directory.DefaultBackendApp != backend.App {
		t.Errorf("the default BACKEND_APP %q differs from the backend app %q", directory.DefaultBackendApp, backend.App)
	}
	if router.App == backend.App || router.PrimaryRegion == "" || router.PrimaryRegion != backend.PrimaryRegion {
		t.Errorf("apps %q (region %q) and %q (region %q): two apps, in the same primary region", router.App,
			router.PrimaryRegion, backend.App, backend.PrimaryRegion)
	}

	for _, tc := range []struct {
		f        flyToml
		dir, pkg string
		// shutdown is the binary's graceful shutdown bound, which kill_timeout must exceed.
		shutdown time.Duration
	}{
		{router, "router", "./router/cmd/router", goSeconds(t, "router/cmd/router/main.go", "ShutdownTimeout")},
		{backend, "backend", "./backend/cmd/backend", goSeconds(t, "backend/cmd/backend/main.go", "DefaultShutdownTimeout")},
	} {
		f, name := tc.f, tc.dir
		hs := f.HTTPService
		if hs == nil {
			t.Errorf("%s: no [http_service]: the edge needs one to route (and replay) to the app", name)
			continue
		}
		// Ports: the binaries listen on $PORT; the service, the metrics and the checks must use it.
		if f.Env["PORT"] != strconv.Itoa(hs.InternalPort) {
			t.Errorf("%s: PORT %q but internal_port %d", name, f.Env["PORT"], hs.InternalPort)
		}
		if f.Metrics == nil || f.Metrics.Port != hs.InternalPort || f.Metrics.Path != "/metrics" {
			t.Errorf("%s: [metrics] %+v, want port %d path /metrics", name, f.Metrics, hs.InternalPort)
		}
		for check, c := range f.Checks {
			if c.Port != hs.InternalPort {
				t.Errorf("%s: check %s on port %d, not %d", name, check, c.Port, hs.InternalPort)
			}
		}
		if len(hs.Checks) == 0 || hs.Checks[0].Path != "/healthz" {
			t.Errorf("%s: the service's health check %+v, want GET /healthz", name, hs.Checks)
		}
		// Auto stop and start: idle machines park, requests (and replays) wake them. Fly advises both or neither.
		if hs.AutoStartMachines == nil || !*hs.AutoStartMachines {
			t.Errorf("%s: auto_start_machines must be true: a parked machine is started by the request (or replay) for it", name)
		}
		if hs.AutoStopMachines != "stop" {
			t.Errorf("%s: auto_stop_machines %v, want \"stop\" (the binaries shut down gracefully on the stop signal)", name, hs.AutoStopMachines)
		}
		if hs.MinMachinesRunning < 1 {
			t.Errorf("%s: min_machines_running %d: keep one machine up", name, hs.MinMachinesRunning)
		}
		// Stop: a signal the binary handles, and time to finish what it does.
		if f.KillSignal != "SIGTERM" || !strings.Contains(source(t, strings.TrimPrefix(tc.pkg, "./")+"/main.go"), "syscall.SIGTERM") {
			t.Errorf("%s: kill_signal %q; the binary must handle it", name, f.KillSignal)
		}
		if kt := killTimeout(t, f); kt <= tc.shutdown || kt > maxKillTimeout {
			t.Errorf("%s: kill_timeout %s must exceed the binary's shutdown bound %s (and be at most %s)", name, kt, tc.shutdown, maxKillTimeout)
		}
		// The Dockerfile next to fly.toml builds this app's binary and exposes its port.
		dockerfile := source(t, filepath.Join("fly", name, f.Build.Dockerfile))
		if !strings.Contains(dockerfile, tc.pkg) || !strings.Contains(dockerfile, fmt.Sprintf("EXPOSE %d", hs.InternalPort)) ||
			!strings.Contains(dockerfile, "CGO_ENABLED=0") {
			t.Errorf("%s: %s does not build %s statically and expose %d", name, f.Build.Dockerfile, tc.pkg, hs.InternalPort)
		}
	}

	// Backend specifics.
	if !slices.Contains([]string{"rolling", "immediate"}, backend.Deploy.Strategy) {
		t.Errorf("backend deploy strategy %q: only rolling and immediate keep machine IDs, which the directory's spaces point at",
			backend.Deploy.Strategy)
	}
	if c := backend.HTTPService.Concurrency; c == nil || c.Type != "connections" || c.SoftLimit < 100 || c.HardLimit < c.SoftLimit {
		t.Errorf("backend concurrency %+v: WebSockets are long-lived connections; Fly's default limits (20/25) are far too low", c)
	}
	if backend.HTTPService.ForceHTTPS {
		t.Error("backend force_https: a replayed request must not be redirected")
	}
	if _, ok := backend.Env["FLY_API_HOSTNAME"]; ok {
		t.Error("backend has FLY_API_HOSTNAME: only spacectl (on the router) uses the Machines API")
	}
	if !strings.Contains(source(t, "fly/router/Dockerfile"), "./router/cmd/spacectl") {
		t.Error("the router image must carry spacectl, which docs/deploy.md runs with fly ssh console")
	}
}
