// Command benchreport writes docs/benchmarks.md from the results scripts/bench
// collected: the load generator's JSON results, `go test -bench` output, the
// machine's description and the command line of every figure. It only
// formats what was measured; a figure that is missing says so.
//
//	benchreport -results DIR -out docs/benchmarks.md
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spaceport-sync/spaceport/backend/loadgen"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
		}
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("benchreport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("results", "", "results `folder` written by scripts/bench")
	out := fs.String("out", "docs/benchmarks.md", "report `file` to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("-results is required")
	}
	res, err := load(*dir)
	if err != nil {
		return err
	}
	var b strings.Builder
	write(&b, res)
	// Charts first, so the report never links one that is not there.
	for name, data := range res.files {
		if err := writeFile(filepath.Join(filepath.Dir(*out), name), data); err != nil {
			return err
		}
	}
	return writeFile(*out, b.String())
}

// writeFile replaces path's contents at once (a reader never sees half).
func writeFile(path, data string) error {
	if err := os.WriteFile(path+".tmp", []byte(data), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// results is everything scripts/bench left in its folder.
type results struct {
	machine  map[string]string
	setup    map[string]string // how the servers were started
	commands map[string]string // figure id -> command line
	loadgen  map[string]*loadgen.Result
	missing  map[string]string // figure id -> why there is no result
	gobench  map[string][]benchLine
	pgbench  map[string]pgbench
	files    map[string]string // charts to write beside the report, by name
}

// benchLine is one line of `go test -bench` output.
type benchLine struct {
	pkg     string
	name    string // without the -GOMAXPROCS suffix
	n       int64
	metrics map[string]float64 // by unit: ns/op, B/op, allocs/op, MB/s, custom
	units   []string           // in the order printed
}

func load(dir string) (*results, error) {
	r := &results{machine: map[string]string{}, setup: map[string]string{}, commands: map[string]string{}, loadgen: map[string]*loadgen.Result{},
		missing: map[string]string{}, gobench: map[string][]benchLine{}, pgbench: map[string]pgbench{}, files: map[string]string{}}
	env, err := os.ReadFile(filepath.Join(dir, "machine.env"))
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(env)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			r.machine[k] = v
		}
	}
	setup, err := os.ReadFile(filepath.Join(dir, "setup.env"))
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(setup)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			r.setup[k] = v
		}
	}
	cmds, err := os.ReadFile(filepath.Join(dir, "commands.tsv"))
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(cmds)) {
		id, cmd, ok := strings.Cut(strings.TrimRight(line, "\n"), "\t")
		if !ok {
			continue
		}
		r.commands[id] = cmd
		data, err := os.ReadFile(filepath.Join(dir, id+".out"))
		if err != nil {
			r.missing[id] = err.Error()
			continue
		}
		if strings.HasPrefix(id, "pg-") {
			r.pgbench[id] = parsePgbench(id, string(data))
			if !r.pgbench[id].ok {
				r.missing[id] = "no pgbench output: " + lastLine(dir, id)
			}
			continue
		}
		if strings.HasSuffix(id, "-bench") {
			r.gobench[id] = parseBench(string(data))
			if len(r.gobench[id]) == 0 {
				r.missing[id] = "no benchmark output: " + lastLine(dir, id)
			}
			continue
		}
		var res loadgen.Result
		if err := json.Unmarshal(data, &res); err != nil {
			r.missing[id] = "no result: " + lastLine(dir, id)
			continue
		}
		r.loadgen[id] = &res
	}
	return r, nil
}

