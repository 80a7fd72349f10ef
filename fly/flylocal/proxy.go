package flylocal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spaceport-sync/spaceport/fly/replay"
)

// Limits of Fly's proxy that flylocal keeps.
const (
	// MaxReplayBody is the largest request body that can be replayed: Fly does not replay requests larger than
	// 1 MB. A larger body still reaches the edge app; if that answers with fly-replay the client gets a 502 (PA01).
	MaxReplayBody = 1 << 20
	// MaxReplays is the longest chain of replays of one request; Fly answers the next one with error PA02.
	MaxReplays = 10
)

// dialTimeout bounds connecting to a machine that is started.
const dialTimeout = 5 * time.Second

// Proxy is the edge: an http.Handler that sends each request to a started machine of the edge app and honours
// fly-replay answers, as Fly's proxy does (see the package documentation for what is emulated).
type Proxy struct {
	machines  *Supervisor
	edgeApp   string
	apps      map[string]bool
	logger    *slog.Logger
	transport *http.Transport
	rp        *httputil.ReverseProxy

	mu       sync.Mutex
	rr       map[string]uint64    // round-robin counters per app
	active   map[string]int       // requests and tunnels in progress, by machine ID
	lastUsed map[string]time.Time // when a request to a machine last began or ended, by machine ID

	inflight sync.WaitGroup // requests being served, WebSocket tunnels included
}

// NewProxy returns a proxy in front of the machines of machines: requests go to edgeApp, replays may go to any
// of apps. A nil logger means slog.Default().
func NewProxy(machines *Supervisor, edgeApp string, apps []string, logger *slog.Logger) *Proxy {
	if logger == nil {
		logger = slog.Default()
	}
	p := &Proxy{
		machines: machines,
		edgeApp:  edgeApp,
		apps:     make(map[string]bool, len(apps)),
		logger:   logger,
		rr:       make(map[string]uint64),
		active:   make(map[string]int),
		lastUsed: make(map[string]time.Time),
		transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: dialTimeout}).DialContext,
			MaxIdleConnsPerHost: 32,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true, // pass bodies through as the machine wrote them
		},
	}
	for _, a := range apps {
		p.apps[a] = true
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    roundTripFunc(p.roundTrip),
		ErrorHandler: p.handleError,
		ErrorLog:     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return p
}

// ServeHTTP proxies one request. A WebSocket upgrade is served until the tunnel closes.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.inflight.Add(1)
	defer p.inflight.Done()
	// When the request's context ends, ReverseProxy closes a tunnel's machine side only; after the machine
	// closes, it waits for the client to close too. Closing the client side as well bounds shutdown.
	if c, ok := r.Context().Value(connKey{}).(net.Conn); ok && r.Header.Get("Upgrade") != "" {
		stop := context.AfterFunc(r.Context(), func() { _ = c.Close() })
		defer stop()
	}
	// The machine that answers holds the request (a WebSocket: the whole tunnel) until it is served, for idle
	// stop; roundTrip names it.
	served := &servedBy{}
	defer func() {
		if served.id != "" {
			p.release(served.id)
		}
	}()
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), servedByKey{}, served)))
}

type servedByKey struct{}

// servedBy is the machine whose answer the proxy forwards, set by roundTrip.
type servedBy struct{ id string }

// hold counts a request to machine id as in progress.
func (p *Proxy) hold(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active[id]++
	p.lastUsed[id] = time.Now()
}

// release counts a request to machine id as finished.
func (p *Proxy) release(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active[id]--; p.active[id] <= 0 {
		delete(p.active, id)
	}
	p.lastUsed[id] = time.Now()
}

// Activity reports how many requests and WebSocket tunnels machine id is serving through the edge, and when one
// last began or ended (zero if none ever did).
func (p *Proxy) Activity(id string) (active int, last time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.active[id], p.lastUsed[id]
}

type connKey struct{}

// ConnContext is meant for http.Server.ConnContext: it lets the proxy close the client side of a WebSocket
// tunnel when the request's context ends (the server's BaseContext is cancelled).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// Wait waits for the requests being served to finish, WebSocket tunnels included (cancel their contexts to end
// them), then closes idle connections to machines. Call it after the http.Server has stopped accepting requests.
func (p *Proxy) Wait() {
	p.inflight.Wait()
	p.transport.CloseIdleConnections()
}

// rewrite prepares the request to machines: the headers Fly's proxy adds, and none of those only the proxy may
// set. The machine's address is set per attempt by roundTrip.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = "machine.flylocal.invalid"
	h := pr.Out.Header
	h.Del(replay.SourceHeader)
	h.Del(replay.FailedHeader)
	h.Del(replay.PreferredInstanceUnavailableHeader)

	clientIP, _, err := net.SplitHostPort(pr.In.RemoteAddr)
	if err != nil {
		clientIP = pr.In.RemoteAddr
	}
	h.Set("Fly-Client-IP", clientIP)
	if prior := pr.In.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		h.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+clientIP)
	} else {
		h.Set("X-Forwarded-For", clientIP)
	}
	proto := "http"
	if pr.In.TLS != nil {
		proto = "https"
	}
	h.Set("X-Forwarded-Proto", proto)
	h.Set("Fly-Region", Region)
}

