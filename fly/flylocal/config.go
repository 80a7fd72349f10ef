package flylocal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spaceport-sync/spaceport/fly/replay"
)

// Defaults for Config fields left at their zero value.
const (
	// DefaultListen is the edge's public address, where Fly's edge would take port 80/443.
	DefaultListen = ":8080"
	// DefaultStateDir holds machine IDs and ports between runs, relative to the working directory.
	DefaultStateDir = ".flylocal"
	// DefaultStartTimeout bounds how long a machine may take from process start to accepting connections.
	DefaultStartTimeout = 30 * time.Second
	// DefaultKillTimeout is how long a stopping machine gets between SIGTERM and SIGKILL; Fly's kill_timeout
	// also defaults to 5s.
	DefaultKillTimeout = 5 * time.Second
	// DefaultAPIListen is the Machines API address of fly/flylocal.dev.json: the port of Fly's _api.internal:4280,
	// on loopback only.
	DefaultAPIListen = "127.0.0.1:4280"
)

// ErrInvalidConfig is wrapped by every configuration error.
var ErrInvalidConfig = errors.New("invalid flylocal config")

// Config is flylocal's configuration, read from a JSON file (see fly/flylocal.dev.json):
//
//	{
//	  "listen": ":8080",
//	  "state_dir": ".dev/flylocal",
//	  "edge_app": "spaceport-router",
//	  "env": {"LOG_LEVEL": "debug"},
//	  "apps": [
//	    {"name": "spaceport-router", "machines": 1, "command": ["./bin/router"]},
//	    {"name": "spaceport-backend", "machines": 3, "command": ["./bin/backend"], "autostart": true,
//	     "kill_timeout": "10s", "idle_stop": "60s", "env": {"SPACE_IDLE": "30s"}}
//	  ]
//	}
//
// Relative paths (state_dir, commands) are relative to flylocal's working directory, which is also every
// machine's working directory.
type Config struct {
	// Listen is the edge's public address. Empty means DefaultListen.
	Listen string `json:"listen"`
	// StateDir keeps machine IDs and ports so that they survive restarts of flylocal (the system stores machine
	// IDs, for example in its space directory). Empty means DefaultStateDir.
	StateDir string `json:"state_dir"`
	// EdgeApp is the app that receives every request arriving at Listen, as the app owning a public hostname on
	// Fly does. Empty means the first app.
	EdgeApp string `json:"edge_app"`
	// Env is added to every machine's environment. A machine inherits flylocal's environment (so DATABASE_URL
	// and the like pass through), then gets Env, then its app's Env, then the variables Fly sets, which cannot be
	// overridden. Nil means nothing is added.
	Env map[string]string `json:"env"`
	// StartTimeout bounds how long a machine may take from process start to accepting connections on PORT.
	// Zero means DefaultStartTimeout.
	StartTimeout Duration `json:"start_timeout"`
	// APIListen is where flylocal serves its Machines API (see MachinesAPI), as Fly serves it at
	// _api.internal:4280 inside an organization's network; fly/flylocal.dev.json uses DefaultAPIListen. Empty
	// means no Machines API, so that several flylocals (tests) can run at once. Port 0 picks a free port. When
	// it is served, every machine gets FLY_API_HOSTNAME=http://<its address> (unless Env sets it), as Fly's
	// router fly.toml points it at _api.internal:4280.
	APIListen string `json:"api_listen"`
	// APIToken, when set, is the token the Machines API requires, sent as "Authorization: Bearer <token>" or
	// "FlyV1 <token>". Empty means any token, or none, is accepted.
	APIToken string `json:"api_token"`
	// Apps are the apps and their machines.
	Apps []AppConfig `json:"apps"`
}

// AppConfig describes one app: how many machines, what each runs.
type AppConfig struct {
	// Name is the Fly app name (FLY_APP_NAME), which fly-replay's app field refers to. Required.
	Name string `json:"name"`
	// Machines is the number of machines. Zero means the app has none (a later Machines API may create some).
	Machines int `json:"machines"`
	// Command is the program and its arguments, run once per machine. Required when Machines > 0.
	Command []string `json:"command"`
	// Env is added to the environment of this app's machines, after Config.Env. Nil means nothing is added.
	Env map[string]string `json:"env"`
	// Autostart lets the proxy start a stopped machine of this app when a request is routed to it, like
	// auto_start_machines in fly.toml. Nil (absent) means true, Fly's default.
	Autostart *bool `json:"autostart"`
	// KillTimeout is how long a stopping machine gets between SIGTERM and SIGKILL. Zero means
	// DefaultKillTimeout.
	KillTimeout Duration `json:"kill_timeout"`
	// IdleStop stops a started machine of this app once it has had no request and no connection through the
	// edge for this long, as Fly's proxy does with auto_stop_machines = "stop" (Fly checks every few minutes;
	// flylocal within a second). With Autostart, the next request routed to it starts it again. Zero means
	// never, Fly's default ("off").
	IdleStop Duration `json:"idle_stop"`
}

