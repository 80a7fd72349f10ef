package flylocal

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// StateDestroyed is the state of a machine that Remove took away, as Fly's Machines API names a deleted machine.
// No snapshot has it; WaitState accepts it.
const StateDestroyed State = "destroyed"

var (
	// ErrMachineNotStopped means an operation needs a stopped machine: Remove does.
	ErrMachineNotStopped = errors.New("machine is not stopped")
	// ErrMachineStopping means a machine cannot be started until it has finished stopping.
	ErrMachineStopping = errors.New("machine is stopping")
)

// These methods serve flylocal's Machines API, whose calls return at once, as Fly's do: a start or stop is
// requested, and the caller waits for the state it wants with WaitState.

// RequestStart starts a stopped machine without waiting for it to accept connections; it returns the state the
// machine was in. A started or starting machine is left as it is. A stopping machine cannot be started yet:
// ErrMachineStopping.
func (s *Supervisor) RequestStart(id string) (previous State, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.machines[id]
	if !ok {
		return "", fmt.Errorf("start: %w: %s", ErrMachineNotFound, id)
	}
	if s.closed {
		return m.state, fmt.Errorf("start machine %s: %w", id, ErrSupervisorClosed)
	}
	previous = m.state
	switch m.state {
	case StateStopped:
		s.launch(m)
	case StateStopping:
		return previous, fmt.Errorf("start machine %s: %w", id, ErrMachineStopping)
	}
	return previous, nil
}

// RequestStop asks a machine to stop (SIGTERM, then SIGKILL after its kill timeout) without waiting for it; it
// returns the state the machine was in. Stopping a stopped machine does nothing.
func (s *Supervisor) RequestStop(id string) (previous State, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.machines[id]
	if !ok {
		return "", fmt.Errorf("stop: %w: %s", ErrMachineNotFound, id)
	}
	previous = m.state
	m.requestStop()
	return previous, nil
}

// Remove takes a stopped machine away for good: it no longer appears in Machines and cannot be started.
// WaitState for StateDestroyed returns once it is gone. Its port is the caller's to release.
func (s *Supervisor) Remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.machines[id]
	if !ok {
		return fmt.Errorf("remove: %w: %s", ErrMachineNotFound, id)
	}
	if m.state != StateStopped || m.stop != nil {
		return fmt.Errorf("remove machine %s (%s): %w", id, m.state, ErrMachineNotStopped)
	}
	delete(s.machines, id)
	s.order = slices.DeleteFunc(s.order, func(x string) bool { return x == id })
	m.signalChange() // wake WaitState calls, which then find it gone
	return nil
}

// WaitState waits until machine id is in state want, or, for StateDestroyed, until it has been removed. It
// returns ctx's error if that comes first, and ErrMachineNotFound if the machine is gone while waiting for another
// state.
func (s *Supervisor) WaitState(ctx context.Context, id string, want State) error {
	for {
		s.mu.Lock()
		m, ok := s.machines[id]
		if !ok {
			s.mu.Unlock()
			if want == StateDestroyed {
				return nil
			}
			return fmt.Errorf("wait for machine %s to be %s: %w", id, want, ErrMachineNotFound)
		}
		if m.state == want {
			s.mu.Unlock()
			return nil
		}
		changed := m.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("wait for machine %s to be %s: %w", id, want, context.Cause(ctx))
		}
	}
}
