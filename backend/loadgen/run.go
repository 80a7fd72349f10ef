// Package loadgen is Spaceport's load generator: it simulates Replicache
// clients speaking docs/protocol.md over real WebSockets (through the edge
// and the router, or straight to backends), in one or more spaces, each
// pushing mutations at a set rate, applying pokes to its replica and
// checking its cookie chain. It measures connect time, push-to-pushed and
// push-to-poke latency, committed mutations per second and bytes per poke,
// and at the end verifies that nothing was lost or doubled: every replica
// equals the server's state, and every counter equals the number of
// acknowledged increments.
//
// The command is backend/cmd/loadgen; scripts/bench runs it for
// docs/benchmarks.md.
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
)

// spaceRun is one space of the run.
type spaceRun struct {
	index   int
	id      string
	base    string // the URL its clients use
	wsURL   string
	clients []*simClient
	byID    map[string]*simClient // read-only once the clients exist
}

// run is one execution of Run.
type run struct {
	cfg          Config
	keys         *auth.Keys // nil: cfg.Token for everyone
	spaces       []*spaceRun
	totalClients int

	// The load's schedule, fixed before the drivers start.
	loadStart, windowStart, loadEnd time.Time
	winStartNS, winEndNS            int64

	// Progress counters.
	phase      atomic.Value // string
	connected  atomic.Int64
	acked      atomic.Int64
	pokes      atomic.Int64
	reconnects atomic.Int64
	dialErrors atomic.Int64
	pushErrors atomic.Int64
}

func (r *run) inWindow(t time.Time) bool { return r.inWindowNS(t.UnixNano()) }

// tokenLife is how long a minted token lasts: longer than any run.
const tokenLife = 24 * time.Hour

// token is the connection token of user in space.
func (r *run) token(spaceID, user string) (string, error) {
	if r.keys == nil {
		return r.cfg.Token, nil
	}
	t, err := r.keys.Issue(auth.Grant{UserID: user, Spaces: spaceID, Role: mutator.RoleEditor, TTL: tokenLife})
	if err != nil {
		return "", fmt.Errorf("token for %s in %s: %w", user, spaceID, err)
	}
	return t, nil
}

func (r *run) inWindowNS(t int64) bool { return t >= r.winStartNS && t < r.winEndNS }

// Run executes a load run. It returns an error when the run could not be
// carried out (bad config, spaces that cannot be created, clients that
// cannot connect); a run that was carried out returns its Result, whose OK is
// false if verification found anything lost, doubled or inconsistent.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &run{cfg: cfg}
	if cfg.AuthSecret != "" {
		if r.keys, err = auth.NewKeys(cfg.AuthSecret); err != nil {
			return nil, err
		}
	}
	r.phase.Store("start")
	res := &Result{Started: time.Now().UTC(), Config: resultConfig(cfg), Spaces: cfg.Spaces}
	for i := range cfg.Spaces {
		sp := &spaceRun{index: i, id: spaceID(cfg.SpacePrefix, i), base: cfg.URLs[i%len(cfg.URLs)]}
		sp.wsURL, _ = wsURL(sp.base, sp.id)
		r.spaces = append(r.spaces, sp)
	}
	stopProgress := r.startProgress()
	defer stopProgress()

	var before metrics
	if cfg.MetricsURL != "" {
		if before, err = scrapeMetrics(ctx, cfg.MetricsURL); err != nil {
			return nil, err
		}
	}
	if cfg.CreateSpaces {
		r.phase.Store("create")
		for _, sp := range r.spaces {
			if err := createSpace(ctx, sp); err != nil {
				return nil, err
			}
		}
	}
	if cfg.Seed > 0 {
		r.phase.Store("seed")
		res.Seed = &SeedResult{Entries: cfg.Seed, Spaces: cfg.Spaces}
		start := time.Now()
		for _, sp := range r.spaces {
			if err := r.seed(ctx, sp); err != nil {
				return nil, err
			}
		}
		res.Seed.Seconds = round3(time.Since(start).Seconds())
		res.Seed.EntriesPerSec = round3(float64(cfg.Seed*cfg.Spaces) / time.Since(start).Seconds())
	}

	if cfg.Mode != ModeSeed {
		if err := r.clientsPhase(ctx, res); err != nil {
			return nil, err
		}
	}
	if cfg.MetricsURL != "" {
		after, err := scrapeMetrics(ctx, cfg.MetricsURL)
		if err != nil {
			return nil, err
		}
		res.Server = serverMetrics(before, after)
	}
	res.FailureCount = len(res.Failures)
	if len(res.Failures) > MaxFailures {
		res.Failures = res.Failures[:MaxFailures]
	}
	res.OK = res.FailureCount == 0
	r.phase.Store("done")
	return res, nil
}

