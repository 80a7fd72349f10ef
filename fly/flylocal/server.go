package flylocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// readHeaderTimeout bounds how long a client may take to send request headers to the edge.
const readHeaderTimeout = 10 * time.Second

// Server is flylocal: the machines of every configured app, run by a Supervisor, behind the edge Proxy.
// Create it with NewServer, then Open; Close stops everything.
type Server struct {
	// Config is the configuration, defaults filled in.
	Config Config
	// Supervisor runs the machines; use it to stop, start and inspect them.
	Supervisor *Supervisor
	// Proxy is the edge.
	Proxy *Proxy
	// API is the Machines API, served on Config.APIListen when that is set.
	API *MachinesAPI

	logger *slog.Logger
	ports  []int // claimed by assignMachines; released by Close

	api       *apiListener // nil unless Config.APIListen is set
	ln        net.Listener
	http      *http.Server
	cancel    context.CancelFunc // cancels every request's context, ending WebSocket tunnels
	stopIdle  context.CancelFunc // stops runIdleStop
	idleDone  chan struct{}      // closed when runIdleStop has returned
	serveErr  chan error
	closeOnce sync.Once
	closeErr  error
}

// NewServer prepares flylocal for cfg: it gives every machine its ID and port (kept in cfg.StateDir across runs)
// and registers the machines, stopped. Machines log to output (nil: os.Stderr); flylocal logs to logger (nil:
// slog.Default()).
func NewServer(cfg Config, logger *slog.Logger, output io.Writer) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	machines, err := assignMachines(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{Config: cfg, logger: logger}
	for _, m := range machines {
		s.ports = append(s.ports, m.Port)
	}
	sup := NewSupervisor()
	sup.Logger = logger
	sup.Output = output
	sup.StartTimeout = time.Duration(cfg.StartTimeout)
	for _, m := range machines {
		app, _ := cfg.app(m.App)
		err := sup.Add(MachineConfig{
			ID:          m.ID,
			App:         m.App,
			Port:        m.Port,
			Command:     app.Command,
			Env:         slices.Concat(envList(cfg.Env), envList(app.Env)),
			Autostart:   *app.Autostart,
			KillTimeout: time.Duration(app.KillTimeout),
		})
		if err != nil {
			releasePorts(s.ports)
			return nil, err
		}
	}
	api, err := newMachinesAPI(cfg, sup, logger)
	if err != nil {
		releasePorts(s.ports)
		return nil, err
	}
	apps := make([]string, len(cfg.Apps))
	for i, a := range cfg.Apps {
		apps[i] = a.Name
	}
	s.Supervisor = sup
	s.API = api
	s.Proxy = NewProxy(sup, cfg.EdgeApp, apps, logger)
	return s, nil
}

// Open listens on Config.Listen, serves the edge, starts every machine and waits until all accept connections.
// If one does not (it exits, or takes longer than Config.StartTimeout), Open closes everything and fails.
func (s *Server) Open(ctx context.Context) error {
	if err := s.openAPI(); err != nil {
		releasePorts(s.ports)
		s.API.release()
		return err
	}
	ln, err := net.Listen("tcp", s.Config.Listen)
	if err != nil {
		err = errors.Join(fmt.Errorf("listen: %w", err), s.closeAPI(ctx))
		releasePorts(s.ports)
		s.API.release()
		return err
	}
	baseCtx, cancel := context.WithCancel(context.Background())
	s.ln, s.cancel = ln, cancel
	s.http = &http.Server{
		Handler:           s.Proxy,
		ReadHeaderTimeout: readHeaderTimeout,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ConnContext:       ConnContext,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
	s.serveErr = make(chan error, 1)
	go func() { s.serveErr <- s.http.Serve(ln) }()
	s.logger.Info("edge listening", "addr", ln.Addr().String(), "edge_app", s.Config.EdgeApp)

	machines := s.Supervisor.Machines("")
	errs := make(chan error, len(machines))
	for _, m := range machines {
		go func() { errs <- s.Supervisor.Start(ctx, m.ID) }()
	}
	var startErr error
	for range machines {
		startErr = errors.Join(startErr, <-errs)
	}
	if startErr != nil {
		closeCtx, cancel := context.WithTimeout(context.Background(), DefaultKillTimeout+5*time.Second)
		defer cancel()
		return errors.Join(startErr, s.Close(closeCtx))
	}
	idleCtx, stopIdle := context.WithCancel(context.Background())
	s.stopIdle, s.idleDone = stopIdle, make(chan struct{})
	go func() {
		defer close(s.idleDone)
		s.runIdleStop(idleCtx)
	}()
	return nil
}

// Addr is the address the edge listens on; valid after Open.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the edge's base URL ("http://127.0.0.1:8080"); valid after Open.
func (s *Server) URL() string {
	addr := s.ln.Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, fmt.Sprint(addr.Port))
}

// Close stops the edge and every machine: it stops accepting connections, stops the machines (each gets SIGTERM,
// then SIGKILL after its kill timeout; WebSocket tunnels see their machine close them), ends what is left of
// requests and tunnels, and waits for all of it, or until ctx is done.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { s.closeErr = s.close(ctx) })
	return s.closeErr
}

func (s *Server) close(ctx context.Context) error {
	defer releasePorts(s.ports)
	defer s.API.release()
	if s.http == nil { // never opened
		return s.Supervisor.Close(ctx)
	}
	if s.stopIdle != nil {
		s.stopIdle()
		<-s.idleDone
	}
	// The Machines API first, so that no machine is started or created while they stop.
	err := s.closeAPI(ctx)
	shutdown := make(chan error, 1)
	go func() { shutdown <- s.http.Shutdown(ctx) }()
	err = errors.Join(err, s.Supervisor.Close(ctx))
	s.cancel()
	if serr := <-shutdown; serr != nil {
		err = errors.Join(err, fmt.Errorf("shut down edge: %w", serr))
		_ = s.http.Close()
	}
	if serr := <-s.serveErr; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, fmt.Errorf("serve edge: %w", serr))
	}
	s.Proxy.Wait()
	return err
}

// envList turns a map into "KEY=value" entries, sorted so machines see a stable order.
func envList(env map[string]string) []string {
	keys := slices.Sorted(maps.Keys(env))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}