// lastLine is the last line the figure's command wrote on stderr.
func lastLine(dir, id string) string {
	data, _ := os.ReadFile(filepath.Join(dir, id+".err"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return lines[len(lines)-1]
}

func parseBench(s string) []benchLine {
	var out []benchLine
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		bl := benchLine{pkg: pkg, name: name, n: n, metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			bl.metrics[f[i+1]] = v
			bl.units = append(bl.units, f[i+1])
		}
		out = append(out, bl)
	}
	return out
}

func (r *results) bench(id, name string) (benchLine, bool) {
	for _, b := range r.gobench[id] {
		if b.name == name {
			return b, true
		}
	}
	return benchLine{}, false
}

func write(w *strings.Builder, r *results) {
	m := r.machine
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# Benchmarks\n\n")
	p("Generated by `make bench` (`scripts/bench`, which runs every command below and `backend/cmd/benchreport` to write this\n")
	p("file). Do not edit by hand: run `make bench` again.\n\n")
	if m["quick"] != "" {
		p("> **BENCH_QUICK run**: shortened durations to check the suite. These figures are not for comparison.\n\n")
	}
	ramGiB := 0.0
	if kib, err := strconv.ParseFloat(m["ram_kib"], 64); err == nil {
		ramGiB = kib / (1 << 20)
	}
	p("| | |\n|---|---|\n")
	p("| date | %s |\n", m["date"])
	p("| machine | %s cores, %s, %.1f GiB RAM, %s |\n", m["nproc"], m["cpu"], ramGiB, m["kernel"])
	p("| software | %s, %s (local cluster, durable: fsync and synchronous_commit on) |\n", m["go"], m["postgres"])
	p("| code | commit %s |\n", m["commit"])
	busy, _ := strconv.ParseFloat(m["busy_before"], 64)
	p("| CPU busy before the run | %.0f%% of all cores over 3 s", busy*100)
	if busy > 0.10 {
		p(" — **other work was running: figures are lower than this machine can do**")
	}
	p(" |\n\n")
	p("Everything runs on this one machine: Postgres, the backend, the router, the edge (flylocal) and the load generator\n")
	p("(`backend/cmd/loadgen`), which competes with the server for the same cores; each load figure gives the cores the\n")
	p("backend and the load generator used, and how busy the whole machine was. The load generator's clients behave like\n")
	p("Replicache: one push in flight per client, each client applies every poke to its replica and checks the cookie chain,\n")
	p("and at the end every replica is compared with the server's state and every counter with the increments acknowledged\n")
	p("(a run that loses or doubles anything fails). Each client increments a counter of its own (`count/<client>`), so a\n")
	p("poke carries one entry per client whose mutations it covers, and push-to-poke latency is timed per increment from\n")
	p("the moment its push was sent to the moment each *other* client of the space read the poke that carries it.\n\n")
	p("Binaries are built with `go build -o bin/ ./backend/cmd/... ./router/cmd/router ./fly/cmd/flylocal`. Auth is on,\n")
	p("as deployed. The lone backend of the load figures (a new one for the idle and cold-load figures) runs as\n\n")
	p("```\n%s\n```\n\nand the load generator with `%s`.\n\n", r.setup["backend"], r.setup["loadgen_env"])

	writeTargets(w, r)
	writeRouter(w, r)
	writeThroughput(w, r)
	writeFanout(w, r)
	writeHostile(w, r)
	writeSpaces(w, r)
	writeEdge(w, r)
	writeDiff(w, r)
	writeIdle(w, r)
	writeCold(w, r)
	writeGoBench(w, r)
	writeMissing(w, r)
}

// target is one of the targets, as measured.
type target struct {
	what, measured string
	met            *bool
}

func writeTargets(w *strings.Builder, r *results) {
	var ts []target
	yes := func(b bool) *bool { return &b }
	if bare, ok := r.bench("router-bench", "BenchmarkReplay/bare-chi/conns=32"); ok {
		if hit, ok := r.bench("router-bench", "BenchmarkReplay/hit/conns=32"); ok {
			ratio := hit.metrics["decisions/s"] / bare.metrics["decisions/s"]
			ts = append(ts, target{"Router at cache hit: at least 80% of the bare chi handler's rate (HTTP, 32 connections)",
				fmt.Sprintf("%.0f%% (%s vs %s decisions/s)", ratio*100, num(hit.metrics["decisions/s"]), num(bare.metrics["decisions/s"])), yes(ratio >= 0.8)})
		}
	}
	if l := r.load("rate-100-20000"); l != nil {
		ts = append(ts, target{"One space: 20,000 committed mutations/s with 100 pushing clients (20,000/s offered)",
			fmt.Sprintf("%s /s committed, push→pushed p99 %s", num(l.CommittedPerSec), ms(l.PushToPushedMS.P99)),
			yes(l.CommittedPerSec >= 0.99*20000)})
	}
	if l := r.load("throughput-100"); l != nil {
		ts = append(ts, target{"… and the most one space committed with 100 clients (closed loop, pushes of 20)",
			num(l.CommittedPerSec) + " /s", yes(l.CommittedPerSec >= 20000)})
	}
	if l := r.load("fanout-100-1000"); l != nil {
		ts = append(ts, target{"p99 push-to-poke under 10 ms at 1,000 mutations/s with 100 clients",
			ms(l.PushToPokeMS.P99), yes(l.PushToPokeMS.P99 < 10 && l.PushToPokeMS.Count > 0)})
	}
	if l := r.load("fanout-1000-1000"); l != nil {
		ts = append(ts, target{"p99 push-to-poke under 50 ms with 1,000 clients (1,000 mutations/s)",
			ms(l.PushToPokeMS.P99), yes(l.PushToPokeMS.P99 < 50 && l.PushToPokeMS.Count > 0)})
	}
	if quiet, hostile := r.load(hostileBaseline), r.load(hostileFigure); quiet != nil && hostile != nil && quiet.PushToPokeMS.P99 > 0 {
		ratio := hostile.PushToPokeMS.P99 / quiet.PushToPokeMS.P99
		ts = append(ts, target{"Hostile clients in the space: honest clients' p99 push-to-poke within 2x of the quiet baseline",
			fmt.Sprintf("%.2fx (%s vs %s)", ratio, ms(hostile.PushToPokeMS.P99), ms(quiet.PushToPokeMS.P99)), yes(ratio <= 2)})
	}
	if res := r.loadgen["diff-10000"]; res != nil && res.Load != nil {
		full := res.Connect.InitialPokeBytes.Max
		if full > 0 {
			ratio := res.Load.PokeBytes.P50 / full
			ts = append(ts, target{"Bytes per poke after one change in 10,000 entries: under 1% of the full state",
				fmt.Sprintf("%.3f%% (%s B of %s B)", ratio*100, num(res.Load.PokeBytes.P50), num(full)), yes(ratio < 0.01)})
		}
	}
	if res := r.loadgen["idle-10000"]; res != nil && res.Memory != nil {
		kib := res.Memory.PerConnectionBytes / 1024
		ts = append(ts, target{"Idle connection: under 16 KiB of RSS each", fmt.Sprintf("%.1f KiB", kib), yes(kib < 16)})
	}
	ts = append(ts, r.spaceTargets()...)
	w.WriteString("## Targets\n\nOn a 2-core machine, as the issue sets them. Measured below; met or not, as measured.\n\n")
	w.WriteString("| target | measured | met |\n|---|---|---|\n")
	for _, t := range ts {
		met := "—"
		if t.met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*t.met]
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.what, t.measured, met)
	}
	w.WriteString("\n")
}