// clientsPhase connects the clients, runs the load (or holds them idle),
// verifies and disconnects.
func (r *run) clientsPhase(ctx context.Context, res *Result) error {
	cfg := r.cfg
	for _, sp := range r.spaces {
		sp.byID = make(map[string]*simClient, cfg.Clients)
		for i := range cfg.Clients {
			c := newSimClient(r, sp, i)
			sp.clients = append(sp.clients, c)
			sp.byID[c.id] = c
		}
		r.totalClients += cfg.Clients
	}
	res.Clients = r.totalClients
	defer r.closeAll()

	var procBefore procSample
	if cfg.PID != 0 {
		var err error
		if procBefore, err = sampleProc(cfg.PID); err != nil {
			return err
		}
	}
	r.phase.Store("connect")
	start := time.Now()
	if err := r.connectAll(ctx); err != nil {
		return err
	}
	res.Connect.Seconds = round3(time.Since(start).Seconds())

	if cfg.Mode == ModeIdle {
		r.phase.Store("idle")
		if !sleepCtx(ctx, cfg.Duration) {
			return ctx.Err()
		}
	}
	if cfg.PID != 0 {
		after, err := sampleProc(cfg.PID)
		if err != nil {
			return err
		}
		res.Memory = &MemoryResult{
			Connections:        r.totalClients,
			RSSBeforeBytes:     procBefore.RSS,
			RSSAfterBytes:      after.RSS,
			PerConnectionBytes: round3(float64(after.RSS-procBefore.RSS) / float64(max(r.totalClients, 1))),
		}
	}

	if cfg.Mode == ModeRun {
		if err := r.load(ctx, res); err != nil {
			return err
		}
	}
	r.phase.Store("verify")
	vctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	res.Verify, res.Failures = r.verify(vctx)
	r.collect(res)
	return nil
}

func (r *run) connectAll(ctx context.Context) error {
	sem := make(chan struct{}, r.cfg.ConnectConcurrency)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for _, sp := range r.spaces {
		for _, c := range sp.clients {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				wg.Wait()
				return ctx.Err()
			}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := c.connect(ctx); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				r.connected.Add(1)
			})
		}
	}
	wg.Wait()
	return firstErr
}

// load runs the drivers for Warmup + Duration, then until every mutation is
// acknowledged (or DrainTimeout passes).
func (r *run) load(ctx context.Context, res *Result) error {
	cfg := r.cfg
	r.phase.Store("load")
	r.loadStart = time.Now()
	r.windowStart = r.loadStart.Add(cfg.Warmup)
	r.loadEnd = r.windowStart.Add(cfg.Duration)
	r.winStartNS, r.winEndNS = r.windowStart.UnixNano(), r.loadEnd.UnixNano()
	dctx, cancel := context.WithDeadline(ctx, r.loadEnd.Add(cfg.DrainTimeout))
	defer cancel()
	var wg sync.WaitGroup
	for _, sp := range r.spaces {
		for _, c := range sp.clients {
			wg.Go(func() { c.drive(dctx) })
		}
	}
	if cfg.Hostile > 0 {
		h := &hostiles{r: r, outcomes: map[string]int{}}
		hctx, stop := context.WithDeadline(ctx, r.loadEnd)
		wait := h.start(hctx)
		defer func() {
			stop()
			wait()
			res.Hostile = h.result()
		}()
	}
	// CPU over the measured window.
	if cfg.Duration > 0 && sleepCtx(ctx, time.Until(r.windowStart)) {
		self0, proc0, mach0 := selfCPU(), sampleOrZero(cfg.PID), sampleMachineOrZero()
		if sleepCtx(ctx, time.Until(r.loadEnd)) {
			secs := cfg.Duration.Seconds()
			cpu := CPUResult{LoadgenCores: round3((selfCPU() - self0).Seconds() / secs)}
			if cfg.PID != 0 {
				cpu.TargetCores = round3((sampleOrZero(cfg.PID).CPU - proc0.CPU).Seconds() / secs)
			}
			if m := sampleMachineOrZero(); m.total > mach0.total {
				cpu.MachineBusy = round3(float64(m.busy-mach0.busy) / float64(m.total-mach0.total))
			}
			res.CPU = &cpu
		}
	}
	r.phase.Store("drain")
	wg.Wait()
	return ctx.Err()
}

