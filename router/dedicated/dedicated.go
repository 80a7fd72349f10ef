// Package dedicated is the placement policy "dedicated": every space gets a backend machine of its own,
// created through Fly's Machines API when the space is created, parked by Fly's auto-stop when nobody is
// connected, started again by the next replay to it (autostart), and destroyed when the space is deleted.
//
// A space exists in the directory only once its machine has started, and a machine that did not make it into
// the directory is destroyed at once; what a crash or a lost answer still leaves behind (a machine whose space
// is not in the directory, a space whose machine is gone), Reconcile finds and fixes. Each machine names its
// space in its metadata (MetadataSpace), which is how Reconcile tells orphans apart.
package dedicated

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/fly/machines"
)

// MetadataSpace is the machine metadata key naming the space a dedicated machine was created for.
const MetadataSpace = "spaceport_space"

// Defaults for Config fields left at their zero value.
const (
	// DefaultApp is the backend app machines are created in; the router's default BACKEND_APP.
	DefaultApp = directory.DefaultBackendApp
	// DefaultCreateTimeout bounds creating a space: the create call, the wait until the machine has started and
	// the directory insert. It stays below the router's 30s write timeout, so the caller always gets an answer.
	DefaultCreateTimeout = 25 * time.Second
	// DefaultCleanupTimeout bounds destroying a machine that did not make it into the directory, and retiring
	// the machine of a deleted space (stop, wait, destroy). It must exceed the backend's kill_timeout (30s).
	DefaultCleanupTimeout = 45 * time.Second
	// DefaultOrphanAge: Reconcile leaves alone a machine younger than this whose space is not in the directory,
	// because its creation may still be under way. It must exceed CreateTimeout.
	DefaultOrphanAge = 2 * time.Minute
	// DefaultInternalPort is the backend's port inside its machine (fly/backend/fly.toml's internal_port).
	DefaultInternalPort = 8080
	// DefaultMemoryMB is the memory of a created machine (fly/backend/fly.toml's [[vm]]).
	DefaultMemoryMB = 512
	// DefaultKillTimeout is a created machine's stop_config timeout (fly/backend/fly.toml's kill_timeout).
	DefaultKillTimeout = 30 * time.Second
)

// ImageAuto as Config.Image makes new machines run the image of the backend app's most recently updated
// machine: after a `fly deploy` has rolled out a release, new spaces get it too.
const ImageAuto = "auto"

// DefaultImageRefresh is Config.ImageRefresh's default.
const DefaultImageRefresh = time.Minute

// ErrMachineUnavailable is wrapped by every failure to create a space's machine that a later attempt may not
// meet: no capacity, the API's rate limit, a machine that did not start in time, an API that did not answer.
// Nothing is left behind by such a failure: no space, no machine (or, if the API's answer was lost, a machine
// that Reconcile destroys).
var ErrMachineUnavailable = errors.New("no backend machine could be created for the space; retry later")

// Config configures a Placer.
type Config struct {
	// Directory is the space directory. Required.
	Directory *directory.Directory
	// Machines is the Machines API client. Required.
	Machines *machines.Client
	// App is the backend app machines are created in. Empty means DefaultApp.
	App string
	// Image is the backend image created machines run (on Fly, the deployed release's image:
	// `fly image show -a BACKEND_APP`; flylocal records it and runs the app's configured command), or ImageAuto
	// to run the image of the app's most recently updated machine, which follows each `fly deploy` with no
	// change here. Required.
	Image string
	// ImageRefresh is how long ImageAuto keeps the image it found before it lists the app's machines again.
	// Zero means DefaultImageRefresh (1m).
	ImageRefresh time.Duration
	// Region is where machines are created. Empty lets the API choose (the region nearest to the router).
	Region string
	// Env is added to created machines' environment (Fly adds the app's secrets itself). Nil adds nothing.
	Env map[string]string
	// MemoryMB sizes created machines. Zero means DefaultMemoryMB.
	MemoryMB int
	// CreateTimeout bounds creating one space. Zero means DefaultCreateTimeout (25s).
	CreateTimeout time.Duration
	// CleanupTimeout bounds destroying a machine after a failed creation and retiring a deleted space's
	// machine. Zero means DefaultCleanupTimeout (45s).
	CleanupTimeout time.Duration
	// OrphanAge is how old a machine without its space must be before Reconcile destroys it. Zero means
	// DefaultOrphanAge (2m); negative means any age (only when no space is being created, as in tests).
	OrphanAge time.Duration
	// Logger receives one line per machine created, destroyed or repaired. Nil means slog.Default().
	Logger *slog.Logger
}

