package flylocal_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
)

func TestLoadConfig_DevExample(t *testing.T) {
	cfg, err := flylocal.LoadConfig("../flylocal.dev.json")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":8080" || cfg.EdgeApp != "spaceport-router" || len(cfg.Apps) != 2 {
		t.Fatalf("config %+v", cfg)
	}
	router, backend := cfg.Apps[0], cfg.Apps[1]
	// make dev places each space on a backend machine of its own, which the router creates through the
	// Machines API and flylocal stops when idle.
	if router.Name != "spaceport-router" || router.Machines != 1 || strings.Join(router.Command, " ") != "./bin/router" ||
		router.Env["PLACEMENT"] != "dedicated" || router.Env["BACKEND_IMAGE"] == "" || cfg.APIListen == "" {
		t.Errorf("router %+v", router)
	}
	if backend.Name != "spaceport-backend" || backend.Machines != 0 || strings.Join(backend.Command, " ") != "./bin/backend" ||
		!*backend.Autostart || backend.IdleStop <= 0 {
		t.Errorf("backend %+v", backend)
	}
}

func TestParseConfig_Defaults(t *testing.T) {
	cfg, err := flylocal.ParseConfig(strings.NewReader(`{"apps": [{"name": "a", "machines": 2, "command": ["x"]}, {"name": "b"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != flylocal.DefaultListen || cfg.StateDir != flylocal.DefaultStateDir || cfg.EdgeApp != "a" ||
		time.Duration(cfg.StartTimeout) != flylocal.DefaultStartTimeout {
		t.Errorf("config %+v", cfg)
	}
	for _, a := range cfg.Apps {
		if a.Autostart == nil || !*a.Autostart || time.Duration(a.KillTimeout) != flylocal.DefaultKillTimeout {
			t.Errorf("app %+v", a)
		}
	}
}

func TestParseConfig_Invalid(t *testing.T) {
	for _, tt := range []struct{ name, json string }{
		{"unknown field", `{"apps": [{"name": "a"}], "listn": ":1"}`},
		{"no apps", `{}`},
		{"bad app name", `{"apps": [{"name": "A_b"}]}`},
		{"duplicate app", `{"apps": [{"name": "a"}, {"name": "a"}]}`},
		{"unknown edge app", `{"edge_app": "b", "apps": [{"name": "a"}]}`},
		{"no command", `{"apps": [{"name": "a", "machines": 1}]}`},
		{"negative machines", `{"apps": [{"name": "a", "machines": -1}]}`},
		{"reserved env", `{"env": {"PORT": "1"}, "apps": [{"name": "a"}]}`},
		{"reserved app env", `{"apps": [{"name": "a", "env": {"FLY_MACHINE_ID": "x"}}]}`},
		{"bad duration", `{"apps": [{"name": "a", "kill_timeout": "soon"}]}`},
		{"numeric duration", `{"start_timeout": 5, "apps": [{"name": "a"}]}`},
		{"bad listen", `{"listen": "8080", "apps": [{"name": "a"}]}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := flylocal.ParseConfig(strings.NewReader(tt.json))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, flylocal.ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
		})
	}
}
