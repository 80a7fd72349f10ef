package loadgen

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// Modes of a run.
const (
	// ModeRun connects the clients, has them push mutations for Warmup +
	// Duration, waits for every mutation to be acknowledged, and verifies.
	ModeRun = "run"
	// ModeIdle connects the clients and holds them, pushing nothing, for
	// Duration (memory per idle connection), then verifies.
	ModeIdle = "idle"
	// ModeSeed only writes Seed entries into each space.
	ModeSeed = "seed"
)

// Defaults for Config's zero values.
const (
	DefaultSpaces             = 1
	DefaultClients            = 10
	DefaultDuration           = 10 * time.Second
	DefaultBatch              = 1
	DefaultMaxPushMutations   = 1000
	DefaultConnectConcurrency = 64
	DefaultConnectTimeout     = 60 * time.Second
	DefaultDrainTimeout       = 30 * time.Second
	DefaultProgressInterval   = time.Second
	DefaultMaxTodos           = 10
	DefaultPushDelay          = 10 * time.Millisecond
	DefaultMix                = "increment"
)

// Limits on what a run may ask for.
const (
	// MaxFailures is how many verification failures a result lists; the
	// count of all of them is reported too.
	MaxFailures = 50
	// seedPushMutations is the number of mutations per push when seeding.
	seedPushMutations = 1000
)

// Key prefixes the load generator writes. Every client owns its keys, so the
// final value of each is known: counterPrefix+clientID holds the number of
// increments the client made, todoPrefix+clientID+"-"+n its todos.
const (
	counterPrefix = "count/"
	todoPrefix    = "todo/" // the todo app's own prefix (todoapp.TodoPrefix)
	seedPrefix    = "seed/"
)

// Mutator names the load generator uses (backend/todoapp).
const (
	opIncrement  = "increment"
	opCreateTodo = "createTodo"
	opUpdateTodo = "updateTodo"
	opDeleteTodo = "deleteTodo"
)

// Config describes a run. The zero value of every field means its default.
type Config struct {
	// URLs are the base URLs clients connect to (http://host:port of the
	// edge, or of backends directly). Space i uses URLs[i % len(URLs)]: with
	// several backends and no router, each space stays on one backend.
	// Required.
	URLs []string
	// Spaces is the number of spaces. Zero value means DefaultSpaces (1).
	Spaces int
	// SpacePrefix names the spaces SpacePrefix-0 .. SpacePrefix-(Spaces-1).
	// Zero value means "lg-" and random hex: a fresh set of spaces.
	SpacePrefix string
	// CreateSpaces creates the spaces first with POST /api/spaces at each
	// space's URL (needed through a router, which serves only spaces in its
	// directory). An existing space is used as it is.
	CreateSpaces bool
	// Clients is the number of clients per space. Zero value means
	// DefaultClients (10). In ModeSeed it is ignored.
	Clients int
	// Mode is ModeRun, ModeIdle or ModeSeed. Zero value means ModeRun.
	Mode string
	// Rate is the total rate of mutations per second over all clients of
	// all spaces, spread evenly; each client pushes what it made since its
	// last push, one push in flight, as Replicache does. Zero value means as
	// fast as acks allow: whenever a client has nothing unacknowledged it
	// makes Batch mutations and pushes them (after PushDelay).
	Rate float64
	// Batch is the number of mutations a client makes at once when Rate is
	// zero. Zero value means DefaultBatch (1).
	Batch int
	// PushDelay is the wait between a client's first unsent mutation and
	// the push that sends it, so that mutations made meanwhile go in the
	// same push: Replicache's pushDelay. Zero value means DefaultPushDelay
	// (10ms, Replicache's default); negative means none.
	PushDelay time.Duration
	// MaxPushMutations bounds the mutations in one push (a client that fell
	// behind sends its backlog in pushes of this size). Zero value means
	// DefaultMaxPushMutations (1000).
	MaxPushMutations int
	// Duration is the measured phase. Zero value means DefaultDuration
	// (10s); negative means none (connect, verify, done).
	Duration time.Duration
	// Warmup runs the load before the measured phase, unmeasured. Zero
	// value means none.
	Warmup time.Duration
	// Mix says which mutations clients make and how often. Zero value means
	// DefaultMix (increments only).
	Mix Mix
	// MaxTodos bounds the todos each client keeps (createTodo scans the
	// whole list, so the list's length sets its cost). Zero value means
	// DefaultMaxTodos (10).
	MaxTodos int
	// Seed writes this many entries (seed/NNNNNNN, each a number) into each
	// space before the clients connect. Zero value means none.
	Seed int
	// ConnectConcurrency bounds dials in progress. Zero value means
	// DefaultConnectConcurrency (64).
	ConnectConcurrency int
	// ConnectTimeout bounds connecting one client, retries included. Zero
	// value means DefaultConnectTimeout (60s).
	ConnectTimeout time.Duration
	// DrainTimeout bounds the wait, after the load stops, for every
	// mutation to be acknowledged and every replica to converge. Zero value
	// means DefaultDrainTimeout (30s).
	DrainTimeout time.Duration
	// PID is a process (the backend) whose memory and CPU are sampled. Zero
	// value means none.
	PID int
	// MetricsURL is the backend's Prometheus endpoint (http://host/metrics),
	// scraped before and after for the server's own figures. Zero value
	// means none.
	MetricsURL string
	// AuthSecret is the servers' AUTH_SECRET: each client gets a token of
	// its own (user = client ID, editor of its space). Zero value: Token.
	AuthSecret string
	// Token is sent by every client when AuthSecret is empty. Zero value
	// sends none (servers with AUTH_DISABLED=1).
	Token string
	// Hostile is the number of hostile clients per space, attacking while
	// the load runs (ModeRun): each makes one attack (see AttackGarbage and
	// the others) over and over, to measure what honest clients' latency
	// suffers meanwhile. Zero value means none.
	Hostile int
	// Progress receives a progress line every ProgressInterval. Zero value
	// (nil) means none.
	Progress io.Writer
	// ProgressInterval: zero value means DefaultProgressInterval (1s).
	ProgressInterval time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if len(c.URLs) == 0 {
		return c, errors.New("at least one URL is required")
	}
	for _, u := range c.URLs {
		if _, err := wsURL(u, "x"); err != nil {
			return c, err
		}
	}
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defInt(&c.Spaces, DefaultSpaces)
	defInt(&c.Clients, DefaultClients)
	defInt(&c.Batch, DefaultBatch)
	defInt(&c.MaxPushMutations, DefaultMaxPushMutations)
	defInt(&c.MaxTodos, DefaultMaxTodos)
	defInt(&c.ConnectConcurrency, DefaultConnectConcurrency)
	if c.Mode == "" {
		c.Mode = ModeRun
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.PushDelay == 0 {
		c.PushDelay = DefaultPushDelay
	}
	if c.PushDelay < 0 {
		c.PushDelay = 0
	}
	if c.Duration < 0 {
		c.Duration = 0
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = DefaultProgressInterval
	}
	if c.Mix == nil {
		c.Mix, _ = ParseMix(DefaultMix)
	}
	if c.SpacePrefix == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		c.SpacePrefix = "lg-" + hex.EncodeToString(b)
	}
	switch {
	case c.Mode != ModeRun && c.Mode != ModeIdle && c.Mode != ModeSeed:
		return c, fmt.Errorf("mode %q: want %s, %s or %s", c.Mode, ModeRun, ModeIdle, ModeSeed)
	case c.Spaces < 0 || c.Clients < 0 || c.Batch < 0 || c.MaxPushMutations < 0 || c.Seed < 0:
		return c, errors.New("spaces, clients, batch, max push mutations and seed must not be negative")
	case c.Rate < 0:
		return c, errors.New("rate must not be negative")
	case c.AuthSecret != "" && len(c.AuthSecret) < auth.MinSecretLen:
		return c, fmt.Errorf("auth secret: %w", auth.ErrShortSecret)
	case c.Mode == ModeSeed && c.Seed == 0:
		return c, errors.New("mode seed needs a seed count")
	case !protocol.ValidSpaceID(spaceID(c.SpacePrefix, c.Spaces-1)):
		return c, fmt.Errorf("space prefix %q does not make valid space IDs (1-64 of A-Za-z0-9_-)", c.SpacePrefix)
	}
	return c, nil
}

