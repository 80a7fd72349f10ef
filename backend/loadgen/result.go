package loadgen

import (
	"fmt"
	"strings"
	"time"
)

// Result is what a run measured and verified. Times are in milliseconds,
// sizes in bytes.
type Result struct {
	// OK is true when verification found nothing wrong.
	OK bool `json:"ok"`
	// Failures lists what verification found (the first MaxFailures);
	// FailureCount counts them all.
	Failures     []string `json:"failures,omitempty"`
	FailureCount int      `json:"failure_count"`
	// Command is the command line that produced the result (set by the
	// command).
	Command string       `json:"command,omitempty"`
	Started time.Time    `json:"started"`
	Config  ResultConfig `json:"config"`
	Spaces  int          `json:"spaces"`
	// Clients is the number of clients over all spaces.
	Clients int           `json:"clients"`
	Seed    *SeedResult   `json:"seed,omitempty"`
	Connect ConnectResult `json:"connect"`
	Load    *LoadResult   `json:"load,omitempty"`
	Errors  ErrorResult   `json:"errors"`
	Memory  *MemoryResult `json:"memory,omitempty"`
	CPU     *CPUResult    `json:"cpu,omitempty"`
	Verify  VerifyResult  `json:"verify"`
	// Hostile is what the hostile clients did (Config.Hostile).
	Hostile *HostileResult `json:"hostile,omitempty"`
	// Server holds the backend's own figures over the run (Config.MetricsURL).
	Server map[string]float64 `json:"server,omitempty"`
}

// ResultConfig echoes the run's configuration.
type ResultConfig struct {
	URLs        []string `json:"urls"`
	Mode        string   `json:"mode"`
	Spaces      int      `json:"spaces"`
	SpacePrefix string   `json:"space_prefix"`
	Clients     int      `json:"clients_per_space"`
	Rate        float64  `json:"rate"`
	Batch       int      `json:"batch"`
	PushDelay   string   `json:"push_delay"`
	Duration    string   `json:"duration"`
	Warmup      string   `json:"warmup"`
	Mix         string   `json:"mix"`
	Seed        int      `json:"seed"`
	Hostile     int      `json:"hostile,omitempty"`
}

func resultConfig(c Config) ResultConfig {
	return ResultConfig{
		URLs: c.URLs, Mode: c.Mode, Spaces: c.Spaces, SpacePrefix: c.SpacePrefix, Clients: c.Clients,
		Rate: c.Rate, Batch: c.Batch, PushDelay: c.PushDelay.String(), Duration: c.Duration.String(), Warmup: c.Warmup.String(),
		Mix: c.Mix.String(), Seed: c.Seed, Hostile: c.Hostile,
	}
}

// SeedResult is the seeding phase.
type SeedResult struct {
	Spaces        int     `json:"spaces"`
	Entries       int     `json:"entries_per_space"`
	Seconds       float64 `json:"seconds"`
	EntriesPerSec float64 `json:"entries_per_sec"`
}

// ConnectResult is the connection phase, per client.
type ConnectResult struct {
	// Seconds is the wall time to connect every client.
	Seconds float64 `json:"seconds"`
	// WelcomeMS is dial to `welcome`: the upgrade (through the edge and the
	// router, if the URL is the edge's) and the space joined (loaded first
	// if it was not).
	WelcomeMS Stats `json:"welcome_ms"`
	// FirstPokeMS is dial to the first poke: the whole space received.
	FirstPokeMS Stats `json:"first_poke_ms"`
	// InitialPokeBytes is the size of that first poke (the full state).
	InitialPokeBytes Stats `json:"initial_poke_bytes"`
}

// LoadResult is the load phase.
type LoadResult struct {
	// Seconds is the measured window (after Warmup).
	Seconds    float64 `json:"seconds"`
	TargetRate float64 `json:"target_rate"`
	// Mutations counts every mutation made, warmup and drain included.
	Mutations       int64            `json:"mutations"`
	MutationsByName map[string]int64 `json:"mutations_by_name"`
	// AckedInWindow counts the mutations whose `pushed` arrived in the
	// window; CommittedPerSec is that over Seconds.
	AckedInWindow   int64   `json:"acked_in_window"`
	CommittedPerSec float64 `json:"committed_per_sec"`
	// PushToPushedMS is from sending a push to its `pushed`, per push sent
	// in the window.
	PushToPushedMS Stats `json:"push_to_pushed_ms"`
	// PushToPokeMS is from sending an increment to each other client of the
	// space receiving the poke that carries it.
	PushToPokeMS Stats `json:"push_to_poke_ms"`
	// PokeBytes is the size of each poke received in the window.
	PokeBytes   Stats   `json:"poke_bytes"`
	PokesPerSec float64 `json:"pokes_per_sec"`
}

