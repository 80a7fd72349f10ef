package main

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/spaceport-sync/spaceport/backend/loadgen"
)

// The figures of many active spaces, by id:
//
//	spaces-R-N    N spaces of 2 clients, R mutations/s each, one backend
//	alone-R-N     the same with group commit off (GROUP_COMMIT_SPACES=1)
//	two-R-N       the same over two backends on one Postgres
//	idlespaces-N  N spaces of one idle client each, for memory per space
//	pg-D-C        pgbench: C clients committing, commit_delay D µs
const spacesChart = "benchmarks-spaces.svg"

// spaceRun is one many-spaces figure.
type spaceRun struct {
	id       string
	kind     string // spaces, alone, two
	perSpace int
	spaces   int
	res      *loadgen.Result
}

func (r *results) spaceRuns(kind string) []spaceRun {
	var out []spaceRun
	for _, id := range r.figureIDs(kind + "-") {
		f := strings.Split(id, "-")
		if len(f) != 3 {
			continue
		}
		rate, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, spaceRun{id: id, kind: kind, perSpace: rate, spaces: n, res: r.loadgen[id]})
	}
	return out
}

func (s spaceRun) load() *loadgen.LoadResult {
	if s.res == nil {
		return nil
	}
	return s.res.Load
}

func writeSpaces(w *strings.Builder, r *results) {
	runs := append(append(r.spaceRuns("spaces"), r.spaceRuns("alone")...), r.spaceRuns("two")...)
	if len(runs) == 0 {
		return
	}
	w.WriteString("## Many active spaces: group commit across spaces\n\n")
	w.WriteString("Many spaces at once, each with 2 clients making R mutations/s in all (one push in flight per client, after\n")
	w.WriteString("Replicache's 10 ms push delay), on one backend unless said. The backend commits the ready batches of all its spaces\n")
	w.WriteString("together, one Postgres statement per group, each space fenced on its own epoch (`backend/store/groupcommit.go`);\n")
	w.WriteString("*alone* is the same backend with `GROUP_COMMIT_SPACES=1`, every batch its own transaction, as before group\n")
	w.WriteString("commit. Spaces/group and group time are the backend's `spaceport_group_commit_spaces` and\n")
	w.WriteString("`spaceport_group_commit_seconds` means. *two backends* splits the spaces over two backends (space i on backend i\n")
	w.WriteString("mod 2) on the same Postgres; their cores are not sampled (—).\n\n")
	w.WriteString(fmt.Sprintf("![p99 push→pushed against active spaces](%s)\n\n", spacesChart))
	w.WriteString("| setup | spaces | per space | offered | committed/s | push→pushed p50 / p99 | push→poke p99 | spaces/group | group time | mutations/batch | backend cores | loadgen cores | machine busy | backend µs CPU per mutation | result |\n")
	w.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range runs {
		setup := map[string]string{"spaces": "one backend", "alone": "one backend, **alone**", "two": "two backends"}[s.kind]
		l := s.load()
		if l == nil {
			fmt.Fprintf(w, "| %s | %s | %d/s | | not measured | | | | | | | | | | %s |\n", setup, num(float64(s.spaces)), s.perSpace, r.missing[s.id])
			continue
		}
		srv := s.res.Server
		fmt.Fprintf(w, "| %s | %s | %d/s | %s/s | **%s** | %s / **%s** | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			setup, num(float64(s.spaces)), s.perSpace, num(l.TargetRate), num(l.CommittedPerSec),
			ms(l.PushToPushedMS.P50), ms(l.PushToPushedMS.P99), ms(l.PushToPokeMS.P99),
			orDash(srv["group_commit_spaces_mean"]), ms(srv["group_commit_ms_mean"]), orDash(srv["batch_mutations_mean"]),
			cores(s.res, "target"), cores(s.res, "loadgen"), busyOf(s.res), usPerMut(s.res), verdict(s.res))
	}
	ids := make([]string, len(runs))
	for i, s := range runs {
		ids[i] = s.id
	}
	r.commandsOf(w, ids...)
	r.files[spacesChart] = chartSpaces(r)
	writeSpaceMemory(w, r)
	writeCommitSettings(w, r)
	writeClusters(w, r)
}

func orDash(v float64) string {
	if v == 0 {
		return "—"
	}
	return num(v)
}