func (r *results) load(id string) *loadgen.LoadResult {
	if res := r.loadgen[id]; res != nil {
		return res.Load
	}
	return nil
}

func (r *results) commandsOf(w *strings.Builder, ids ...string) {
	w.WriteString("\nCommands:\n\n```\n")
	for _, id := range ids {
		if c, ok := r.commands[id]; ok {
			fmt.Fprintf(w, "%s\n", c)
		}
	}
	w.WriteString("```\n\n")
}

func writeRouter(w *strings.Builder, r *results) {
	w.WriteString("## Router: replay decisions\n\n")
	w.WriteString("`GET /api/replicache/websocket/{space}` answered `307` + `fly-replay`, over real HTTP/1.1 keep-alive connections\n")
	w.WriteString("(`BenchmarkReplay`), beside a bare chi handler that returns a constant `fly-replay` header (the ceiling on this\n")
	w.WriteString("machine), in the same run. Hit: every placement in the cache. Miss: a placement TTL of 1 ns, so every decision\n")
	w.WriteString("reads Postgres. With 1 connection the latency is that of an idle server; 32 connections give the most decisions\n")
	w.WriteString("per second (the client runs on the same 2 cores). `BenchmarkReplayHandler` is the same handlers in memory,\n")
	w.WriteString("without sockets: what a decision costs the router itself.\n\n")
	w.WriteString("| handler | connections | decisions/s | % of bare chi | p50 | p99 |\n|---|---|---|---|---|---|\n")
	for _, conns := range []string{"1", "32"} {
		bare, _ := r.bench("router-bench", "BenchmarkReplay/bare-chi/conns="+conns)
		for _, h := range []string{"bare-chi", "hit", "miss"} {
			b, ok := r.bench("router-bench", "BenchmarkReplay/"+h+"/conns="+conns)
			if !ok {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s µs | %s µs |\n", h, conns, num(b.metrics["decisions/s"]),
				pct(b.metrics["decisions/s"], bare.metrics["decisions/s"]), num(b.metrics["p50-µs"]), num(b.metrics["p99-µs"]))
		}
	}
	w.WriteString("\n| in memory | decisions/s | % of bare chi | ns/op | B/op | allocs/op |\n|---|---|---|---|---|---|\n")
	bare, _ := r.bench("router-bench", "BenchmarkReplayHandler/bare-chi")
	for _, h := range []string{"bare-chi", "hit", "miss"} {
		b, ok := r.bench("router-bench", "BenchmarkReplayHandler/"+h)
		if !ok {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", h, num(b.metrics["decisions/s"]), pct(b.metrics["decisions/s"], bare.metrics["decisions/s"]),
			num(b.metrics["ns/op"]), num(b.metrics["B/op"]), num(b.metrics["allocs/op"]))
	}
	r.commandsOf(w, "router-bench")
}