// ErrorResult counts what went wrong on the wire.
type ErrorResult struct {
	// Closes counts connections ended by close code ("dropped": no close
	// frame).
	Closes     map[string]int `json:"closes"`
	Reconnects int            `json:"reconnects"`
	DialErrors int64          `json:"dial_errors"`
	// PushErrors counts `error` answers to pushes by code.
	PushErrors map[string]int `json:"push_errors"`
}

// MemoryResult is the sampled process's memory before and after the clients
// connected.
type MemoryResult struct {
	Connections        int     `json:"connections"`
	RSSBeforeBytes     int64   `json:"rss_before_bytes"`
	RSSAfterBytes      int64   `json:"rss_after_bytes"`
	PerConnectionBytes float64 `json:"per_connection_bytes"`
}

// CPUResult is CPU use over the measured window, in cores (1.0 = one core
// busy the whole time).
type CPUResult struct {
	LoadgenCores float64 `json:"loadgen_cores"`
	TargetCores  float64 `json:"target_cores,omitempty"`
	// MachineBusy is the busy share of all the machine's cores (0..1):
	// near 1 means the figures are CPU-bound.
	MachineBusy             float64 `json:"machine_busy"`
	TargetMicrosPerMutation float64 `json:"target_us_per_mutation,omitempty"`
}

// VerifyResult says what verification compared.
type VerifyResult struct {
	Replicas           int   `json:"replicas"`
	Keys               int   `json:"server_keys"`
	Increments         int64 `json:"increments"`
	Todos              int   `json:"todos"`
	ProtocolViolations int   `json:"protocol_violations"`
}

// Summary is the result in one line.
func (r *Result) Summary() string {
	var b strings.Builder
	if r.OK {
		b.WriteString("loadgen: OK")
	} else {
		fmt.Fprintf(&b, "loadgen: FAILED (%d problems)", r.FailureCount)
	}
	fmt.Fprintf(&b, " mode=%s spaces=%d clients=%d", r.Config.Mode, r.Spaces, r.Clients)
	if r.Seed != nil {
		fmt.Fprintf(&b, " seed=%d in %.1fs", r.Seed.Entries, r.Seed.Seconds)
	}
	if r.Clients > 0 {
		fmt.Fprintf(&b, " connect p50=%.1fms p99=%.1fms first poke max=%.1fms (%.0f B)", r.Connect.WelcomeMS.P50,
			r.Connect.WelcomeMS.P99, r.Connect.FirstPokeMS.Max, r.Connect.InitialPokeBytes.Max)
	}
	if l := r.Load; l != nil {
		fmt.Fprintf(&b, " | %.0f committed/s | pushed p50=%.2fms p99=%.2fms | poke p50=%.2fms p90=%.2fms p99=%.2fms max=%.1fms | %.0f B/poke",
			l.CommittedPerSec, l.PushToPushedMS.P50, l.PushToPushedMS.P99,
			l.PushToPokeMS.P50, l.PushToPokeMS.P90, l.PushToPokeMS.P99, l.PushToPokeMS.Max, l.PokeBytes.Mean)
	}
	if m := r.Memory; m != nil && r.Config.Mode == ModeIdle {
		fmt.Fprintf(&b, " | rss %+.1f MiB = %.1f KiB/conn", float64(m.RSSAfterBytes-m.RSSBeforeBytes)/(1<<20), m.PerConnectionBytes/1024)
	}
	fmt.Fprintf(&b, " | reconnects=%d closes=[%s]", r.Errors.Reconnects, errorsByClose(r.Errors.Closes))
	if !r.OK && len(r.Failures) > 0 {
		fmt.Fprintf(&b, " | first: %s", r.Failures[0])
	}
	return b.String()
}
