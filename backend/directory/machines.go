package directory

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Machine is a backend machine as it registers itself: on Fly, ID is
// FLY_MACHINE_ID, App is FLY_APP_NAME and Region is FLY_REGION.
type Machine struct {
	ID     string
	App    string
	Region string
}

// MachineState is a machine's declared state. Only started machines receive
// new spaces; spaces already on a stopped machine stay there (Fly starts a
// stopped machine when a request is replayed to it).
type MachineState string

// Machine states.
const (
	MachineStarted MachineState = "started"
	MachineStopped MachineState = "stopped"
)

func (s MachineState) valid() bool { return s == MachineStarted || s == MachineStopped }

// MachineInfo is a machine as ListMachines reports it.
type MachineInfo struct {
	Machine
	State         MachineState
	LastHeartbeat time.Time
	CreatedAt     time.Time
	// Spaces is how many spaces the directory assigns to the machine.
	Spaces int
	// Live: started, and a heartbeat within the live window (by the
	// database's clock at the time of the query).
	Live bool
	// Dedicated: the machine was created for one space (CreateDedicatedSpace)
	// and receives no other.
	Dedicated bool
}

// maxNameLen bounds machine IDs, app names and regions.
const maxNameLen = 64

// validName reports whether s may be a machine ID or app name: 1 to 64 of
// [A-Za-z0-9_.-]. Both end up inside a fly-replay header, where ';', ',', '='
// or quotes would change its meaning.
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

// valid reports whether m may be recorded: its ID and app are valid names
// and its region is not too long.
func (m Machine) valid() bool {
	return validName(m.ID) && validName(m.App) && len(m.Region) <= maxNameLen
}

// RegisterMachine records m as started with a heartbeat now, creating it or
// updating the app and region of an existing row (a machine that restarts
// registers again under the same ID and keeps its spaces).
func (d *Directory) RegisterMachine(ctx context.Context, m Machine) error {
	if !m.valid() {
		return fmt.Errorf("register machine %.64q (app %.64q): %w", m.ID, m.App, ErrInvalidMachine)
	}
	_, err := d.pool.Exec(ctx, `
		INSERT INTO directory.machines (id, app, region, state, last_heartbeat)
		VALUES ($1, $2, $3, $4, now())
		ON CONFLICT (id) DO UPDATE
		SET app = EXCLUDED.app, region = EXCLUDED.region, state = EXCLUDED.state, last_heartbeat = now()`,
		m.ID, m.App, m.Region, string(MachineStarted))
	if err != nil {
		return fmt.Errorf("register machine %s: %w", m.ID, err)
	}
	return nil
}

// Heartbeat marks machine id alive now. It does not change its state: a
// machine marked stopped stays out of placement until it registers again.
func (d *Directory) Heartbeat(ctx context.Context, id string) error {
	tag, err := d.pool.Exec(ctx, `UPDATE directory.machines SET last_heartbeat = now() WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("heartbeat machine %.64q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("heartbeat machine %.64q: %w", id, ErrMachineNotFound)
	}
	return nil
}

// SetMachineState declares machine id started or stopped. A backend sets
// MachineStopped on graceful shutdown so no new space is placed on it while
// its last heartbeat is still fresh.
func (d *Directory) SetMachineState(ctx context.Context, id string, state MachineState) error {
	if !state.valid() {
		return fmt.Errorf("set machine %.64q state %.32q: %w", id, state, ErrInvalidMachineState)
	}
	tag, err := d.pool.Exec(ctx, `UPDATE directory.machines SET state = $2 WHERE id = $1`, id, string(state))
	if err != nil {
		return fmt.Errorf("set machine %.64q state %s: %w", id, state, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("set machine %.64q state %s: %w", id, state, ErrMachineNotFound)
	}
	return nil
}

// ListMachines returns every machine, ordered by app then ID, with its space
// count and liveness.
func (d *Directory) ListMachines(ctx context.Context) ([]MachineInfo, error) {
	rows, err := d.pool.Query(ctx, `
		SELECT id, app, region, state, last_heartbeat, created_at, space_count,
		       state = 'started' AND last_heartbeat > now() - $1::bigint * interval '1 microsecond',
		       dedicated
		FROM directory.machines
		ORDER BY app, id`, d.liveWindowMicros())
	if err != nil {
		return nil, fmt.Errorf("list machines: %w", err)
	}
	defer rows.Close()
	var out []MachineInfo
	for rows.Next() {
		var m MachineInfo
		var state string
		if err := rows.Scan(&m.ID, &m.App, &m.Region, &state, &m.LastHeartbeat, &m.CreatedAt, &m.Spaces, &m.Live, &m.Dedicated); err != nil {
			return nil, fmt.Errorf("list machines: %w", err)
		}
		m.State = MachineState(state)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list machines: %w", err)
	}
	return out, nil
}

// RunHeartbeat beats for m every interval (0 means DefaultHeartbeatInterval)
// until ctx is done; run it in a goroutine whose owner cancels ctx. A failed
// beat is logged and retried at the next tick; if the machine's row has
// vanished (database restored, row deleted by hand) it registers m again. It
// does not mark the machine stopped on return: call SetMachineState with a
// fresh context for that during graceful shutdown.
func (d *Directory) RunHeartbeat(ctx context.Context, m Machine, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultHeartbeatInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		bctx, cancel := context.WithTimeout(ctx, interval)
		err := d.Heartbeat(bctx, m.ID)
		if errors.Is(err, ErrMachineNotFound) {
			d.log.Warn("directory: machine row missing, registering again", "machine", m.ID)
			err = d.RegisterMachine(bctx, m)
		}
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			failures++
			d.log.Warn("directory: heartbeat failed", "machine", m.ID, "failures", failures, "err", err)
		case failures > 0:
			d.log.Info("directory: heartbeat recovered", "machine", m.ID, "after_failures", failures)
			failures = 0
		}
	}
}