// figureIDs lists the recorded figure ids with prefix, in the order run.
func (r *results) figureIDs(prefix string) []string {
	var ids []string
	for id := range r.commands {
		if strings.HasPrefix(id, prefix) {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return naturalLess(ids[i], ids[j]) })
	return ids
}

// naturalLess orders "fanout-100-1000" after "fanout-10-1000".
func naturalLess(a, b string) bool {
	pa, pb := strings.Split(a, "-"), strings.Split(b, "-")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		na, ea := strconv.Atoi(pa[i])
		nb, eb := strconv.Atoi(pb[i])
		switch {
		case ea == nil && eb == nil && na != nb:
			return na < nb
		case (ea != nil || eb != nil) && pa[i] != pb[i]:
			return pa[i] < pb[i]
		}
	}
	return len(pa) < len(pb)
}

func writeThroughput(w *strings.Builder, r *results) {
	ids := append(r.figureIDs("throughput-"), r.figureIDs("rate-")...)
	w.WriteString("## One space: sustained throughput, acks after commit\n\n")
	w.WriteString("`pushed` is sent only after the group commit holding the mutation is durable in Postgres. In the capacity\n")
	w.WriteString("runs (closed loop) each client makes 20 mutations whenever it has nothing unacknowledged and pushes them after\n")
	w.WriteString("Replicache's 10 ms push delay; the server sets the pace. In the rate run, 100 clients make 20,000\n")
	w.WriteString("mutations/s in all and each pushes what it made since its last push, one push in flight, as Replicache does.\n")
	w.WriteString("Committed/s counts the mutations acknowledged in the measured window (after a warm-up). Group commit is the\n")
	w.WriteString("mean number of mutations per Postgres transaction, batch time the mean time to run and commit one, both from\n")
	w.WriteString("the backend's metrics.\n\n")
	w.WriteString("| clients | load | committed/s | push→pushed p50 / p99 | push→poke p50 / p99 | group commit | batch time | backend cores | loadgen cores | machine busy | backend µs CPU per mutation | result |\n")
	w.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, id := range ids {
		res := r.loadgen[id]
		if res == nil || res.Load == nil {
			fmt.Fprintf(w, "| %s | | not measured | | | | | | | | | %s |\n", id, r.missing[id])
			continue
		}
		l := res.Load
		load := fmt.Sprintf("closed loop, %d per push", res.Config.Batch)
		if l.TargetRate > 0 {
			load = num(l.TargetRate) + "/s offered"
		}
		fmt.Fprintf(w, "| %d | %s | **%s** | %s / %s | %s / %s | %s | %s | %s | %s | %s | %s | %s |\n", res.Clients, load, num(l.CommittedPerSec),
			ms(l.PushToPushedMS.P50), ms(l.PushToPushedMS.P99), ms(l.PushToPokeMS.P50), ms(l.PushToPokeMS.P99),
			num(res.Server["batch_mutations_mean"]), ms(res.Server["batch_ms_mean"]), cores(res, "target"), cores(res, "loadgen"),
			busyOf(res), usPerMut(res), verdict(res))
	}
	r.commandsOf(w, ids...)
}

