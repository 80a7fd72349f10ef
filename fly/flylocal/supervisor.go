package flylocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Region is the region of every flylocal machine (FLY_REGION, PRIMARY_REGION, fly-replay-src's region).
const Region = "local"

// PrivateIP is every machine's FLY_PRIVATE_IP, and the address flylocal connects to.
const PrivateIP = "127.0.0.1"

// Restart backoff for machines that exit with an error, doubled after each consecutive failure. A machine that
// ran longer than MaxRestartBackoff before failing starts again from MinRestartBackoff.
const (
	MinRestartBackoff = 100 * time.Millisecond
	MaxRestartBackoff = 5 * time.Second
)

// readyPollInterval is how often a starting machine's port is tried.
const readyPollInterval = 20 * time.Millisecond

// outputWaitDelay bounds how long flylocal keeps reading a machine's output after its process exited (a child of
// the machine may hold the pipes open).
const outputWaitDelay = 2 * time.Second

var (
	// ErrMachineNotFound means no machine has the given ID.
	ErrMachineNotFound = errors.New("machine not found")
	// ErrMachineExited means a machine's process exited before it accepted connections.
	ErrMachineExited = errors.New("machine exited before accepting connections")
	// ErrMachineStopped means a machine was stopped (by Stop) while Start waited for it.
	ErrMachineStopped = errors.New("machine stopped while starting")
	// ErrSupervisorClosed means the supervisor is closed and starts no machine.
	ErrSupervisorClosed = errors.New("supervisor closed")
)

// State is a machine's state, named as in Fly's Machines API.
type State string

// Machine states. Start moves a machine from stopped through starting to started; Stop moves it through stopping
// to stopped. A machine whose process exits with an error goes back to starting and is restarted; one whose
// process exits with status 0 becomes stopped, as on Fly with the default restart policy (on-failure).
const (
	StateStopped  State = "stopped"
	StateStarting State = "starting"
	StateStarted  State = "started"
	StateStopping State = "stopping"
)

// MachineConfig is what the supervisor needs to run a machine.
type MachineConfig struct {
	// ID is the machine ID (FLY_MACHINE_ID, FLY_ALLOC_ID). Required and unique.
	ID string
	// App is the app the machine belongs to (FLY_APP_NAME). Required.
	App string
	// Port is the port the machine listens on (PORT). Required.
	Port int
	// Command is the program and its arguments. Required.
	Command []string
	// Env is added to the supervisor's Env ("KEY=value"); Fly's variables are added after it.
	Env []string
	// Autostart lets the proxy start this machine when a request is routed to it while it is stopped.
	Autostart bool
	// KillTimeout is how long Stop waits after SIGTERM before SIGKILL. Zero means DefaultKillTimeout.
	KillTimeout time.Duration
}

// Machine is a snapshot of a machine.
type Machine struct {
	ID, App   string
	Port      int
	State     State
	Autostart bool
}

// Addr is the address to connect to the machine.
func (m Machine) Addr() string { return net.JoinHostPort(PrivateIP, strconv.Itoa(m.Port)) }

// Supervisor runs machines as child processes: it starts and stops them on request and restarts those that
// crash. Set the exported fields before the first Add; its methods are safe for concurrent use.
type Supervisor struct {
	// Logger receives one line per machine event. Nil means slog.Default().
	Logger *slog.Logger
	// Output receives the machines' stdout and stderr, each line prefixed with "[app machine-id] ". Nil means
	// os.Stderr.
	Output io.Writer
	// Env is the base environment of every machine ("KEY=value"). Nil means flylocal's own environment.
	Env []string
	// StartTimeout bounds Start's wait for the machine to accept connections when ctx has no earlier deadline.
	// Zero means DefaultStartTimeout.
	StartTimeout time.Duration

	outMu sync.Mutex // serialises writes of whole lines to Output

	mu       sync.Mutex
	extraEnv []string // set by SetExtraEnv: before every machine's Env
	machines map[string]*machine
	order    []string // IDs in the order added
	closed   bool
	wg       sync.WaitGroup // run loops
}

// machine is a supervised machine. Fields below cfg are guarded by Supervisor.mu.
type machine struct {
	cfg MachineConfig

	state   State
	changed chan struct{} // closed and replaced on every state change and every exit
	exits   int           // process exits so far
	lastErr error         // why the process last exited
	stop    chan struct{} // non-nil while a run loop runs; closed to ask it to stop the machine
	stopped bool          // stop is closed
	done    chan struct{} // closed when the run loop returns
}

// NewSupervisor returns a supervisor with no machines.
func NewSupervisor() *Supervisor {
	return &Supervisor{machines: make(map[string]*machine)}
}

// Add registers a machine in state stopped.
func (s *Supervisor) Add(cfg MachineConfig) error {
	if cfg.ID == "" || cfg.App == "" || cfg.Port == 0 || len(cfg.Command) == 0 {
		return fmt.Errorf("add machine %q: id, app, port and command are required", cfg.ID)
	}
	if cfg.KillTimeout <= 0 {
		cfg.KillTimeout = DefaultKillTimeout
	}
	cfg.Command = slices.Clone(cfg.Command)
	cfg.Env = slices.Clone(cfg.Env)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrSupervisorClosed
	}
	if _, ok := s.machines[cfg.ID]; ok {
		return fmt.Errorf("add machine %s: already exists", cfg.ID)
	}
	s.machines[cfg.ID] = &machine{cfg: cfg, state: StateStopped, changed: make(chan struct{})}
	s.order = append(s.order, cfg.ID)
	return nil
}

