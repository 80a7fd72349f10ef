// Command spacectl operates a running Spaceport system: it lists backend machines with their spaces and
// liveness, creates and moves spaces, drains machines (moves every space elsewhere, then stops them), evens out
// spaces across machines, scales the backend app and moves a space's data between Postgres clusters. It talks to
// the space directory (DATABASE_URL), for the machines themselves to Fly's Machines API (FLY_API_TOKEN,
// FLY_API_HOSTNAME; flylocal's API locally), and for cluster moves to the data clusters (DATA_CLUSTERS).
//
// On Fly it runs inside a router machine, which has both (see docs/deploy.md):
//
//	fly ssh console -a spaceport-router -C "spacectl machines"
//
// Locally, against `make dev`: FLY_API_HOSTNAME=http://127.0.0.1:4280 DATABASE_URL=... bin/spacectl machines
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
	"slices"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/clusters"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/router/dedicated"
	"github.com/spaceport-sync/spaceport/router/ops"
)

const usage = `usage: spacectl [flags] COMMAND [ARGS]

Commands:
  machines                      list the backend machines: spaces, liveness, Fly state
  spaces                        list the spaces and their machines
  create-space [ID]             create a space (a random ID if none) on the machine with the fewest spaces
  move SPACE MACHINE            move a space to a machine (its clients reconnect there)
  drain [-keep-running] [-destroy] [-grace D] MACHINE...
                                move every space off the machines, then stop them (and destroy them)
  rebalance [-dry-run]          even out the spaces across the live machines
  scale [-down-only] N          bring the backend app to N machines; those that go are drained first
  reconcile [-dry-run] [-orphan-age D] [-image IMAGE]
                                PLACEMENT=dedicated: destroy machines made for a space the directory does not
                                place on them, give a new machine to spaces whose machine is gone
  clusters                      list the Postgres clusters with their spaces, and the moves in progress
  move-cluster SPACE CLUSTER    move a space's data to another Postgres cluster (its clients wait and reconnect;
                                nothing acknowledged is lost); run it again to resume a move that died
  abort-move SPACE              clear the moving mark a dead move-cluster left: the space is served again from
                                the cluster it never left

Environment:
  DATABASE_URL       the space directory's Postgres (required)
  BACKEND_APP        the backend app (default ` + ops.DefaultApp + `)
  FLY_API_TOKEN      Machines API token (fly tokens create deploy -a BACKEND_APP); none for flylocal
  BACKEND_IMAGE      reconcile: the image of new backend machines, or auto (as the router's)
  FLY_API_HOSTNAME   Machines API base URL (default ` + machines.DefaultBaseURL + `; inside Fly
                     http://_api.internal:4280; flylocal http://127.0.0.1:4280)
  DATA_CLUSTERS      the Postgres clusters besides DATABASE_URL's (cluster main), name=postgres://... pairs
                     separated by commas, as the backends'
  NEW_SPACE_CLUSTERS create-space: the clusters new spaces may go to (default all), as the router's

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "spacectl:", err)
		}
		os.Exit(1)
	}
}

// env holds the configuration shared by every command.
type env struct {
	ops    *ops.Ops
	stdout io.Writer
	// For reconcile, which works with the router's dedicated placer.
	dir   *directory.Directory
	api   *machines.Client
	app   string
	log   *slog.Logger
	image string // BACKEND_IMAGE
	// For the cluster commands.
	pool         *pgxpool.Pool
	dataClusters []clusters.Cluster
	placement    []string // NEW_SPACE_CLUSTERS
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("spacectl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	app := fs.String("app", orDefault(getenv("BACKEND_APP"), ops.DefaultApp), "backend `app`")
	api := fs.String("api", getenv(machines.HostnameEnv), "Machines API base `URL` (default $FLY_API_HOSTNAME, else "+machines.DefaultBaseURL+")")
	moveInterval := fs.Duration("move-interval", 0, "pause between two moves, to spread reconnections")
	verbose := fs.Bool("v", false, "log every API call retry and rate-limit wait")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	dbURL := getenv("DATABASE_URL")
	if dbURL == "" {
		return errors.New("DATABASE_URL is required: the space directory's Postgres")
	}
	poolCfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return errors.New("DATABASE_URL is not a valid Postgres connection string")
	}
	dataClusters, err := clusters.Parse(getenv(clusters.EnvVar))
	if err != nil {
		return err
	}
	placement, err := clusters.Placement(getenv(clusters.PlacementEnvVar), clusters.Names(dataClusters))
	if err != nil {
		return err
	}
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "spacectl"
	poolCfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()
	dir, err := directory.Open(ctx, pool, directory.Config{Logger: log, Clusters: placement})
	if err != nil {
		return err
	}

	// The Machines API is used when it is configured: a token, or a base URL (flylocal needs no token).
	var mc *machines.Client
	if token := getenv(machines.TokenEnv); token != "" || *api != "" {
		if mc, err = machines.New(machines.Config{BaseURL: *api, Token: token, Logger: log}); err != nil {
			return err
		}
	}
	o, err := ops.New(ops.Config{Directory: dir, Machines: mc, App: *app, MoveInterval: *moveInterval, Logger: log})
	if err != nil {
		return err
	}
	e := &env{ops: o, stdout: stdout, dir: dir, api: mc, app: *app, log: log, image: getenv("BACKEND_IMAGE"),
		pool: pool, dataClusters: dataClusters, placement: placement}

	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "machines":
		return e.machines(ctx, rest)
	case "spaces":
		return e.spaces(ctx, dir, rest)
	case "create-space":
		return e.createSpace(ctx, rest)
	case "move":
		return e.move(ctx, rest)
	case "drain":
		return e.drain(ctx, rest, stderr)
	case "rebalance":
		return e.rebalance(ctx, rest, stderr)
	case "scale":
		return e.scale(ctx, rest, stderr)
	case "reconcile":
		return e.reconcile(ctx, rest, stderr)
	case "clusters":
		return e.clusters(ctx, rest)
	case "move-cluster":
		return e.moveCluster(ctx, rest)
	case "abort-move":
		return e.abortMove(ctx, rest)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func noArgs(cmd string, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, got %q", cmd, args)
	}
	return nil
}

func (e *env) machines(ctx context.Context, args []string) error {
	if err := noArgs("machines", args); err != nil {
		return err
	}
	st, err := e.ops.Status(ctx)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "MACHINE\tREGION\tDIRECTORY\tFLY\tLIVE\tSPACES\tLAST HEARTBEAT")
	for _, m := range st {
		dirState, beat := "-", "-"
		if m.InDirectory {
			dirState = string(m.State)
			beat = time.Since(m.LastHeartbeat).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%t\t%d\t%s\n", m.ID, m.Region, dirState, orDefault(m.FlyState, "-"), m.Live,
			m.Spaces, beat)
	}
	return w.Flush()
}

func (e *env) spaces(ctx context.Context, dir *directory.Directory, args []string) error {
	if err := noArgs("spaces", args); err != nil {
		return err
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SPACE\tAPP\tMACHINE\tCLUSTER\tCREATED")
	after := ""
	for {
		page, err := dir.ListSpaces(ctx, after, directory.MaxListLimit)
		if err != nil {
			return err
		}
		for _, sp := range page {
			cluster := sp.Cluster
			if sp.MovingTo != "" {
				cluster += " -> " + sp.MovingTo
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", sp.ID, sp.App, sp.Machine, cluster, sp.CreatedAt.UTC().Format(time.RFC3339))
		}
		if len(page) < directory.MaxListLimit {
			return w.Flush()
		}
		after = page[len(page)-1].ID
	}
}

func (e *env) createSpace(ctx context.Context, args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("create-space takes at most one space ID, got %q", args)
	}
	id := ""
	if len(args) == 1 {
		id = args[0]
	}
	sp, err := e.ops.CreateSpace(ctx, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "created space %s on machine %s, cluster %s\n", sp.ID, sp.Machine, sp.Cluster)
	return nil
}

func (e *env) move(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: spacectl move SPACE MACHINE")
	}
	mv, err := e.ops.MoveSpace(ctx, args[0], args[1])
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "moved space %s from %s to %s\n", mv.Space, mv.From, mv.To)
	return nil
}

func (e *env) printMoves(moves []ops.Move, verb string) {
	for _, mv := range moves {
		fmt.Fprintf(e.stdout, "%s %s: %s -> %s\n", verb, mv.Space, mv.From, mv.To)
	}
}

func (e *env) drain(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep-running", false, "move the spaces but leave the machines running")
	destroy := fs.Bool("destroy", false, "destroy the machines once stopped")
	grace := fs.Duration("grace", ops.DefaultGrace, "time for clients to follow their spaces before the stop")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: spacectl drain [-keep-running] [-destroy] [-grace D] MACHINE...")
	}
	if *keep && *destroy {
		return errors.New("-keep-running and -destroy contradict each other")
	}
	o, err := e.withGrace(*grace)
	if err != nil {
		return err
	}
	res, err := o.Drain(ctx, fs.Args(), ops.DrainOptions{KeepRunning: *keep, Destroy: *destroy})
	e.printMoves(res.Moves, "moved")
	for _, id := range res.Stopped {
		fmt.Fprintf(e.stdout, "stopped %s\n", id)
	}
	for _, id := range res.Destroyed {
		fmt.Fprintf(e.stdout, "destroyed %s\n", id)
	}
	return err
}

// withGrace returns the Ops with the drain grace of the flag (zero or negative: none).
func (e *env) withGrace(grace time.Duration) (*ops.Ops, error) {
	if grace == ops.DefaultGrace {
		return e.ops, nil
	}
	return e.ops.WithGrace(grace), nil
}

func (e *env) rebalance(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("rebalance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dryRun := fs.Bool("dry-run", false, "print the moves without making them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs("rebalance", fs.Args()); err != nil {
		return err
	}
	moves, err := e.ops.Rebalance(ctx, *dryRun)
	verb := "moved"
	if *dryRun {
		verb = "would move"
	}
	e.printMoves(moves, verb)
	if err == nil && len(moves) == 0 {
		fmt.Fprintln(e.stdout, "balanced: nothing to move")
	}
	return err
}

func (e *env) reconcile(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dryRun := fs.Bool("dry-run", false, "print what is wrong without fixing it")
	orphanAge := fs.Duration("orphan-age", dedicated.DefaultOrphanAge,
		"leave alone machines younger than this (a space may still be being created on them)")
	image := fs.String("image", e.image, "`image` of new backend machines (default $BACKEND_IMAGE)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs("reconcile", fs.Args()); err != nil {
		return err
	}
	if e.api == nil {
		return fmt.Errorf("reconcile: %w", ops.ErrNoMachinesAPI)
	}
	if *image == "" {
		return errors.New("reconcile: the backend image is needed to replace lost machines (-image or BACKEND_IMAGE)")
	}
	age := *orphanAge
	if age <= 0 {
		age = -1 // any age
	}
	p, err := dedicated.New(dedicated.Config{Directory: e.dir, Machines: e.api, App: e.app, Image: *image,
		OrphanAge: age, Logger: e.log})
	if err != nil {
		return err
	}
	rep, err := p.Reconcile(ctx, *dryRun)
	verb := func(done, planned string) string {
		if *dryRun {
			return planned
		}
		return done
	}
	for _, id := range rep.Orphans {
		fmt.Fprintf(e.stdout, "%s orphan machine %s\n", verb("destroyed", "would destroy"), id)
	}
	for _, r := range rep.Rehomed {
		fmt.Fprintf(e.stdout, "%s space %s (machine %s is gone) %s\n", verb("moved", "would move"), r.Space, r.From,
			verb("to new machine "+r.To, "to a new machine"))
	}
	for _, id := range rep.Forgotten {
		fmt.Fprintf(e.stdout, "%s destroyed machine %s from the directory\n", verb("removed", "would remove"), id)
	}
	if err == nil && rep.Empty() {
		fmt.Fprintln(e.stdout, "reconciled: nothing to fix")
	}
	return err
}

func (e *env) scale(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.SetOutput(stderr)
	downOnly := fs.Bool("down-only", false, "only remove surplus machines (scripts/scale lets fly scale count add them)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: spacectl scale [-down-only] N")
	}
	n, err := strconv.Atoi(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("scale: %q is not a number of machines", fs.Arg(0))
	}
	res, err := e.ops.Scale(ctx, n, ops.ScaleOptions{DownOnly: *downOnly})
	for _, id := range res.Created {
		fmt.Fprintf(e.stdout, "created %s (registered, receiving new spaces)\n", id)
	}
	e.printMoves(res.Drain.Moves, "moved")
	for _, id := range res.Drain.Destroyed {
		fmt.Fprintf(e.stdout, "destroyed %s\n", id)
	}
	if err == nil && len(res.Created) > 0 {
		fmt.Fprintln(e.stdout, "existing spaces stay where they are; run `spacectl rebalance` to spread them")
	}
	if err == nil && len(res.Created) == 0 && len(res.Drain.Destroyed) == 0 {
		fmt.Fprintf(e.stdout, "app %s: no machine created or removed\n", e.ops.App())
	}
	return err
}

// clusters lists the clusters this spacectl knows and those the directory's spaces name, with their space
// counts, then the moves in progress.
func (e *env) clusters(ctx context.Context, args []string) error {
	if err := noArgs("clusters", args); err != nil {
		return err
	}
	list, err := e.dir.ListClusters(ctx)
	if err != nil {
		return err
	}
	spaces := map[string]int64{}
	for _, c := range list {
		spaces[c.Name] = c.Spaces
	}
	known := clusters.Names(e.dataClusters)
	names := slices.Clone(known)
	for _, c := range list {
		if !slices.Contains(names, c.Name) {
			names = append(names, c.Name) // a cluster whose spaces this configuration cannot reach: said below
		}
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CLUSTER\tSPACES\tCONFIGURED\tNEW SPACES")
	for _, n := range names {
		configured := "DATA_CLUSTERS"
		switch {
		case n == directory.DefaultCluster:
			configured = "DATABASE_URL"
		case !slices.Contains(known, n):
			configured = "no (not in DATA_CLUSTERS)"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%t\n", n, spaces[n], configured, slices.Contains(e.placement, n))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	moves, err := e.dir.ClusterMoves(ctx)
	if err != nil {
		return err
	}
	for _, m := range moves {
		fmt.Fprintf(e.stdout, "moving %s: %s -> %s, since %s ago\n", m.Space, m.From, m.To, time.Since(m.Since).Round(time.Second))
	}
	return nil
}

// clusterOps returns an Ops that reaches the data clusters, and what closes their pools.
func (e *env) clusterOps(ctx context.Context) (*ops.Ops, func(), error) {
	main, err := store.Open(ctx, e.pool)
	if err != nil {
		return nil, nil, fmt.Errorf("open cluster %s: %w", directory.DefaultCluster, err)
	}
	cs, err := clusters.New(clusters.Config{Directory: e.dir, Main: main, Clusters: e.dataClusters,
		ApplicationName: "spacectl", Logger: e.log})
	if err != nil {
		return nil, nil, err
	}
	o, err := ops.New(ops.Config{Directory: e.dir, App: e.app, OpenCluster: cs.Cluster, Logger: e.log})
	if err != nil {
		cs.Close()
		return nil, nil, err
	}
	return o, cs.Close, nil
}

func (e *env) moveCluster(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: spacectl move-cluster SPACE CLUSTER")
	}
	o, closeClusters, err := e.clusterOps(ctx)
	if err != nil {
		return err
	}
	defer closeClusters()
	mv, err := o.MoveSpaceToCluster(ctx, args[0], args[1])
	if mv.From != "" && (err == nil || errors.Is(err, ops.ErrOldCopyKept)) {
		fmt.Fprintf(e.stdout, "moved space %s from cluster %s to %s: version %d, %d entries, %d clients, %d client groups; "+
			"not served for %s\n", mv.Space, mv.From, mv.To, mv.Version, mv.Entries, mv.Clients, mv.Groups,
			mv.Unserved.Round(time.Millisecond))
	}
	return err
}

func (e *env) abortMove(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: spacectl abort-move SPACE")
	}
	sp, err := e.ops.AbortClusterMove(ctx, args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "space %s is not moving; served from cluster %s\n", sp.ID, sp.Cluster)
	return nil
}