func writeFanout(w *strings.Builder, r *results) {
	ids := r.figureIDs("fanout-")
	w.WriteString("## One space: fan-out latency at fixed rates\n\n")
	w.WriteString("The rate is the total over all clients of the space, spread evenly; each client sends what it made since its\n")
	w.WriteString("last push when the previous one is acknowledged. Push→poke is measured at every other client of the space.\n\n")
	w.WriteString("The backend paces pokes at its default `POKE_RATE` (20,000 per space per second): one connection is poked at\n")
	w.WriteString("most every 0.5 ms with 10 clients, 5 ms with 100 and 50 ms with 1,000, each poke carrying the commits since the\n")
	w.WriteString("last. With 1,000 clients every client applies every change: 1,000 mutations/s are a million replica updates\n")
	w.WriteString("per second in the load generator, on the same two cores as the backend.\n\n")
	w.WriteString("| clients | rate | committed/s | push→pushed p50 / p99 | push→poke p50 | p90 | p99 | max | bytes/poke (mean) | pokes/s received | backend cores | loadgen cores | machine busy | result |\n")
	w.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, id := range ids {
		res := r.loadgen[id]
		parts := strings.Split(id, "-")
		if res == nil || res.Load == nil {
			fmt.Fprintf(w, "| %s | %s | not measured | | | | | | | | | | | %s |\n", parts[1], parts[2], r.missing[id])
			continue
		}
		l := res.Load
		fmt.Fprintf(w, "| %d | %s/s | %s | %s / %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s |\n", res.Clients, num(l.TargetRate),
			num(l.CommittedPerSec), ms(l.PushToPushedMS.P50), ms(l.PushToPushedMS.P99), ms(l.PushToPokeMS.P50), ms(l.PushToPokeMS.P90),
			ms(l.PushToPokeMS.P99), ms(l.PushToPokeMS.Max), num(l.PokeBytes.Mean), num(l.PokesPerSec),
			cores(res, "target"), cores(res, "loadgen"), busyOf(res), verdict(res))
	}
	r.commandsOf(w, ids...)
}

// The hostile-clients figure and the quiet run it is compared with.
const (
	hostileFigure   = "hostile-100-1000"
	hostileBaseline = "fanout-100-1000"
)