// Machine returns a snapshot of the machine with the given ID.
func (s *Supervisor) Machine(id string) (Machine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.machines[id]
	if !ok {
		return Machine{}, fmt.Errorf("%w: %s", ErrMachineNotFound, id)
	}
	return m.snapshot(), nil
}

// State returns the state of the machine with the given ID.
func (s *Supervisor) State(id string) (State, error) {
	m, err := s.Machine(id)
	return m.State, err
}

// Machines returns snapshots of the machines of app, or of all machines if app is empty, in the order added.
func (s *Supervisor) Machines(app string) []Machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Machine
	for _, id := range s.order {
		if m := s.machines[id]; app == "" || m.cfg.App == app {
			out = append(out, m.snapshot())
		}
	}
	return out
}

func (m *machine) snapshot() Machine {
	return Machine{ID: m.cfg.ID, App: m.cfg.App, Port: m.cfg.Port, State: m.state, Autostart: m.cfg.Autostart}
}

// Start starts the machine if it is stopped and waits until it accepts connections on its port. It returns an
// error wrapping ErrMachineExited if the process exits first; the machine is then restarted with backoff (or
// stays stopped after status 0) and a later Start may succeed. Starting a started machine does nothing; starting
// a stopping one waits for it to stop, then starts it.
func (s *Supervisor) Start(ctx context.Context, id string) error {
	if _, ok := ctx.Deadline(); !ok {
		timeout := s.StartTimeout
		if timeout <= 0 {
			timeout = DefaultStartTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	s.mu.Lock()
	m, ok := s.machines[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("start: %w: %s", ErrMachineNotFound, id)
	}
	// baseline is the count of process exits when the attempt this call waits for began; another exit means that
	// attempt failed. A machine that is stopping will exit once more first: the baseline is taken after that.
	baseline := m.exits
	if m.state == StateStopping {
		baseline = -1
	}
	for {
		if s.closed {
			s.mu.Unlock()
			return fmt.Errorf("start machine %s: %w", id, ErrSupervisorClosed)
		}
		if baseline == -1 && m.state != StateStopping {
			baseline = m.exits
		}
		if m.state == StateStarted {
			s.mu.Unlock()
			return nil
		}
		// While the machine is still stopping there is no attempt of ours yet whose exit could be counted.
		if baseline != -1 && m.exits != baseline {
			err := m.lastErr
			s.mu.Unlock()
			return startError(id, err)
		}
		if m.state == StateStopped {
			s.launch(m)
		}
		changed := m.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("start machine %s: %w", id, context.Cause(ctx))
		}
		s.mu.Lock()
	}
}

func startError(id string, err error) error {
	if errors.Is(err, ErrMachineStopped) {
		return fmt.Errorf("start machine %s: %w", id, err)
	}
	return fmt.Errorf("start machine %s: %w: %w", id, ErrMachineExited, err)
}

// launch starts the run loop of a stopped machine. s.mu must be held.
func (s *Supervisor) launch(m *machine) {
	m.stop = make(chan struct{})
	m.stopped = false
	m.done = make(chan struct{})
	m.setState(StateStarting)
	s.wg.Add(1)
	go s.run(m, m.stop, m.done)
}

// Stop stops the machine: SIGTERM to its process group, then SIGKILL after its KillTimeout. It waits until the
// process has exited or ctx is done. Stopping a stopped machine does nothing.
func (s *Supervisor) Stop(ctx context.Context, id string) error {
	s.mu.Lock()
	m, ok := s.machines[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("stop: %w: %s", ErrMachineNotFound, id)
	}
	done := m.requestStop()
	s.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop machine %s: %w", id, context.Cause(ctx))
	}
}

// requestStop asks the run loop to stop the machine and returns the channel closed when it has; nil if the
// machine is stopped. Supervisor.mu must be held.
func (m *machine) requestStop() <-chan struct{} {
	if m.stop == nil {
		return nil
	}
	if !m.stopped {
		close(m.stop)
		m.stopped = true
		m.setState(StateStopping)
	}
	return m.done
}

// Close stops every machine and waits for them, until ctx is done. After Close, Start fails.
func (s *Supervisor) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	var waits []<-chan struct{}
	for _, m := range s.machines {
		if done := m.requestStop(); done != nil {
			waits = append(waits, done)
		}
		m.signalChange() // wake Start calls so they see closed
	}
	s.mu.Unlock()
	for _, done := range waits {
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("close supervisor: %w", context.Cause(ctx))
		}
	}
	s.wg.Wait()
	return nil
}

// setState sets the state and wakes those waiting for a change. Supervisor.mu must be held.
func (m *machine) setState(st State) {
	m.state = st
	m.signalChange()
}