// roundTrip sends the request to the edge app and follows fly-replay answers.
func (p *Proxy) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	newBody, replayable, err := bufferBody(req)
	if err != nil {
		return nil, &proxyError{status: http.StatusBadRequest, msg: fmt.Sprintf("read request body: %v", err)}
	}
	target, err := p.pick(ctx, p.edgeApp, "")
	if err != nil {
		return nil, err
	}

	var src, preferMiss string
	for replays := 0; ; replays++ {
		out := req.Clone(ctx)
		out.URL.Host = target.Addr()
		out.Body, out.GetBody = newBody(), nil
		if replayable {
			out.GetBody = func() (io.ReadCloser, error) { return newBody(), nil }
		}
		if src != "" {
			out.Header.Set(replay.SourceHeader, src)
		}
		if preferMiss != "" {
			out.Header.Set(replay.PreferredInstanceUnavailableHeader, preferMiss)
		}

		p.hold(target.ID)
		resp, err := p.transport.RoundTrip(out)
		if err != nil {
			p.release(target.ID)
			return nil, upstreamError(ctx, target, err)
		}
		v := resp.Header.Get(replay.Header)
		if v == "" {
			if served, ok := ctx.Value(servedByKey{}).(*servedBy); ok {
				served.id = target.ID // released when ServeHTTP is done
			} else {
				p.release(target.ID)
			}
			return resp, nil
		}
		discard(resp)
		p.release(target.ID)

		if !replayable {
			return nil, &proxyError{status: http.StatusBadGateway, code: "PA01", msg: fmt.Sprintf(
				"machine %s answered fly-replay, but the request body is larger than %d bytes and cannot be replayed",
				target.ID, MaxReplayBody)}
		}
		if replays == MaxReplays {
			return nil, &proxyError{status: http.StatusBadGateway, code: "PA02", msg: fmt.Sprintf(
				"too many replays: machine %s answered fly-replay after %d replays", target.ID, MaxReplays)}
		}
		r, err := replay.Parse(v)
		if err == nil {
			err = r.Validate()
		}
		if err != nil {
			return nil, &proxyError{status: http.StatusBadGateway, code: "PA03", msg: fmt.Sprintf(
				"machine %s answered an invalid fly-replay: %v", target.ID, err)}
		}
		next, miss, err := p.replayTarget(ctx, r, target)
		if err != nil {
			return nil, err
		}
		p.logger.Debug("replay", "from", target.ID, "to", next.ID, "app", next.App, "method", req.Method,
			"path", req.URL.Path)
		src = replay.Source{Instance: target.ID, Region: Region, Time: time.Now(), State: r.State}.String()
		target, preferMiss = next, miss
	}
}

// replayTarget chooses the machine a fly-replay sends the request to; from answered with it. miss is the
// prefer_instance that could not be honoured, if any.
func (p *Proxy) replayTarget(ctx context.Context, r replay.Replay, from Machine) (m Machine, miss string, err error) {
	app := r.App
	if app == "" {
		app = from.App
	}
	if !p.apps[app] {
		return Machine{}, "", &proxyError{status: http.StatusBadGateway, code: "PA04",
			msg: fmt.Sprintf("replay target app %q not found", app)}
	}
	if len(r.Regions) > 0 && !slices.Contains(r.Regions, Region) && !slices.Contains(r.Regions, replay.RegionAny) {
		return Machine{}, "", &proxyError{status: http.StatusServiceUnavailable, code: "PR03", msg: fmt.Sprintf(
			"no machine in regions %s: every flylocal machine runs in region %q", strings.Join(r.Regions, ","), Region)}
	}
	if r.Instance != "" {
		m, err := p.instance(ctx, app, r.Instance)
		return m, "", err
	}
	if r.PreferInstance != "" {
		if m, err := p.instance(ctx, app, r.PreferInstance); err == nil {
			return m, "", nil
		} else if ctx.Err() != nil {
			return Machine{}, "", err
		}
		miss = r.PreferInstance
	}
	exclude := ""
	if r.Elsewhere && app == from.App {
		exclude = from.ID
	}
	m, err = p.pick(ctx, app, exclude)
	return m, miss, err
}

// instance returns machine id of app, started.
func (p *Proxy) instance(ctx context.Context, app, id string) (Machine, error) {
	m, err := p.machines.Machine(id)
	if err != nil || m.App != app {
		return Machine{}, &proxyError{status: http.StatusBadGateway, code: "PR02",
			msg: fmt.Sprintf("machine %q not found in app %s", id, app)}
	}
	return p.ensureStarted(ctx, m)
}