func writeSpaceMemory(w *strings.Builder, r *results) {
	ids := r.figureIDs("idlespaces-")
	if len(ids) == 0 {
		return
	}
	perConn := 0.0
	for _, id := range r.figureIDs("idle-") { // the largest idle run
		if res := r.loadgen[id]; res != nil && res.Memory != nil {
			perConn = res.Memory.PerConnectionBytes
		}
	}
	w.WriteString("### Memory per loaded space\n\n")
	w.WriteString("A fresh backend, N spaces with one idle client each (a small space: the client's counter and client row). RSS per\n")
	w.WriteString("space includes its one connection; less the RSS per idle connection measured above, it is what a loaded space\n")
	w.WriteString("costs by itself.\n\n")
	w.WriteString("| spaces | RSS per space (with its connection) | RSS per idle connection | space alone | result |\n|---|---|---|---|---|\n")
	for _, id := range ids {
		res := r.loadgen[id]
		if res == nil || res.Memory == nil {
			fmt.Fprintf(w, "| %s | not measured | | | %s |\n", strings.TrimPrefix(id, "idlespaces-"), r.missing[id])
			continue
		}
		per := res.Memory.PerConnectionBytes
		alone := "—"
		if perConn > 0 {
			alone = fmt.Sprintf("**%.1f KiB**", (per-perConn)/1024)
		}
		fmt.Fprintf(w, "| %s | %.1f KiB | %.1f KiB | %s | %s |\n", num(float64(res.Spaces)), per/1024, perConn/1024, alone, verdict(res))
	}
	r.commandsOf(w, ids...)
}

// pgbench is one pgbench figure.
type pgbench struct {
	delay, clients int
	tps, latencyMS float64
	ok             bool
}

var (
	pgbenchTPS     = regexp.MustCompile(`tps = ([0-9.]+)`)
	pgbenchLatency = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
)

func parsePgbench(id, out string) pgbench {
	var p pgbench
	f := strings.Split(id, "-")
	if len(f) != 3 {
		return p
	}
	p.delay, _ = strconv.Atoi(f[1])
	p.clients, _ = strconv.Atoi(f[2])
	if m := pgbenchTPS.FindStringSubmatch(out); m != nil {
		p.tps, _ = strconv.ParseFloat(m[1], 64)
		p.ok = true
	}
	if m := pgbenchLatency.FindStringSubmatch(out); m != nil {
		p.latencyMS, _ = strconv.ParseFloat(m[1], 64)
	}
	return p
}

func writeCommitSettings(w *strings.Builder, r *results) {
	ids := r.figureIDs("pg-")
	if len(ids) == 0 {
		return
	}
	w.WriteString("### Postgres's own group commit: `commit_delay`\n\n")
	w.WriteString("Many backends commit to one Postgres at once; Postgres can gather their WAL flushes too. `pgbench` against the\n")
	w.WriteString("durable cluster, each transaction what a lone space's commit does (bump the space row, upsert one entry), C clients\n")
	w.WriteString("at once, with `commit_siblings = 5` and `commit_delay` D µs (`ALTER SYSTEM`, reloaded). What this means for a\n")
	w.WriteString("deployment is in `docs/deploy.md`.\n\n")
	w.WriteString("| commit_delay | clients | transactions/s | latency mean |\n|---|---|---|---|\n")
	for _, id := range ids {
		p := r.pgbench[id]
		if !p.ok {
			fmt.Fprintf(w, "| %s | | not measured | %s |\n", id, r.missing[id])
			continue
		}
		fmt.Fprintf(w, "| %d µs | %d | %s | %s |\n", p.delay, p.clients, num(p.tps), ms(p.latencyMS))
	}
	r.commandsOf(w, ids...)
}

func writeClusters(w *strings.Builder, r *results) {
	if lines := r.gobench["store-bench"]; len(lines) > 0 {
		w.WriteString("### The store alone\n\n")
		w.WriteString("`BenchmarkCommit` (`backend/store`): N spaces in one process, each committing a one-entry batch (one client's\n")
		w.WriteString("lastMutationID, one key) as soon as its last commit returned, against the durable cluster: what Postgres and the\n")
		w.WriteString("commit path take without sockets, mutators or clients. `group=1` commits every batch alone.\n\n")
		w.WriteString("| spaces | group commit | commits/s | µs per commit |\n|---|---|---|---|\n")
		for _, b := range lines {
			name := strings.TrimPrefix(b.name, "BenchmarkCommit/")
			spaces, group, _ := strings.Cut(name, "/")
			mode := "on"
			if group == "group=1" {
				mode = "off (alone)"
			}
			fmt.Fprintf(w, "| %s | %s | **%s** | %s |\n", strings.TrimPrefix(spaces, "spaces="), mode, num(b.metrics["commits/s"]), num(b.metrics["ns/op"]/1000))
		}
		r.commandsOf(w, "store-bench")
	}
	lines := r.gobench["clusters-bench"]
	if len(lines) == 0 {
		return
	}
	w.WriteString("### Two Postgres clusters\n\n")
	w.WriteString("`BenchmarkCommitClusters` (`backend/store`): 500 spaces committing one-entry batches as fast as each commit\n")
	w.WriteString("returns, from one process, spread over one or two durable clusters on this machine, with every batch alone\n")
	w.WriteString("(`group=1`) and with group commit.\n\n")
	w.WriteString("| clusters | group commit | commits/s | µs per commit |\n|---|---|---|---|\n")
	for _, b := range lines {
		name := strings.TrimPrefix(b.name, "BenchmarkCommitClusters/")
		clusters, group, _ := strings.Cut(name, "/")
		mode := "on"
		if group == "group=1" {
			mode = "off (alone)"
		}
		fmt.Fprintf(w, "| %s | %s | **%s** | %s |\n", strings.TrimPrefix(clusters, "clusters="), mode, num(b.metrics["commits/s"]), num(b.metrics["ns/op"]/1000))
	}
	r.commandsOf(w, "clusters-bench")
}