func sampleOrZero(pid int) procSample {
	if pid == 0 {
		return procSample{}
	}
	s, _ := sampleProc(pid)
	return s
}

func sampleMachineOrZero() machineCPU {
	m, _ := sampleMachine()
	return m
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *run) closeAll() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, sp := range r.spaces {
		for _, c := range sp.clients {
			if c.conn == nil {
				continue
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				// A close handshake the server does not finish in time is
				// not this run's business any more.
				done := make(chan struct{})
				go func() { c.conn.Close(); close(done) }()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					c.conn.Kill()
				}
			})
		}
	}
	wg.Wait()
}

// createSpace creates a space through the router's API; one that exists is
// fine.
func createSpace(ctx context.Context, sp *spaceRun) error {
	body, _ := json.Marshal(map[string]string{"id": sp.id})
	deadline := time.Now().Add(DefaultConnectTimeout)
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, httpURL(sp.base, "/api/spaces"), bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		status := 0
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
			if status == http.StatusCreated || status == http.StatusConflict {
				return nil
			}
			err = fmt.Errorf("status %d", status)
		}
		// 503 (no live machine yet, directory starting) is worth waiting
		// for; anything else is a misconfiguration.
		if (status != 0 && status != http.StatusServiceUnavailable) || time.Now().After(deadline) || !sleepBackoff(ctx, attempt) {
			return fmt.Errorf("create space %s at %s: %w", sp.id, sp.base, err)
		}
	}
}

// seed writes Seed entries into the space with increments of distinct keys,
// in large pushes, and checks they all arrived.
func (r *run) seed(ctx context.Context, sp *spaceRun) error {
	n := r.cfg.Seed
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectTimeout+time.Duration(n)*time.Millisecond)
	defer cancel()
	tok, err := r.token(sp.id, sp.id+"-seeder")
	if err != nil {
		return err
	}
	cl, err := syncclient.Dial(ctx, sp.wsURL, syncclient.Options{DiscardPokes: true, Token: tok})
	if err != nil {
		return fmt.Errorf("seed %s: %w", sp.id, err)
	}
	defer cl.Close()
	if err := cl.WaitPokes(ctx, 1); err != nil {
		return fmt.Errorf("seed %s: no first poke: %w", sp.id, err)
	}
	var last int64
	for i := 0; i < n; i += seedPushMutations {
		batch := make([]protocol.Mutation, 0, seedPushMutations)
		for j := i; j < min(i+seedPushMutations, n); j++ {
			batch = append(batch, cl.Mutation(opIncrement, map[string]any{"key": fmt.Sprintf("%s%07d", seedPrefix, j), "delta": 1}))
		}
		ans, err := cl.Push(ctx, batch...)
		if err != nil {
			return fmt.Errorf("seed %s: %w", sp.id, err)
		}
		var a pushAnswer
		if json.Unmarshal(ans, &a) != nil || a.Type != "pushed" || len(a.Response) > 0 {
			return fmt.Errorf("seed %s: push answered %.200s", sp.id, ans)
		}
		last = batch[len(batch)-1].ID
	}
	if err := cl.WaitLMID(ctx, last); err != nil {
		return fmt.Errorf("seed %s: %w", sp.id, err)
	}
	have := 0
	for k := range cl.State().Data {
		if strings.HasPrefix(k, seedPrefix) {
			have++
		}
	}
	if have < n {
		return fmt.Errorf("seed %s: the replica holds %d seed entries after %d were acknowledged", sp.id, have, n)
	}
	return nil
}

