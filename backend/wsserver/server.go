// Package wsserver serves spaces over WebSockets: one connection per client,
// carrying the frames of docs/protocol.md. Each connection has a reader (the
// HTTP handler's goroutine) and a writer goroutine that owns every write, the
// connection's cookie and its bounded send queue, so one slow client never
// delays a space or another client.
package wsserver

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/fly/replay"
)

// Defaults for Config's zero values.
const (
	DefaultMaxFrameBytes     = 4 << 20
	DefaultMaxQueueBytes     = 4 << 20
	DefaultWriteTimeout      = 10 * time.Second
	DefaultHelloTimeout      = 10 * time.Second
	DefaultMaxPushesInFlight = 16
	DefaultPingInterval      = 30 * time.Second
	DefaultPingTimeout       = 15 * time.Second
	DefaultPushRate          = 100
	DefaultPushBurst         = 200
	DefaultFullRetryAfter    = 10 * time.Second
	DefaultMovingRetryAfter  = time.Second
)

// Config tunes the server. The zero value of every field means its default.
type Config struct {
	// MachineID and Region are announced in `welcome` (FLY_MACHINE_ID,
	// FLY_REGION). Zero values announce empty strings.
	MachineID string
	Region    string
	// MaxFrameBytes is the largest client frame; a larger one closes the
	// connection with 1009. Zero value means DefaultMaxFrameBytes (4 MiB).
	MaxFrameBytes int64
	// MaxQueueBytes bounds the bytes waiting to be written to one
	// connection; passing it closes the connection with 4008. Pokes are
	// computed when they are written, not queued, so this bounds acks,
	// pulls and errors. Zero value means DefaultMaxQueueBytes (4 MiB).
	MaxQueueBytes int
	// WriteTimeout bounds one write; a client that does not read for this
	// long is dropped (4008). Zero value means DefaultWriteTimeout (10s).
	WriteTimeout time.Duration
	// HelloTimeout is how long a new connection may take to send `hello`
	// before it is closed with 4000. Zero value means DefaultHelloTimeout
	// (10s).
	HelloTimeout time.Duration
	// MaxPushesInFlight bounds the pushes one connection may have queued or
	// committing; past it the server stops reading from that connection
	// until acks go out (backpressure on the flooder alone). Replicache
	// keeps one push in flight. Zero value means DefaultMaxPushesInFlight
	// (16).
	MaxPushesInFlight int
	// PushRate and PushBurst bound one connection's pushes (a token
	// bucket: PushRate per second, bursts of PushBurst). A connection past
	// it is closed with 4029 and the wait in the reason. Replicache keeps
	// one push in flight and batches, so a browser stays far below.
	// Zero values mean DefaultPushRate (100/s) and DefaultPushBurst (200).
	PushRate  float64
	PushBurst int
	// FullRetryAfter is the wait announced (close 4029) to a client refused
	// because its space or this machine is full. Zero value means
	// DefaultFullRetryAfter (10s).
	FullRetryAfter time.Duration
	// MovingRetryAfter is the wait announced (close 4029) to a client
	// refused because its space is being moved between Postgres clusters
	// (a move of a small space takes well under a second). Zero value
	// means DefaultMovingRetryAfter (1s).
	MovingRetryAfter time.Duration
	// PingInterval: a connection the client has been silent on for this
	// long gets a WebSocket ping (browsers answer by themselves); no pong
	// within PingTimeout drops it. This finds half-open connections (a
	// phone that left the network) that would otherwise hold a space
	// loaded forever. Zero values mean DefaultPingInterval (30s) and
	// DefaultPingTimeout (15s).
	PingInterval time.Duration
	PingTimeout  time.Duration
	// Auth checks connection tokens (the `token` query parameter): a
	// missing, invalid or expired token closes the connection with 4001, a
	// token for other spaces with 4003, and a token that expires while
	// connected closes it with 4001. Zero value (nil) turns auth off: every
	// client is an anonymous editor; for a lone backend in development only.
	Auth *auth.Keys
	// ReplaySecret, when set, admits only requests replayed by the edge
	// with this value in the fly-replay `state` (the router puts it there;
	// the edge passes it on in fly-replay-src), so nobody reaches a machine
	// around the router. Zero value admits every request.
	ReplaySecret string
	// OriginPatterns are extra host patterns allowed as the Origin of a
	// cross-origin WebSocket (see websocket.AcceptOptions). Zero value
	// allows only same-origin browsers (non-browser clients send no Origin).
	OriginPatterns []string
	// Logger receives one line per event. Zero value means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.MaxQueueBytes <= 0 {
		c.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = DefaultHelloTimeout
	}
	if c.MaxPushesInFlight <= 0 {
		c.MaxPushesInFlight = DefaultMaxPushesInFlight
	}
	if c.PushRate <= 0 {
		c.PushRate = DefaultPushRate
	}
	if c.PushBurst <= 0 {
		c.PushBurst = DefaultPushBurst
	}
	if c.FullRetryAfter <= 0 {
		c.FullRetryAfter = DefaultFullRetryAfter
	}
	if c.MovingRetryAfter <= 0 {
		c.MovingRetryAfter = DefaultMovingRetryAfter
	}
	if c.PingInterval <= 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout <= 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Server accepts WebSocket connections for spaces.