// Placer creates, retires and reconciles dedicated machines. It holds no state besides its configuration and
// is safe for concurrent use.
type Placer struct {
	cfg Config
	dir *directory.Directory
	api *machines.Client
	log *slog.Logger

	// The image ImageAuto found, and when.
	imageMu    sync.Mutex
	image      string
	imageFound time.Time
}

// New returns a Placer for cfg.
func New(cfg Config) (*Placer, error) {
	if cfg.Directory == nil || cfg.Machines == nil {
		return nil, errors.New("dedicated: Config.Directory and Config.Machines are required")
	}
	if cfg.Image == "" {
		return nil, errors.New("dedicated: Config.Image is required (the backend image created machines run)")
	}
	if cfg.App == "" {
		cfg.App = DefaultApp
	}
	if cfg.MemoryMB <= 0 {
		cfg.MemoryMB = DefaultMemoryMB
	}
	if cfg.CreateTimeout <= 0 {
		cfg.CreateTimeout = DefaultCreateTimeout
	}
	if cfg.CleanupTimeout <= 0 {
		cfg.CleanupTimeout = DefaultCleanupTimeout
	}
	if cfg.ImageRefresh <= 0 {
		cfg.ImageRefresh = DefaultImageRefresh
	}
	switch {
	case cfg.OrphanAge == 0:
		cfg.OrphanAge = DefaultOrphanAge
	case cfg.OrphanAge < 0:
		cfg.OrphanAge = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Placer{cfg: cfg, dir: cfg.Directory, api: cfg.Machines, log: cfg.Logger}, nil
}

// App is the backend app the Placer creates machines in.
func (p *Placer) App() string { return p.cfg.App }

// CreateSpace creates space id (a random ID if empty) on a new machine of its own: it creates the machine with
// the space in its metadata and auto-stop on, waits until it has started, then records the space on it in the
// directory. The work is bounded by Config.CreateTimeout and is not cut short when ctx is cancelled (a client
// that goes away must not leave a half-made space); only ctx's values are used.
//
// Errors: directory.ErrInvalidSpaceID, directory.ErrSpaceExists, and ErrMachineUnavailable wrapping the
// Machines API's or the wait's error. After an error no space exists and the machine, if one was made, has
// been destroyed (or, if that failed too, is left for Reconcile).
func (p *Placer) CreateSpace(ctx context.Context, id string) (directory.Space, error) {
	if id == "" {
		id = directory.NewSpaceID()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.CreateTimeout)
	defer cancel()
	// A cheap early refusal; the directory insert below is what decides.
	switch _, err := p.dir.Lookup(ctx, id); {
	case err == nil:
		return directory.Space{}, fmt.Errorf("create space %s: %w", id, directory.ErrSpaceExists)
	case !errors.Is(err, directory.ErrSpaceNotFound):
		return directory.Space{}, err
	}
	start := time.Now()
	m, err := p.startMachine(ctx, id)
	if err != nil {
		return directory.Space{}, fmt.Errorf("create space %s: %w", id, err)
	}
	sp, err := p.dir.CreateDedicatedSpace(ctx, id, directory.Machine{ID: m.ID, App: p.cfg.App, Region: m.Region})
	if err != nil {
		p.destroy(m.ID, "its space was not created: "+err.Error())
		if !errors.Is(err, directory.ErrSpaceExists) && !errors.Is(err, directory.ErrInvalidSpaceID) {
			err = fmt.Errorf("%w: %w", ErrMachineUnavailable, err)
		}
		return directory.Space{}, fmt.Errorf("create space %s: %w", id, err)
	}
	p.log.Info("dedicated: space created on its own machine", "space", id, "machine", m.ID,
		"took", time.Since(start).Round(time.Millisecond))
	return sp, nil
}

// startMachine creates a machine for space and waits until it has started; on a failed wait it destroys it.
func (p *Placer) startMachine(ctx context.Context, space string) (*machines.Machine, error) {
	image, err := p.imageToRun(ctx)
	if err != nil {
		return nil, err
	}
	m, err := p.api.Create(ctx, p.cfg.App, machines.CreateRequest{Region: p.cfg.Region, Config: p.machineConfig(space, image)})
	if err != nil {
		// If the answer was lost after the machine was made, Reconcile finds it by its metadata.
		return nil, fmt.Errorf("%w: %w", ErrMachineUnavailable, err)
	}
	p.log.Info("dedicated: machine created", "space", space, "machine", m.ID)
	if err := p.api.Wait(ctx, p.cfg.App, m.ID, machines.WaitRequest{State: machines.StateStarted,
		Timeout: time.Until(deadline(ctx))}); err != nil {
		p.destroy(m.ID, "it did not start: "+err.Error())
		return nil, fmt.Errorf("%w: machine %s did not start: %w", ErrMachineUnavailable, m.ID, err)
	}
	return m, nil
}

// imageToRun is the image of a new machine: Config.Image, or with ImageAuto the image of the app's most
// recently updated machine (ties go to the one created last), looked up at most every Config.ImageRefresh.
func (p *Placer) imageToRun(ctx context.Context) (string, error) {
	if p.cfg.Image != ImageAuto {
		return p.cfg.Image, nil
	}
	p.imageMu.Lock()
	defer p.imageMu.Unlock()
	if p.image != "" && time.Since(p.imageFound) < p.cfg.ImageRefresh {
		return p.image, nil
	}
	list, err := p.api.List(ctx, p.cfg.App, machines.ListOptions{})
	if err != nil {
		if p.image != "" {
			p.log.Warn("dedicated: could not list the app's machines; keeping the image found before",
				"image", p.image, "err", err)
			return p.image, nil
		}
		return "", fmt.Errorf("%w: find the image of app %s's machines: %w", ErrMachineUnavailable, p.cfg.App, err)
	}
	var newest *machines.Machine
	for i := range list {
		m := &list[i]
		if !m.Active() || m.Config == nil || m.Config.Image == "" {
			continue
		}
		if newest == nil || m.UpdatedAt.After(newest.UpdatedAt) ||
			(m.UpdatedAt.Equal(newest.UpdatedAt) && m.CreatedAt.After(newest.CreatedAt)) {
			newest = m
		}
	}
	if newest == nil {
		return "", fmt.Errorf("%w: image %s: app %s has no machine to take the image from (deploy it first, or set the image)",
			ErrMachineUnavailable, ImageAuto, p.cfg.App)
	}
	if newest.Config.Image != p.image {
		p.log.Info("dedicated: new machines run the image of the app's newest machine", "image", newest.Config.Image,
			"machine", newest.ID)
	}
	p.image, p.imageFound = newest.Config.Image, time.Now()
	return p.image, nil
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// machineConfig is the config of a machine dedicated to space: fly/backend/fly.toml's, expressed for the
// Machines API (which does not read fly.toml), with the space in the metadata.
func (p *Placer) machineConfig(space, image string) machines.MachineConfig {
	signal := "SIGTERM"
	service := map[string]any{
		"protocol":      "tcp",
		"internal_port": DefaultInternalPort,
		"ports": []map[string]any{
			{"port": 80, "handlers": []string{"http"}},
			{"port": 443, "handlers": []string{"tls", "http"}},
		},
		// Parked when nobody is connected, started by the next replay to it.
		"autostop":             true,
		"autostart":            true,
		"min_machines_running": 0,
		"concurrency":          map[string]any{"type": "connections", "soft_limit": 2000, "hard_limit": 5000},
	}
	services, _ := json.Marshal([]any{service})
	metrics, _ := json.Marshal(map[string]any{"port": DefaultInternalPort, "path": "/metrics"})
	return machines.MachineConfig{
		Image: image,
		Env:   p.cfg.Env,
		Metadata: map[string]string{
			// Managed by fly deploy like the app's other machines, so a deploy updates their image in place.
			machines.MetadataPlatformVersion: "v2",
			machines.MetadataProcessGroup:    "app",
			MetadataSpace:                    space,
		},
		Guest:      &machines.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: p.cfg.MemoryMB},
		Restart:    &machines.Restart{Policy: "on-failure"},
		StopConfig: &machines.StopConfig{Signal: &signal, Timeout: &machines.Duration{Duration: DefaultKillTimeout}},
		Extra:      map[string]json.RawMessage{"services": services, "metrics": metrics},
	}
}

// destroy force-destroys machine id with a context of its own, logging why; a failure is logged and left to
// Reconcile.
func (p *Placer) destroy(id, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.CleanupTimeout)
	defer cancel()
	if err := p.api.Delete(ctx, p.cfg.App, id, true); err != nil && !errors.Is(err, machines.ErrNotFound) {
		p.log.Warn("dedicated: could not destroy machine; the reconciler will", "machine", id, "why", why, "err", err)
		return
	}
	p.log.Info("dedicated: machine destroyed", "machine", id, "why", why)
}