func writeHostile(w *strings.Builder, r *results) {
	if _, ok := r.commands[hostileFigure]; !ok {
		return
	}
	w.WriteString("## Hostile clients\n\n")
	w.WriteString("The load of the 100-client, 1,000 mutations/s fan-out row, once quiet and once with hostile clients in the same\n")
	w.WriteString("space (`-hostile`), each repeating one attack for the whole run: frames that are not JSON, frames past the size\n")
	w.WriteString("limit, floods of pushes that never wait for an answer, pushes into an honest client's group, mutation IDs from\n")
	w.WriteString("the future, and slowloris readers that never read. Latencies are the honest clients'.\n\n")
	w.WriteString("| run | push→pushed p50 / p99 | push→poke p50 | p99 | max | committed/s | backend cores | loadgen cores (attackers included) | machine busy | result |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range []struct{ name, id string }{{"quiet", hostileBaseline}, {"under attack", hostileFigure}} {
		res := r.loadgen[row.id]
		if res == nil || res.Load == nil {
			fmt.Fprintf(w, "| %s | not measured | | | | | | | | %s |\n", row.name, r.missing[row.id])
			continue
		}
		l := res.Load
		fmt.Fprintf(w, "| %s | %s / %s | %s | **%s** | %s | %s | %s | %s | %s | %s |\n", row.name, ms(l.PushToPushedMS.P50), ms(l.PushToPushedMS.P99),
			ms(l.PushToPokeMS.P50), ms(l.PushToPokeMS.P99), ms(l.PushToPokeMS.Max), num(l.CommittedPerSec), cores(res, "target"),
			cores(res, "loadgen"), busyOf(res), verdict(res))
	}
	if res := r.loadgen[hostileFigure]; res != nil && res.Hostile != nil {
		h := res.Hostile
		fmt.Fprintf(w, "\n%d attackers, %d attack rounds; how they ended:\n\n| attack: outcome | rounds |\n|---|---|\n", h.Attackers, h.Rounds)
		var outcomes []string
		for o := range h.Outcomes {
			outcomes = append(outcomes, o)
		}
		sort.Strings(outcomes)
		for _, o := range outcomes {
			fmt.Fprintf(w, "| %s | %d |\n", o, h.Outcomes[o])
		}
	}
	r.commandsOf(w, hostileFigure)
}

func writeEdge(w *strings.Builder, r *results) {
	w.WriteString("## Through the edge: flylocal and the router\n\n")
	w.WriteString("The same load through `flylocal` (the local Fly edge) with one router machine and one backend machine started by\n")
	w.WriteString("it: each WebSocket upgrade goes to the router, comes back with `fly-replay`, and is replayed by the edge to the\n")
	w.WriteString("backend, which checks the space's assignment in the directory. Connect is dial to `welcome`; the row below it is\n")
	w.WriteString("the same client count straight to a backend, for comparison.\n\n")
	w.WriteString("| path | clients | rate | connect p50 / p99 | push→pushed p50 / p99 | push→poke p50 / p99 | committed/s | result |\n|---|---|---|---|---|---|---|---|\n")
	row := func(path, id string) {
		res := r.loadgen[id]
		if res == nil || res.Load == nil {
			if _, ok := r.commands[id]; ok {
				fmt.Fprintf(w, "| %s | | | not measured | | | | %s |\n", path, r.missing[id])
			}
			return
		}
		l := res.Load
		fmt.Fprintf(w, "| %s | %d | %s/s | %s / %s | %s / %s | %s / %s | %s | %s |\n", path, res.Clients, num(l.TargetRate),
			ms(res.Connect.WelcomeMS.P50), ms(res.Connect.WelcomeMS.P99), ms(l.PushToPushedMS.P50), ms(l.PushToPushedMS.P99),
			ms(l.PushToPokeMS.P50), ms(l.PushToPokeMS.P99), num(l.CommittedPerSec), verdict(res))
	}
	row("edge → router → backend", "edge-100-1000")
	row("straight to the backend", "fanout-100-1000")
	r.commandsOf(w, "edge-100-1000")
	fmt.Fprintf(w, "The edge: `%s`.\n\n", r.setup["flylocal"])
}

