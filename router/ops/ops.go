// Package ops carries out the operator's work on a running system: listing backend machines with their spaces
// and liveness, moving spaces, draining machines (move every space elsewhere, then stop them), rebalancing
// spaces across machines, scaling the backend app, and moving a space's data between Postgres clusters
// (MoveSpaceToCluster). It works on the space directory (Postgres), for the machines themselves on Fly's
// Machines API (fly/machines; flylocal's locally), and for cluster moves on the data clusters' stores.
// cmd/spacectl is its command line.
//
// Moving a space is safe under load: the directory announces the move, the old owner closes the space's
// connections with 4004 and lets go (its commits are fenced), the routers drop their cached placement, and
// clients reconnect through the edge to the new owner. Nothing acknowledged is lost, because nothing is
// acknowledged before it is committed.
package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/fly/machines"
)

// Defaults for Config fields left at their zero value.
const (
	// DefaultApp is the backend app whose machines and spaces ops works on; the router's default BACKEND_APP.
	DefaultApp = directory.DefaultBackendApp
	// DefaultGrace is how long a drain waits, after moving a machine's spaces, before stopping it: time for the
	// clients of the moved spaces to reconnect elsewhere while the old machine still answers stragglers with
	// 4004. A client still connected when the stop comes is closed with 1001 and reconnects the same way.
	DefaultGrace = 5 * time.Second
	// DefaultStopTimeout bounds the wait for a drained machine to reach stopped. It must exceed the backend's
	// kill_timeout (30s in fly/backend/fly.toml).
	DefaultStopTimeout = 2 * time.Minute
	// DefaultStartTimeout bounds the wait for a machine created by Scale to start and register itself in the
	// directory.
	DefaultStartTimeout = 2 * time.Minute
	// DefaultStopSignal is the signal drained machines are stopped with; the backend finishes its batch in
	// flight and closes its connections on SIGTERM (and on SIGINT, Fly's default).
	DefaultStopSignal = "SIGTERM"
	// pollInterval is how often ops re-reads the directory while waiting for a machine to register.
	pollInterval = 250 * time.Millisecond
)

// Errors returned (wrapped) by Ops.
var (
	// ErrNoTarget means there is no live machine of the app to move spaces to.
	ErrNoTarget = errors.New("no live machine to move spaces to")
	// ErrNoMachinesAPI means an operation needs the Machines API and Config.Machines is nil.
	ErrNoMachinesAPI = errors.New("no Machines API client (set FLY_API_TOKEN and FLY_API_HOSTNAME)")
	// ErrLastMachine means a scale would leave the app without a machine to own its spaces.
	ErrLastMachine = errors.New("the app needs at least one backend machine")
)

// Config configures Ops.
type Config struct {
	// Directory is the space directory. Required.
	Directory *directory.Directory
	// Machines is the Machines API client, for stopping, destroying and creating machines. Nil means machine
	// operations fail with ErrNoMachinesAPI; listing and moving still work.
	Machines *machines.Client
	// App is the backend app. Empty means DefaultApp.
	App string
	// Grace is the pause between moving a drained machine's spaces and stopping it. Zero means DefaultGrace;
	// negative means none.
	Grace time.Duration
	// StopTimeout bounds the wait for a drained machine to stop. Zero means DefaultStopTimeout.
	StopTimeout time.Duration
	// StartTimeout bounds the wait for a new machine to start and register. Zero means DefaultStartTimeout.
	StartTimeout time.Duration
	// MoveInterval is a pause between two moves, to spread the reconnections of many spaces' clients. Zero
	// means none.
	MoveInterval time.Duration
	// OpenCluster returns the store of the data cluster name (directory.DefaultCluster included), opening it
	// if need be; clusters.Store.Cluster is one. Nil means moves between clusters fail with ErrNoClusters.
	OpenCluster func(ctx context.Context, name string) (*store.Store, error)
	// Logger receives one line per move, stop, create and destroy. Nil means slog.Default().
	Logger *slog.Logger
}

// Ops carries out operations. It holds no state besides its configuration.
type Ops struct {
	cfg Config
	dir *directory.Directory
	api *machines.Client
	log *slog.Logger
	// beforeSwitch, when set (tests), runs before a cluster move switches the directory; an error fails the
	// move there.
	beforeSwitch func() error
}