// startProgress prints a line every ProgressInterval until stopped.
func (r *run) startProgress() (stop func()) {
	if r.cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.cfg.ProgressInterval)
		defer t.Stop()
		start := time.Now()
		lastAcked, lastPokes, lastAt := int64(0), int64(0), start
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				acked, pokes := r.acked.Load(), r.pokes.Load()
				secs := now.Sub(lastAt).Seconds()
				fmt.Fprintf(r.cfg.Progress, "loadgen: %5.1fs %-7s conns=%d/%d acked=%d (%.0f/s) pokes/s=%.0f reconnects=%d dial_errors=%d push_errors=%d\n",
					now.Sub(start).Seconds(), r.phase.Load(), r.connected.Load(), r.totalClients,
					acked, float64(acked-lastAcked)/secs, float64(pokes-lastPokes)/secs,
					r.reconnects.Load(), r.dialErrors.Load(), r.pushErrors.Load())
				lastAcked, lastPokes, lastAt = acked, pokes, now
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// collect merges the clients' figures into the result.
func (r *run) collect(res *Result) {
	var welcome, first, initial, ack, fanout, pokeBytes Histogram
	byName := map[string]int64{}
	closes := map[string]int{}
	pushErrs := map[string]int{}
	var made, ackedWin, pokesWin int64
	for _, sp := range r.spaces {
		for _, c := range sp.clients {
			welcome.RecordDuration(c.connected)
			first.RecordDuration(c.firstPoke)
			ack.Merge(&c.ackHist)
			ackedWin += c.ackedWin
			for k, v := range c.made {
				byName[k] += v
				made += v
			}
			for code, n := range c.closes {
				closes[closeStatusName(code)] += n
			}
			for code, n := range c.pushErrs {
				pushErrs[code] += n
			}
			res.Errors.Reconnects += c.reconns
			c.recvMu.Lock()
			initial.Record(c.initialBytes)
			fanout.Merge(&c.fanout)
			pokeBytes.Merge(&c.pokeBytes)
			pokesWin += c.pokesWin
			c.recvMu.Unlock()
		}
	}
	res.Connect.WelcomeMS = welcome.Stats(1e6)
	res.Connect.FirstPokeMS = first.Stats(1e6)
	res.Connect.InitialPokeBytes = initial.Stats(1)
	res.Errors.Closes = closes
	res.Errors.PushErrors = pushErrs
	res.Errors.DialErrors = r.dialErrors.Load()
	if r.cfg.Mode != ModeRun || r.cfg.Duration == 0 {
		return
	}
	secs := r.cfg.Duration.Seconds()
	l := &LoadResult{
		Seconds:         secs,
		TargetRate:      r.cfg.Rate,
		Mutations:       made,
		MutationsByName: byName,
		AckedInWindow:   ackedWin,
		PushToPushedMS:  ack.Stats(1e6),
		PushToPokeMS:    fanout.Stats(1e6),
		PokeBytes:       pokeBytes.Stats(1),
	}
	if secs > 0 {
		l.CommittedPerSec = round3(float64(ackedWin) / secs)
		l.PokesPerSec = round3(float64(pokesWin) / secs)
	}
	res.Load = l
	if res.CPU != nil && res.CPU.TargetCores > 0 && ackedWin > 0 {
		res.CPU.TargetMicrosPerMutation = round3(res.CPU.TargetCores * secs * 1e6 / float64(ackedWin))
	}
}

// verify checks, space by space, that every client's replica equals the
// server's state as a fresh client receives it, that each client's counter
// equals its acknowledged increments (nothing lost, nothing doubled), that
// each client's todos hold what it last wrote, and that no poke broke its
// chain.
func (r *run) verify(ctx context.Context) (VerifyResult, []string) {
	var v VerifyResult
	var fails []string
	fail := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	for _, sp := range r.spaces {
		for _, c := range sp.clients {
			if c.fatal != nil {
				fail("client %s failed: %v", c.id, c.fatal)
			}
			if len(c.pending) > 0 {
				fail("client %s: %d mutations never acknowledged (drain timeout %s)", c.id, len(c.pending), r.cfg.DrainTimeout)
			}
		}
		server, cookie, err := r.serverState(ctx, sp)
		if err != nil {
			fail("space %s: %v", sp.id, err)
			continue
		}
		v.Keys += len(server)
		for _, c := range sp.clients {
			r.verifyClient(ctx, c, server, cookie, &v, fail)
		}
		if r.cfg.Seed > 0 {
			have := 0
			for k := range server {
				if strings.HasPrefix(k, seedPrefix) {
					have++
				}
			}
			if have < r.cfg.Seed {
				fail("space %s: %d seed entries, want %d", sp.id, have, r.cfg.Seed)
			}
		}
	}
	return v, fails
}