func writeDiff(w *strings.Builder, r *results) {
	ids := r.figureIDs("diff-")
	w.WriteString("## Diffs: bytes per poke against the size of the space\n\n")
	w.WriteString("A space seeded with N entries (`seed/NNNNNNN`, each a number), then 10 clients making 20 increments/s in all:\n")
	w.WriteString("almost every poke carries one change. The full state is the first poke a new client gets (clear + every entry).\n\n")
	w.WriteString("| entries | full state | bytes per poke p50 | mean | p99 | p50 / full state | result |\n|---|---|---|---|---|---|---|\n")
	for _, id := range ids {
		res := r.loadgen[id]
		if res == nil || res.Load == nil {
			fmt.Fprintf(w, "| %s | not measured | | | | | %s |\n", strings.TrimPrefix(id, "diff-"), r.missing[id])
			continue
		}
		full := res.Connect.InitialPokeBytes.Max
		fmt.Fprintf(w, "| %s | %s B | %s B | %s B | %s B | %s | %s |\n", num(float64(res.Config.Seed)), num(full),
			num(res.Load.PokeBytes.P50), num(res.Load.PokeBytes.Mean), num(res.Load.PokeBytes.P99),
			pct(res.Load.PokeBytes.P50, full), verdict(res))
	}
	r.commandsOf(w, ids...)
}

func writeIdle(w *strings.Builder, r *results) {
	ids := r.figureIDs("idle-")
	w.WriteString("## Memory per idle connection\n\n")
	w.WriteString("A freshly started backend; RSS (from `/proc/PID/status`) before the clients connect and after they all\n")
	w.WriteString("connected (spread over spaces: one space admits at most 10,000 peers), said hello, received their first poke\n")
	w.WriteString("and idled for the hold time. Go heap from the backend's `/metrics`.\n\n")
	w.WriteString("| connections | RSS before | RSS after | RSS per connection | Go heap in use after | heap per connection | connect all | result |\n|---|---|---|---|---|---|---|---|\n")
	for _, id := range ids {
		res := r.loadgen[id]
		if res == nil || res.Memory == nil {
			fmt.Fprintf(w, "| %s | not measured | | | | | | %s |\n", strings.TrimPrefix(id, "idle-"), r.missing[id])
			continue
		}
		mem := res.Memory
		heapPer := res.Server["go_heap_inuse_bytes_delta"] / float64(max(mem.Connections, 1))
		fmt.Fprintf(w, "| %s | %s MiB | %s MiB | **%.1f KiB** | %s MiB | %.1f KiB | %.1f s | %s |\n", num(float64(mem.Connections)),
			mib(float64(mem.RSSBeforeBytes)), mib(float64(mem.RSSAfterBytes)), mem.PerConnectionBytes/1024,
			mib(res.Server["go_heap_inuse_bytes_at_end"]), heapPer/1024, res.Connect.Seconds, verdict(res))
	}
	r.commandsOf(w, ids...)
}

func writeCold(w *strings.Builder, r *results) {
	w.WriteString("## Cold load\n\n")
	w.WriteString("A space seeded with N entries, then the backend restarted and one new client connected: the backend claims the\n")
	w.WriteString("space (fencing epoch), reads it from Postgres, builds its replica and sends the whole of it. First poke is dial\n")
	w.WriteString("to the full state received; load is the backend's own `spaceport_space_load_seconds` (claim and read).\n\n")
	seed := r.loadgen["cold-seed"]
	if seed != nil && seed.Seed != nil {
		fmt.Fprintf(w, "Seeded %s entries in %.1f s (%s entries/s, in pushes of 1,000 increments).\n\n", num(float64(seed.Seed.Entries)),
			seed.Seed.Seconds, num(seed.Seed.EntriesPerSec))
	}
	w.WriteString("| run | entries | backend load | first poke (dial → full state) | full state size | result |\n|---|---|---|---|---|---|\n")
	runs := []string{}
	for _, id := range r.figureIDs("cold-") {
		if id != "cold-seed" {
			runs = append(runs, id)
		}
	}
	for _, id := range runs {
		res := r.loadgen[id]
		if res == nil {
			fmt.Fprintf(w, "| %s | not measured | | | | %s |\n", id, r.missing[id])
			continue
		}
		entries := ""
		if seed != nil {
			entries = num(float64(seed.Config.Seed))
		}
		if res.Config.Seed > 0 {
			entries = num(float64(res.Config.Seed))
		}
		fmt.Fprintf(w, "| %s | %s | %s | **%s** | %s | %s |\n", strings.TrimPrefix(id, "cold-"), entries, ms(res.Server["space_load_ms_mean"]),
			ms(res.Connect.FirstPokeMS.Max), mib(res.Connect.InitialPokeBytes.Max)+" MiB", verdict(res))
	}
	r.commandsOf(w, append([]string{"cold-seed"}, runs...)...)
}