// Duration is a time.Duration written in JSON as a Go duration string such as "5s" or "800ms".
type Duration time.Duration

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// reservedEnv are the variables flylocal sets for every machine, as Fly does; configuration cannot override them.
var reservedEnv = map[string]bool{
	"FLY_APP_NAME": true, "FLY_MACHINE_ID": true, "FLY_ALLOC_ID": true, "FLY_REGION": true,
	"PRIMARY_REGION": true, "FLY_PRIVATE_IP": true, "PORT": true,
}

// LoadConfig reads the JSON config file at path, fills in defaults and validates it.
func LoadConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	defer func() { _ = f.Close() }()
	cfg, err := ParseConfig(f)
	if err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig reads a JSON config, fills in defaults and validates it. Unknown fields are errors, so a typo does
// not silently fall back to a default.
func ParseConfig(r io.Reader) (Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return Config{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// withDefaults returns cfg with every zero field that has a default set to it.
func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.EdgeApp == "" && len(c.Apps) > 0 {
		c.EdgeApp = c.Apps[0].Name
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = Duration(DefaultStartTimeout)
	}
	apps := make([]AppConfig, len(c.Apps))
	for i, app := range c.Apps {
		if app.KillTimeout == 0 {
			app.KillTimeout = Duration(DefaultKillTimeout)
		}
		if app.Autostart == nil {
			t := true
			app.Autostart = &t
		}
		apps[i] = app
	}
	c.Apps = apps
	return c
}

// Validate reports the first problem with a config whose defaults are filled in. Errors wrap ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("listen %q: %v", c.Listen, err)
	}
	if c.StartTimeout <= 0 {
		return bad("start_timeout must be positive")
	}
	if c.APIListen != "" {
		if _, _, err := net.SplitHostPort(c.APIListen); err != nil {
			return bad("api_listen %q: %v", c.APIListen, err)
		}
	}
	if err := validateEnv(c.Env); err != nil {
		return bad("env: %v", err)
	}
	if len(c.Apps) == 0 {
		return bad("no apps")
	}
	seen := make(map[string]bool, len(c.Apps))
	for _, app := range c.Apps {
		if !replay.ValidAppName(app.Name) {
			return bad("app name %q: lowercase letters, digits and dashes, at most %d", app.Name, replay.MaxAppNameLength)
		}
		if seen[app.Name] {
			return bad("app %q appears twice", app.Name)
		}
		seen[app.Name] = true
		if app.Machines < 0 {
			return bad("app %q: negative machine count", app.Name)
		}
		if app.Machines > 0 && (len(app.Command) == 0 || app.Command[0] == "") {
			return bad("app %q: no command", app.Name)
		}
		if app.KillTimeout <= 0 {
			return bad("app %q: kill_timeout must be positive", app.Name)
		}
		if app.Autostart == nil {
			return bad("app %q: autostart unset (defaults not applied)", app.Name)
		}
		if app.IdleStop < 0 {
			return bad("app %q: idle_stop must not be negative", app.Name)
		}
		if err := validateEnv(app.Env); err != nil {
			return bad("app %q: env: %v", app.Name, err)
		}
	}
	if !seen[c.EdgeApp] {
		return bad("edge_app %q is not one of the apps", c.EdgeApp)
	}
	return nil
}

func validateEnv(env map[string]string) error {
	for k := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("bad variable name %q", k)
		}
		if reservedEnv[k] {
			return fmt.Errorf("%s is set by flylocal for each machine", k)
		}
	}
	return nil
}

// app returns the app named name.
func (c Config) app(name string) (AppConfig, bool) {
	for _, a := range c.Apps {
		if a.Name == name {
			return a, true
		}
	}
	return AppConfig{}, false
}