type Server struct {
	cfg     Config
	spaces  *space.Manager
	log     *slog.Logger
	ctx     context.Context // ends at hard stop: outstanding reads end abruptly
	cancel  context.CancelFunc
	mu      sync.Mutex
	conns   map[*conn]struct{}
	closing bool
	wg      sync.WaitGroup // one per connection
}

// New returns a server of the manager's spaces.
func New(cfg Config, spaces *space.Manager) *Server {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, spaces: spaces, log: cfg.Logger, ctx: ctx, cancel: cancel, conns: map[*conn]struct{}{}}
}

// Handler returns the backend's HTTP routes: the WebSocket endpoint,
// /healthz and /metrics.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Get("/api/replicache/websocket/{spaceID}", s.serveWebSocket)
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	r.Handle("/metrics", promhttp.Handler())
	return r
}

// Connections reports how many WebSockets are open.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Shutdown stops accepting connections, stops every space (each finishes
// the batch in flight and closes its connections with 1001), closes the
// connections that had not joined a space, and waits for all of them to end
// or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	err := s.spaces.Shutdown(ctx)
	s.mu.Lock()
	for c := range s.conns {
		c.Close(protocol.CloseGoingAway, "server shutting down")
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.cancel() // end what is left abruptly
		<-done
		if err == nil {
			err = ctx.Err()
		}
	}
	s.cancel()
	return err
}

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	spaceID := chi.URLParam(r, "spaceID")
	if !protocol.ValidSpaceID(spaceID) {
		writeJSONError(w, http.StatusBadRequest, "invalid_space_id", "space ID must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
		return
	}
	if !s.replayed(r) {
		writeJSONError(w, http.StatusForbidden, "not_replayed", "connect through the router")
		return
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if closing {
		w.Header().Set("Retry-After", "1")
		writeJSONError(w, http.StatusServiceUnavailable, "shutting_down", "this machine is shutting down")
		return
	}
	defer s.wg.Done()

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OriginPatterns:  s.cfg.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.log.Info("websocket accept failed", "space", spaceID, "err", err)
		return
	}
	ws.SetReadLimit(s.cfg.MaxFrameBytes)
	c := newConn(s, ws, spaceID)
	if s.cfg.Auth != nil {
		// After the upgrade, so that a browser learns why (it cannot read
		// an HTTP status of a failed WebSocket).
		claims, err := s.cfg.Auth.Authorize(r.URL.Query().Get("token"), spaceID)
		if err != nil {
			code := protocol.CloseUnauthorized
			if errors.Is(err, auth.ErrForbidden) {
				code = protocol.CloseForbidden
			}
			s.log.Info("connection refused", "space", spaceID, "code", int(code), "err", err)
			metricCloses.WithLabelValues(strconv.Itoa(int(code))).Inc()
			_ = ws.Close(websocket.StatusCode(code), protocol.TruncateReason(err.Error()))
			return
		}
		c.caller = mutator.Caller{UserID: claims.UserID(), Role: claims.Role}
		c.expires = claims.ExpiresAt.Time
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	metricConnections.Inc()
	c.serve()
	metricConnections.Dec()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// replayed reports whether r came through the edge's replay with our
// secret in its state.
func (s *Server) replayed(r *http.Request) bool {
	if s.cfg.ReplaySecret == "" {
		return true
	}
	src, err := replay.ParseSource(r.Header.Get(replay.SourceHeader))
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(src.State), []byte(s.cfg.ReplaySecret)) == 1
}

func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "message": msg})
}

// closeCodeOf maps a read error to the close code we end the connection
// with, when the error itself is not a close we chose.
func closeCodeOf(err error) (protocol.CloseCode, string) {
	var pe *protocol.ProtocolError
	if errors.As(err, &pe) {
		return pe.Code, pe.Reason
	}
	return protocol.CloseNormal, ""
}