func writeGoBench(w *strings.Builder, r *results) {
	w.WriteString("## Go benchmarks of the hot paths\n\n")
	w.WriteString("`testing.B` benchmarks beside the code they measure: frame decoding and poke encoding (`backend/protocol`),\n")
	w.WriteString("diffs, full state, cached pokes, replica load and the writer's per-mutation work (`backend/space`), the\n")
	w.WriteString("client's poke decoding (`backend/syncclient`, used by the load generator) and the router's cache lookup\n")
	w.WriteString("(`router/routecache`).\n\n")
	w.WriteString("| package | benchmark | ns/op | B/op | allocs/op | other |\n|---|---|---|---|---|---|\n")
	for _, b := range r.gobench["go-bench"] {
		var other []string
		for _, u := range b.units {
			switch u {
			case "ns/op", "B/op", "allocs/op":
			default:
				other = append(other, num(b.metrics[u])+" "+u)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", strings.TrimPrefix(b.pkg, "github.com/spaceport-sync/spaceport/"),
			strings.TrimPrefix(b.name, "Benchmark"), num(b.metrics["ns/op"]), num(b.metrics["B/op"]), num(b.metrics["allocs/op"]), strings.Join(other, ", "))
	}
	r.commandsOf(w, "go-bench")
}

func writeMissing(w *strings.Builder, r *results) {
	var ids []string
	for id := range r.missing {
		ids = append(ids, id)
	}
	failed := false
	for _, res := range r.loadgen {
		failed = failed || !res.OK
	}
	if len(ids) == 0 && !failed {
		return
	}
	sort.Strings(ids)
	w.WriteString("## Failures\n\n")
	for _, id := range ids {
		fmt.Fprintf(w, "- `%s`: %s\n", id, r.missing[id])
	}
	for _, id := range r.figureIDs("") {
		if res := r.loadgen[id]; res != nil && !res.OK {
			fmt.Fprintf(w, "- `%s`: verification failed (%d problems): %s\n", id, res.FailureCount, strings.Join(res.Failures[:min(3, len(res.Failures))], "; "))
		}
	}
	w.WriteString("\n")
}

func verdict(res *loadgen.Result) string {
	if res.OK {
		return "verified"
	}
	return fmt.Sprintf("**FAILED** (%d)", res.FailureCount)
}

func cores(res *loadgen.Result, who string) string {
	if res.CPU == nil {
		return "—"
	}
	v := res.CPU.LoadgenCores
	if who == "target" {
		v = res.CPU.TargetCores
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func busyOf(res *loadgen.Result) string {
	if res.CPU == nil {
		return "—"
	}
	return fmt.Sprintf("%.0f%%", res.CPU.MachineBusy*100)
}

func usPerMut(res *loadgen.Result) string {
	if res.CPU == nil || res.CPU.TargetMicrosPerMutation == 0 {
		return "—"
	}
	return num(res.CPU.TargetMicrosPerMutation)
}

func ms(v float64) string {
	switch {
	case v == 0:
		return "—"
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64) + " ms"
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64) + " ms"
	}
	return num(v) + " ms"
}

func mib(v float64) string { return strconv.FormatFloat(v/(1<<20), 'f', 1, 64) }

func pct(v, of float64) string {
	if of == 0 {
		return "—"
	}
	p := v / of * 100
	if p < 1 {
		return strconv.FormatFloat(p, 'f', 3, 64) + "%"
	}
	return strconv.FormatFloat(p, 'f', 0, 64) + "%"
}

// num writes v with thousands separators, and decimals only when small.
func num(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	if math.Abs(v) < 100 && v != math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
