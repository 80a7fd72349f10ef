// Command flylocal is the local edge of a Spaceport system: it runs each app's machines as processes with Fly's
// environment and serves the public address the way Fly's proxy does, honouring fly-replay. See package
// github.com/spaceport-sync/spaceport/fly/flylocal for what it emulates.
//
//	flylocal -config fly/flylocal.dev.json [-listen :8080] [-api-listen 127.0.0.1:4280]
//
// Ctrl-C (or SIGTERM) stops every machine and exits; a second Ctrl-C exits at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spaceport-sync/spaceport/fly/flylocal"
)

// shutdownTimeout bounds stopping everything after a signal; machines get their kill timeout within it.
const shutdownTimeout = 30 * time.Second

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "flylocal:", err)
		}
		os.Exit(1)
	}
}

// run runs flylocal until ctx is done or a SIGINT or SIGTERM arrives. Logs and the machines' output go to
// stderr.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("flylocal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "flylocal.json", "JSON config `file` (see fly/flylocal.dev.json)")
	listen := fs.String("listen", "", "public `address`, overriding the config's listen")
	apiListen := fs.String("api-listen", "", "Machines API `address`, overriding the config's api_listen (\"off\": none)")
	stateDir := fs.String("state-dir", "", "`folder` for machine IDs and ports, overriding the config's state_dir")
	debug := fs.Bool("debug", false, "log every replay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	cfg, err := flylocal.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	switch *apiListen {
	case "":
	case "off":
		cfg.APIListen = ""
	default:
		cfg.APIListen = *apiListen
	}
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("component", "flylocal")

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := flylocal.NewServer(cfg, logger, stderr)
	if err != nil {
		return err
	}
	if err := srv.Open(ctx); err != nil {
		return err
	}
	logger.Info("ready", "url", srv.URL(), "machines", len(srv.Supervisor.Machines("")), "machines_api", srv.APIURL())

	<-ctx.Done()
	stop() // a second signal now terminates flylocal at once
	logger.Info("shutting down")
	closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return srv.Close(closeCtx)
}