// DeleteResult is what DeleteSpace did.
type DeleteResult struct {
	// Space is the deleted space's last placement.
	Space directory.Space
	// Retired: the space's machine was dedicated to it and has been stopped and destroyed.
	Retired bool
}

// DeleteSpace removes space id from the directory and, if its machine was dedicated to it, retires the machine:
// the deletion is announced first (routers forget the space, so no replay starts the machine again, and the
// machine lets the space go), then the machine is stopped with SIGTERM, on which the backend finishes the batch
// in flight (nothing acknowledged was ever uncommitted), and once it is stopped it is destroyed. The space's
// data stays in Postgres.
//
// An error after the space left the directory is returned with Space set and Retired false: the machine is then
// an orphan, which Reconcile destroys.
func (p *Placer) DeleteSpace(ctx context.Context, id string) (DeleteResult, error) {
	sp, err := p.dir.DeleteSpace(ctx, id)
	if err != nil {
		return DeleteResult{}, err
	}
	res := DeleteResult{Space: sp}
	p.log.Info("dedicated: space deleted", "space", id, "machine", sp.Machine)
	if sp.App != p.cfg.App {
		return res, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.CleanupTimeout)
	defer cancel()
	m, err := p.api.Get(ctx, p.cfg.App, sp.Machine)
	switch {
	case errors.Is(err, machines.ErrNotFound):
		return res, p.forget(ctx, sp.Machine)
	case err != nil:
		return res, fmt.Errorf("delete space %s: retire machine %s: %w", id, sp.Machine, err)
	case m.Config == nil || m.Config.Metadata[MetadataSpace] != id:
		return res, nil // a shared machine, or one made for another space: it stays
	}
	if err := p.retire(ctx, m); err != nil {
		return res, fmt.Errorf("delete space %s: %w", id, err)
	}
	res.Retired = true
	return res, nil
}

// retire stops machine m (SIGTERM: the backend finishes its batch in flight), waits until it is stopped,
// destroys it and forgets it in the directory.
func (p *Placer) retire(ctx context.Context, m *machines.Machine) error {
	stop := machines.StopRequest{Signal: "SIGTERM", Timeout: DefaultKillTimeout}
	if err := p.api.StopAndWait(ctx, p.cfg.App, m, stop, time.Until(deadline(ctx))); err != nil &&
		!errors.Is(err, machines.ErrNotFound) {
		return fmt.Errorf("retire machine %s: %w", m.ID, err)
	}
	if err := p.api.Destroy(ctx, p.cfg.App, m.ID, time.Until(deadline(ctx))); err != nil {
		return fmt.Errorf("retire machine %s: %w", m.ID, err)
	}
	p.log.Info("dedicated: machine retired", "machine", m.ID)
	return p.forget(ctx, m.ID)
}

// forget removes a destroyed machine from the directory; one that is not there is already forgotten.
func (p *Placer) forget(ctx context.Context, id string) error {
	if err := p.dir.DeleteMachine(ctx, id); err != nil && !errors.Is(err, directory.ErrMachineNotFound) {
		return err
	}
	return nil
}