// New returns an Ops for cfg.
func New(cfg Config) (*Ops, error) {
	if cfg.Directory == nil {
		return nil, errors.New("ops: Config.Directory is required")
	}
	if cfg.App == "" {
		cfg.App = DefaultApp
	}
	switch {
	case cfg.Grace == 0:
		cfg.Grace = DefaultGrace
	case cfg.Grace < 0:
		cfg.Grace = 0
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Ops{cfg: cfg, dir: cfg.Directory, api: cfg.Machines, log: cfg.Logger}, nil
}

// WithGrace returns a copy of o whose drains wait grace before stopping machines; zero or negative means no
// wait.
func (o *Ops) WithGrace(grace time.Duration) *Ops {
	c := *o
	c.cfg.Grace = max(grace, 0)
	return &c
}

// App is the backend app Ops works on.
func (o *Ops) App() string { return o.cfg.App }

// Move is one space moved (or, in a dry run, to be moved) from one machine to another.
type Move struct {
	Space, From, To string
}

// MachineStatus is a backend machine as the directory and the Machines API see it.
type MachineStatus struct {
	directory.MachineInfo
	// InDirectory: the machine has registered itself in the directory. False for a machine that the Machines
	// API lists but that never started the backend.
	InDirectory bool
	// FlyState is the machine's state in the Machines API ("started", "stopped", ...); empty when the API was
	// not asked or does not know the machine (it was destroyed).
	FlyState string
}

// Status lists the machines of the app: the directory's view (spaces, liveness) joined with the Machines API's
// (state), when Config.Machines is set.
func (o *Ops) Status(ctx context.Context) ([]MachineStatus, error) {
	infos, err := o.dir.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	var out []MachineStatus
	index := map[string]int{}
	for _, m := range infos {
		if m.App != o.cfg.App {
			continue
		}
		index[m.ID] = len(out)
		out = append(out, MachineStatus{MachineInfo: m, InDirectory: true})
	}
	if o.api == nil {
		return out, nil
	}
	ms, err := o.api.List(ctx, o.cfg.App, machines.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	for _, m := range ms {
		if i, ok := index[m.ID]; ok {
			out[i].FlyState = m.State
			continue
		}
		out = append(out, MachineStatus{
			MachineInfo: directory.MachineInfo{Machine: directory.Machine{ID: m.ID, App: o.cfg.App, Region: m.Region}},
			FlyState:    m.State,
		})
	}
	return out, nil
}

// CreateSpace creates a space (a random ID if id is empty) and places it on the live machine with the fewest
// spaces.
func (o *Ops) CreateSpace(ctx context.Context, id string) (directory.Space, error) {
	return o.dir.CreateSpace(ctx, id, o.cfg.App)
}

// MoveSpace moves one space to machine.
func (o *Ops) MoveSpace(ctx context.Context, id, machine string) (Move, error) {
	before, err := o.dir.Lookup(ctx, id)
	if err != nil {
		return Move{}, err
	}
	sp, err := o.dir.MoveSpace(ctx, id, machine)
	if err != nil {
		return Move{}, err
	}
	mv := Move{Space: sp.ID, From: before.Machine, To: sp.Machine}
	o.log.Info("ops: space moved", "space", mv.Space, "from", mv.From, "to", mv.To)
	return mv, nil
}

// spacesByMachine returns the app's spaces grouped by machine, each group in ID order.
func (o *Ops) spacesByMachine(ctx context.Context) (map[string][]string, error) {
	spaces, err := o.dir.AppSpaces(ctx, o.cfg.App)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, sp := range spaces {
		out[sp.Machine] = append(out[sp.Machine], sp.ID)
	}
	return out, nil
}

// move applies one move, pausing MoveInterval after it.
func (o *Ops) move(ctx context.Context, mv Move) error {
	if _, err := o.dir.MoveSpace(ctx, mv.Space, mv.To); err != nil {
		return err
	}
	o.log.Info("ops: space moved", "space", mv.Space, "from", mv.From, "to", mv.To)
	if o.cfg.MoveInterval > 0 {
		return sleep(ctx, o.cfg.MoveInterval)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