// clusterRatio is commits/s on two clusters over one, for group (1 or the
// default).
func (r *results) clusterRatio(group string) (ratio, one, two float64, ok bool) {
	a, ok1 := r.bench("clusters-bench", "BenchmarkCommitClusters/clusters=1/group="+group)
	b, ok2 := r.bench("clusters-bench", "BenchmarkCommitClusters/clusters=2/group="+group)
	if !ok1 || !ok2 || a.metrics["commits/s"] == 0 {
		return 0, 0, 0, false
	}
	one, two = a.metrics["commits/s"], b.metrics["commits/s"]
	return two / one, one, two, true
}

func (r *results) spaceTargets() []target {
	var ts []target
	yes := func(b bool) *bool { return &b }
	find := func(kind string, perSpace, spaces int) *loadgen.LoadResult {
		for _, s := range r.spaceRuns(kind) {
			if s.perSpace == perSpace && s.spaces == spaces {
				return s.load()
			}
		}
		return nil
	}
	add := func(what string, l *loadgen.LoadResult, limit float64) {
		if l == nil {
			return
		}
		ts = append(ts, target{what, fmt.Sprintf("%s (%s committed/s of %s offered)", ms(l.PushToPushedMS.P99), num(l.CommittedPerSec), num(l.TargetRate)),
			yes(l.PushToPushedMS.P99 < limit && l.PushToPushedMS.Count > 0 && l.CommittedPerSec >= 0.97*l.TargetRate)})
	}
	add("One backend, 500 active spaces × 10 mutations/s: p99 push→pushed under 25 ms", find("spaces", 10, 500), 25)
	add("One backend, 2,000 active spaces × 10 mutations/s (20,000/s): p99 push→pushed under 50 ms", find("spaces", 10, 2000), 50)
	add("Two backends on one Postgres, 2,000 active spaces × 10/s: p99 push→pushed under 50 ms", find("two", 10, 2000), 50)
	if ratio, one, two, ok := r.clusterRatio("1"); ok {
		ts = append(ts, target{"Two Postgres clusters double the fleet's ceiling (every batch alone: the fsync-bound ceiling)",
			fmt.Sprintf("%.2fx (%s vs %s commits/s)", ratio, num(two), num(one)), yes(ratio >= 1.9)})
	}
	if ratio, one, two, ok := r.clusterRatio(strconv.Itoa(1000)); ok {
		ts = append(ts, target{"… and with group commit (the ceiling is then this machine's CPU, shared by both clusters)",
			fmt.Sprintf("%.2fx (%s vs %s commits/s)", ratio, num(two), num(one)), yes(ratio >= 1.9)})
	}
	return ts
}

// chartSpaces draws p99 push→pushed against active spaces (log scales), one
// line per setup, as an SVG file beside the report.
func chartSpaces(r *results) string {
	type series struct {
		label, color string
		pts          [][2]float64
	}
	var all []series
	for _, s := range []struct{ kind, label, color string }{
		{"spaces", "one backend, group commit", "#1f77b4"},
		{"alone", "one backend, every space alone", "#d62728"},
		{"two", "two backends, one Postgres", "#2ca02c"},
	} {
		ser := series{label: s.label, color: s.color}
		for _, run := range r.spaceRuns(s.kind) {
			if l := run.load(); l != nil && run.perSpace == 10 && l.PushToPushedMS.P99 > 0 {
				ser.pts = append(ser.pts, [2]float64{float64(run.spaces), l.PushToPushedMS.P99})
			}
		}
		if len(ser.pts) > 0 {
			all = append(all, ser)
		}
	}
	const W, H, left, right, top, bottom = 640, 360, 60, 20, 20, 70
	x0, x1 := math.Log10(20), math.Log10(5000)
	y0, y1 := math.Log10(1), math.Log10(5000)
	px := func(v float64) float64 { return left + (math.Log10(v)-x0)/(x1-x0)*(W-left-right) }
	py := func(v float64) float64 { return top + (1-(math.Log10(max(v, 1))-y0)/(y1-y0))*(H-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	for _, v := range []float64{1, 10, 25, 50, 100, 1000} {
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s ms</text>`+"\n", left, W-right, y, y, left-4, y+4, num(v))
	}
	for _, v := range []float64{50, 100, 200, 500, 1000, 2000} {
		x := px(v)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ddd"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, x, top, H-bottom, x, H-bottom+14, num(v))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">active spaces (2 clients each, 10 mutations/s each); y: p99 push→pushed</text>`+"\n", (W+left)/2, H-bottom+30)
	for i, s := range all {
		var pts []string
		for _, p := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px(p[0]), py(p[1]), s.color)
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", s.color, strings.Join(pts, " "))
		y := H - bottom + 46 + 0*i
		x := left + i*200
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="3" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, y, s.color, x+16, y+4, s.label)
	}
	b.WriteString("</svg>\n")
	return b.String()
}
