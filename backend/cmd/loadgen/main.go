// Command loadgen simulates Replicache clients of Spaceport over real
// WebSockets and measures what they see; see package loadgen.
//
//	loadgen -url http://localhost:8080 -create-spaces -clients 100 -rate 1000 -duration 10s
//
// With AUTH_SECRET in the environment (the servers' secret), each client
// gets a token of its own; -token gives every client the same one.
//
// It prints progress on stderr while running, then the result as JSON on
// stdout and a one-line summary on stderr. It exits 1 if the run failed or
// verification found anything lost, doubled or inconsistent.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spaceport-sync/spaceport/backend/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
		}
		os.Exit(1)
	}
}

// errFailed is returned when the run completed but its verification failed.
var errFailed = errors.New("verification failed")

type urlList []string

func (u *urlList) String() string { return strings.Join(*u, ",") }

func (u *urlList) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*u = append(*u, p)
		}
	}
	return nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg loadgen.Config
	var urls urlList
	fs.Var(&urls, "url", "base `URL` of the edge or of a backend (repeat or comma-separate; space i uses URL i mod n)")
	fs.IntVar(&cfg.Spaces, "spaces", loadgen.DefaultSpaces, "number of spaces")
	fs.StringVar(&cfg.SpacePrefix, "space-prefix", "", "spaces are `PREFIX`-0, PREFIX-1, ... (default lg-<random>)")
	fs.BoolVar(&cfg.CreateSpaces, "create-spaces", false, "create the spaces with POST /api/spaces first (through a router)")
	fs.IntVar(&cfg.Clients, "clients", loadgen.DefaultClients, "clients per space")
	fs.StringVar(&cfg.Mode, "mode", loadgen.ModeRun, "run (push mutations), idle (connect and hold) or seed (write -seed entries only)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "total mutations per second over all clients; 0 = as fast as acks allow")
	fs.IntVar(&cfg.Batch, "batch", loadgen.DefaultBatch, "mutations a client makes at once when -rate is 0")
	fs.IntVar(&cfg.MaxPushMutations, "max-push", loadgen.DefaultMaxPushMutations, "most mutations in one push")
	fs.DurationVar(&cfg.PushDelay, "push-delay", loadgen.DefaultPushDelay, "wait between a mutation and its push (Replicache's pushDelay); negative for none")
	fs.DurationVar(&cfg.Duration, "duration", loadgen.DefaultDuration, "measured load (or idle hold) time; negative for none")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "unmeasured load before the measured time")
	mix := fs.String("mix", loadgen.DefaultMix, "mutations and weights, e.g. increment=8,createTodo=1,updateTodo=4,deleteTodo=1")
	fs.IntVar(&cfg.MaxTodos, "max-todos", loadgen.DefaultMaxTodos, "most todos each client keeps")
	fs.IntVar(&cfg.Seed, "seed", 0, "entries to write into each space before the clients connect")
	fs.IntVar(&cfg.Hostile, "hostile", 0, "hostile clients per space, attacking while the load runs (garbage, huge frames, push floods, foreign groups, future IDs, slowloris)")
	fs.IntVar(&cfg.ConnectConcurrency, "connect-concurrency", loadgen.DefaultConnectConcurrency, "dials in progress at once")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", loadgen.DefaultConnectTimeout, "time to connect one client, retries included")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", loadgen.DefaultDrainTimeout, "time for acks and replicas to settle after the load")
	fs.IntVar(&cfg.PID, "pid", 0, "`PID` of the backend, to sample its memory and CPU")
	fs.StringVar(&cfg.MetricsURL, "metrics-url", "", "backend Prometheus `URL`, scraped before and after")
	fs.StringVar(&cfg.Token, "token", "", "connection `token` sent by every client (unless AUTH_SECRET is set)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's own CPU profile to `file`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(urls) == 0 {
		return errors.New("-url is required")
	}
	cfg.URLs = urls
	// The servers' secret, from the environment (never a flag: command lines
	// are visible to every user of the machine and end up in reports).
	cfg.AuthSecret = getenv("AUTH_SECRET")
	m, err := loadgen.ParseMix(*mix)
	if err != nil {
		return err
	}
	cfg.Mix = m
	if cfg.Duration == 0 {
		cfg.Duration = -1 // the flag says "0s": no measured phase
	}
	if cfg.PushDelay == 0 {
		cfg.PushDelay = -1 // the flag says "0s": push at once
	}
	if !*quiet {
		cfg.Progress = stderr
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	res.Command = "loadgen " + strings.Join(args, " ")
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	fmt.Fprintln(stderr, res.Summary())
	if !res.OK {
		for _, f := range res.Failures {
			fmt.Fprintln(stderr, "  -", f)
		}
		return errFailed
	}
	return nil
}