// serverState is the space as a brand-new client receives it.
func (r *run) serverState(ctx context.Context, sp *spaceRun) (map[string]json.RawMessage, json.RawMessage, error) {
	tok, err := r.token(sp.id, sp.id+"-verifier")
	if err != nil {
		return nil, nil, err
	}
	cl, err := syncclient.Dial(ctx, sp.wsURL, syncclient.Options{DiscardPokes: true, Token: tok})
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: %w", err)
	}
	defer cl.Close()
	if err := cl.WaitPokes(ctx, 1); err != nil {
		return nil, nil, fmt.Errorf("verifier: no first poke: %w", err)
	}
	if errs := cl.Errors(); len(errs) > 0 {
		return nil, nil, fmt.Errorf("verifier: %v", errs[0])
	}
	s := cl.State()
	return s.Data, s.Cookie, nil
}

func (r *run) verifyClient(ctx context.Context, c *simClient, server map[string]json.RawMessage, cookie json.RawMessage,
	v *VerifyResult, fail func(string, ...any)) {
	if c.conn == nil {
		fail("client %s never connected", c.id)
		return
	}
	for _, err := range append(c.pastErrs, c.conn.Errors()...) {
		v.ProtocolViolations++
		fail("client %s: %v", c.id, err)
	}
	c.recvMu.Lock()
	for _, r := range c.refused {
		fail("client %s: the server refused its session: %s", c.id, r)
	}
	c.recvMu.Unlock()
	var diffs []string
	var lmid int64
	err := c.conn.WaitFor(ctx, func(s *syncclient.State) bool {
		if !bytes.Equal(s.Cookie, cookie) {
			return false
		}
		diffs = diffData(s.Data, server)
		lmid = s.LMIDs[c.id]
		return true
	})
	if err != nil {
		fail("client %s: replica never reached the server's version %s: %v", c.id, cookie, err)
		return
	}
	v.Replicas++
	for _, d := range diffs {
		fail("client %s: replica differs from the server: %s", c.id, d)
	}
	if made := c.nextID - 1; lmid != made {
		fail("client %s: lastMutationID %d, but it made %d mutations", c.id, lmid, made)
	}
	// The counter: every acknowledged increment exactly once.
	if c.incs > 0 || server[counterPrefix+c.id] != nil {
		got := 0.0
		if raw := server[counterPrefix+c.id]; raw != nil {
			if err := json.Unmarshal(raw, &got); err != nil {
				fail("client %s: counter holds %s, not a number", c.id, raw)
			}
		}
		v.Increments += c.incs
		switch n := int64(got); {
		case n < c.incs:
			fail("client %s: LOST %d increments: counter %d, acknowledged %d", c.id, c.incs-n, n, c.incs)
		case n > c.incs:
			fail("client %s: DOUBLED %d increments: counter %d, acknowledged %d", c.id, n-c.incs, n, c.incs)
		}
	}
	// Todos: each holds what the client last wrote; deleted ones are gone.
	for id, want := range c.todos {
		v.Todos++
		raw := server[todoPrefix+id]
		var got todo
		if raw == nil {
			fail("client %s: todo %s LOST", c.id, id)
			continue
		}
		if err := json.Unmarshal(raw, &got); err != nil || got != want {
			fail("client %s: todo %s holds %s, want text %q completed %v", c.id, id, raw, want.Text, want.Completed)
		}
	}
	own := todoPrefix + c.id + "-"
	for k := range server {
		if strings.HasPrefix(k, own) {
			if _, ok := c.todos[k[len(todoPrefix):]]; !ok {
				fail("client %s: todo %s exists but was deleted (or never made)", c.id, k)
			}
		}
	}
}

// diffData lists (up to 5) differences between a replica and the server.
func diffData(replica, server map[string]json.RawMessage) []string {
	var out []string
	for k, sv := range server {
		if rv, ok := replica[k]; !ok {
			out = append(out, fmt.Sprintf("missing %s", k))
		} else if !bytes.Equal(rv, sv) {
			out = append(out, fmt.Sprintf("%s is %s, server has %s", k, rv, sv))
		}
		if len(out) >= 5 {
			return out
		}
	}
	for k := range replica {
		if _, ok := server[k]; !ok {
			out = append(out, fmt.Sprintf("extra %s", k))
			if len(out) >= 5 {
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// errorsByClose is used by the summary: close codes by count, sorted.
func errorsByClose(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ":" + strconv.Itoa(m[k])
	}
	return strings.Join(parts, ",")
}