func spaceID(prefix string, i int) string { return prefix + "-" + strconv.Itoa(i) }

// wsURL is the WebSocket URL of a space at base (http, https, ws or wss).
func wsURL(base, space string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("url %q: %w", base, err)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("url %q: want http(s):// or ws(s)://", base)
	}
	if u.Host == "" {
		return "", fmt.Errorf("url %q has no host", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/replicache/websocket/" + space
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// httpURL is base turned into an http(s) URL with path.
func httpURL(base, path string) string {
	u, _ := url.Parse(base) // checked by withDefaults
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery, u.Fragment = "", ""
	return u.String()
}

// Mix is the share of each kind of mutation.
type Mix []MixEntry

// MixEntry is one kind of mutation and its weight.
type MixEntry struct {
	Name   string
	Weight float64
}

// ParseMix reads "increment" or "increment=8,createTodo=1,updateTodo=4,deleteTodo=1"
// (a name alone weighs 1).
func ParseMix(s string) (Mix, error) {
	var m Mix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, hasW := strings.Cut(part, "=")
		e := MixEntry{Name: name, Weight: 1}
		if hasW {
			v, err := strconv.ParseFloat(w, 64)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("mix %q: weight of %s must be a non-negative number", s, name)
			}
			e.Weight = v
		}
		switch name {
		case opIncrement, opCreateTodo, opUpdateTodo, opDeleteTodo:
		default:
			return nil, fmt.Errorf("mix %q: unknown mutation %q (want increment, createTodo, updateTodo, deleteTodo)", s, name)
		}
		m = append(m, e)
	}
	total := 0.0
	for _, e := range m {
		total += e.Weight
	}
	if total == 0 {
		return nil, fmt.Errorf("mix %q: no mutation has a weight", s)
	}
	return m, nil
}

// String writes the mix back in ParseMix's form.
func (m Mix) String() string {
	parts := make([]string, len(m))
	for i, e := range m {
		parts[i] = e.Name + "=" + strconv.FormatFloat(e.Weight, 'g', -1, 64)
	}
	return strings.Join(parts, ",")
}

// pick returns the kind for a uniform draw u in [0,1).
func (m Mix) pick(u float64) string {
	total := 0.0
	for _, e := range m {
		total += e.Weight
	}
	x := u * total
	for _, e := range m {
		if x < e.Weight {
			return e.Name
		}
		x -= e.Weight
	}
	return m[len(m)-1].Name
}