func (m *machine) signalChange() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// run is a machine's run loop: it runs the process, restarts it after a failure and stops it when stop is
// closed. It owns the process and the goroutines that watch it.
func (s *Supervisor) run(m *machine, stop <-chan struct{}, done chan struct{}) {
	defer s.wg.Done()
	log := s.logger().With("app", m.cfg.App, "machine", m.cfg.ID)
	backoff := MinRestartBackoff
	for {
		start := time.Now()
		stopped, err := s.runProcess(m, stop, log)
		s.mu.Lock()
		m.exits++
		switch {
		case stopped:
			m.lastErr = ErrMachineStopped
		case err == nil:
			m.lastErr = errors.New("exit status 0")
		default:
			m.lastErr = err
		}
		if stopped || err == nil {
			if !stopped {
				log.Info("machine exited with status 0; stopped")
			}
			m.stop, m.done = nil, nil
			m.setState(StateStopped)
			s.mu.Unlock()
			close(done)
			return
		}
		m.setState(StateStarting)
		s.mu.Unlock()

		if time.Since(start) > MaxRestartBackoff {
			backoff = MinRestartBackoff
		}
		log.Warn("machine failed; restarting", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			s.mu.Lock()
			m.stop, m.done = nil, nil
			m.setState(StateStopped)
			s.mu.Unlock()
			close(done)
			return
		}
		backoff = min(2*backoff, MaxRestartBackoff)
	}
}

// runProcess runs the machine's process once, marks the machine started when its port accepts connections, and
// returns when the process has exited: whether stop asked for it, and the reason (nil for status 0).
func (s *Supervisor) runProcess(m *machine, stop <-chan struct{}, log *slog.Logger) (stopped bool, err error) {
	cmd := exec.Command(m.cfg.Command[0], m.cfg.Command[1:]...)
	cmd.Env = s.environ(m.cfg)
	prefix := "[" + m.cfg.App + " " + m.cfg.ID + "] "
	stdout := &lineWriter{out: s.output(), mu: &s.outMu, prefix: prefix}
	stderr := &lineWriter{out: s.output(), mu: &s.outMu, prefix: prefix}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A process group of its own: Ctrl-C in a terminal reaches flylocal only, which stops machines in order,
	// and a stop signal reaches the machine's own children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = outputWaitDelay
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("start process: %w", err)
	}
	log.Info("machine process started", "pid", cmd.Process.Pid, "port", m.cfg.Port)

	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	readyDone := make(chan struct{})
	go func() {
		defer close(readyDone)
		if waitReady(m.cfg.Port, exited, stop) {
			s.mu.Lock()
			if m.state == StateStarting {
				m.setState(StateStarted)
			}
			s.mu.Unlock()
			log.Info("machine started")
		}
	}()

	select {
	case <-exited:
		select {
		case <-stop:
			stopped = true
		default:
		}
	case <-stop:
		stopped = true
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(m.cfg.KillTimeout)
		select {
		case <-exited:
			t.Stop()
		case <-t.C:
			log.Warn("machine did not stop in time; killing", "kill_timeout", m.cfg.KillTimeout)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-exited
		}
	}
	<-readyDone
	stdout.flush()
	stderr.flush()
	if stopped {
		log.Info("machine stopped", "exit", waitErr)
	}
	return stopped, waitErr
}

// waitReady polls port until it accepts a connection (true) or the process exits or is being stopped (false).
func waitReady(port int, exited, stop <-chan struct{}) bool {
	addr := net.JoinHostPort(PrivateIP, strconv.Itoa(port))
	t := time.NewTicker(readyPollInterval)
	defer t.Stop()
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			return true
		}
		select {
		case <-exited:
			return false
		case <-stop:
			return false
		case <-t.C:
		}
	}
}

// SetExtraEnv sets variables ("KEY=value") that machines started from now on get after the base environment and
// before their own Env, so that configuration overrides them: flylocal sets FLY_API_HOSTNAME this way once its
// Machines API listens.
func (s *Supervisor) SetExtraEnv(env []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extraEnv = slices.Clone(env)
}

// environ is the environment of a machine: the base, the extra variables, the machine's Env, then Fly's
// variables (later entries win).
func (s *Supervisor) environ(cfg MachineConfig) []string {
	env := s.Env
	if env == nil {
		env = os.Environ()
	}
	s.mu.Lock()
	extra := s.extraEnv
	s.mu.Unlock()
	env = slices.Concat(env, extra, cfg.Env)
	return append(env,
		"FLY_APP_NAME="+cfg.App,
		"FLY_MACHINE_ID="+cfg.ID,
		"FLY_ALLOC_ID="+cfg.ID,
		"FLY_REGION="+Region,
		"PRIMARY_REGION="+Region,
		"FLY_PRIVATE_IP="+PrivateIP,
		"PORT="+strconv.Itoa(cfg.Port),
	)
}

func (s *Supervisor) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Supervisor) output() io.Writer {
	if s.Output != nil {
		return s.Output
	}
	return os.Stderr
}