// pick chooses a machine of app other than exclude: a started one, round robin; if none is started, one that is
// starting or can be autostarted, which it starts.
func (p *Proxy) pick(ctx context.Context, app, exclude string) (Machine, error) {
	var started, startable []Machine
	for _, m := range p.machines.Machines(app) {
		switch {
		case m.ID == exclude:
		case m.State == StateStarted:
			started = append(started, m)
		case m.State == StateStarting || m.Autostart:
			startable = append(startable, m)
		}
	}
	p.mu.Lock()
	n := p.rr[app]
	p.rr[app]++
	p.mu.Unlock()
	if len(started) > 0 {
		return started[n%uint64(len(started))], nil
	}
	if len(startable) > 0 {
		return p.ensureStarted(ctx, startable[n%uint64(len(startable))])
	}
	msg := fmt.Sprintf("app %s has no started machine and none it may start", app)
	if exclude != "" {
		msg = fmt.Sprintf("app %s has no started machine other than %s and none it may start", app, exclude)
	}
	return Machine{}, &proxyError{status: http.StatusServiceUnavailable, code: "PR01", msg: msg}
}

// ensureStarted starts m if it is not started and its app allows autostart, and waits until it accepts
// connections.
func (p *Proxy) ensureStarted(ctx context.Context, m Machine) (Machine, error) {
	if m.State == StateStarted {
		return m, nil
	}
	if m.State != StateStarting && !m.Autostart {
		return Machine{}, &proxyError{status: http.StatusServiceUnavailable, code: "PR01",
			msg: fmt.Sprintf("machine %s is %s and app %s does not autostart", m.ID, m.State, m.App)}
	}
	p.logger.Info("autostart", "app", m.App, "machine", m.ID, "state", m.State)
	if err := p.machines.Start(ctx, m.ID); err != nil {
		if ctx.Err() != nil {
			return Machine{}, err
		}
		return Machine{}, &proxyError{status: http.StatusServiceUnavailable, code: "PR01",
			msg: fmt.Sprintf("could not start machine %s: %v", m.ID, err)}
	}
	m.State = StateStarted
	return m, nil
}

// bufferBody reads up to MaxReplayBody bytes of the request body. If that is all of it the request can be
// replayed, and newBody returns a fresh reader of it on each call. Otherwise newBody returns the body, once.
func bufferBody(req *http.Request) (newBody func() io.ReadCloser, replayable bool, err error) {
	if req.Body == nil || req.Body == http.NoBody {
		return func() io.ReadCloser { return nil }, true, nil
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, MaxReplayBody+1))
	if err != nil {
		return nil, false, err
	}
	if len(buf) > MaxReplayBody {
		body := struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
		return func() io.ReadCloser { return body }, false, nil
	}
	_ = req.Body.Close()
	req.ContentLength = int64(len(buf))
	req.TransferEncoding = nil
	if len(buf) == 0 {
		return func() io.ReadCloser { return nil }, true, nil
	}
	return func() io.ReadCloser { return io.NopCloser(bytes.NewReader(buf)) }, true, nil
}

// discard reads a little of a response that will not be forwarded, so its connection can be reused, and
// closes it.
func discard(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}

// upstreamError describes a failed exchange with a machine.
func upstreamError(ctx context.Context, m Machine, err error) error {
	if ctx.Err() != nil {
		return err // the client went away; nobody reads the answer
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return &proxyError{status: http.StatusBadGateway, code: "PC01",
			msg: fmt.Sprintf("machine %s (app %s) refused the connection on port %d", m.ID, m.App, m.Port)}
	}
	return &proxyError{status: http.StatusBadGateway, code: "PU02",
		msg: fmt.Sprintf("request to machine %s (app %s) failed: %v", m.ID, m.App, err)}
}

// proxyError is an error the proxy answers itself, with the code of Fly's proxy error it stands for
// (https://fly.io/docs/monitoring/error-codes/).
type proxyError struct {
	status int
	code   string
	msg    string
}

func (e *proxyError) Error() string { return e.code + ": " + e.msg }

// handleError answers a request the proxy could not complete with a JSON body {"error": ..., "code": ...}.
func (p *Proxy) handleError(w http.ResponseWriter, r *http.Request, err error) {
	var pe *proxyError
	if !errors.As(err, &pe) {
		if r.Context().Err() != nil {
			p.logger.Debug("client went away", "method", r.Method, "path", r.URL.Path, "err", err)
			return
		}
		pe = &proxyError{status: http.StatusBadGateway, code: "PU02", msg: err.Error()}
	}
	p.logger.Warn("proxy error", "code", pe.code, "status", pe.status, "method", r.Method, "path", r.URL.Path,
		"err", pe.msg)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(pe.status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
		Code  string `json:"code,omitempty"`
	}{pe.msg, pe.code})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
