package machines

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Machine states, as Fly names them (https://fly.io/docs/machines/machine-states/).
const (
	StateCreated    = "created"
	StateStarting   = "starting"
	StateStarted    = "started"
	StateStopping   = "stopping"
	StateStopped    = "stopped"
	StateSuspended  = "suspended"
	StateFailed     = "failed"
	StateDestroying = "destroying"
	StateDestroyed  = "destroyed"
)

// Machine is Fly's Machine object. Fields this client does not know are dropped, except in Config.
type Machine struct {
	ID         string         `json:"id"`
	Name       string         `json:"name"`
	State      string         `json:"state"`
	Region     string         `json:"region"`
	InstanceID string         `json:"instance_id"`
	Version    string         `json:"version,omitempty"`
	PrivateIP  string         `json:"private_ip"`
	Config     *MachineConfig `json:"config,omitempty"`
	ImageRef   *ImageRef      `json:"image_ref,omitempty"`
	Nonce      string         `json:"nonce,omitempty"`
	HostStatus string         `json:"host_status,omitempty"`
	Cordoned   bool           `json:"cordoned,omitempty"`
	CreatedAt  time.Time      `json:"created_at"`
	UpdatedAt  time.Time      `json:"updated_at"`
	Checks     []CheckStatus  `json:"checks,omitempty"`
}

// Active reports whether the machine exists for good: not destroyed or being destroyed (fly-go's IsActive).
func (m Machine) Active() bool { return m.State != StateDestroyed && m.State != StateDestroying }

// ImageRef is the image a machine runs.
type ImageRef struct {
	Registry   string            `json:"registry"`
	Repository string            `json:"repository"`
	Tag        string            `json:"tag"`
	Digest     string            `json:"digest"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// CheckStatus is the result of one of a machine's health checks.
type CheckStatus struct {
	Name      string    `json:"name"`
	Status    string    `json:"status"` // passing, warning, critical
	Output    string    `json:"output"`
	UpdatedAt time.Time `json:"updated_at"`
}

// MachineConfig is a machine's config. The fields below are typed; every other key of Fly's config object
// (services, checks, init, mounts, metrics, dns, files, processes, ...) is kept in Extra as it came, so that a
// config read from one machine creates an identical one (what `fly machine clone` does).
type MachineConfig struct {
	// Image is the image to run. Required when creating.
	Image string
	// Env is added to the machine's environment.
	Env map[string]string
	// Metadata are the machine's key-value labels. flyctl manages machines whose metadata has
	// fly_platform_version "v2" and fly_process_group (see MetadataProcessGroup).
	Metadata map[string]string
	// Guest sizes the machine; nil leaves Fly's default.
	Guest *Guest
	// Restart is the restart policy; nil leaves Fly's default.
	Restart *Restart
	// StopConfig is how the machine is stopped (fly.toml's kill_signal and kill_timeout).
	StopConfig *StopConfig
	// AutoDestroy destroys the machine when it exits.
	AutoDestroy bool
	// Extra holds the other keys of the config object.
	Extra map[string]json.RawMessage
}

// Metadata keys flyctl reads (https://fly.io/docs/machines/guides-examples/managing-machines-with-the-api/).
const (
	MetadataPlatformVersion = "fly_platform_version"
	MetadataProcessGroup    = "fly_process_group"
)

// Guest is a machine's size.
type Guest struct {
	CPUKind  string `json:"cpu_kind,omitempty"` // shared, performance
	CPUs     int    `json:"cpus,omitempty"`
	MemoryMB int    `json:"memory_mb,omitempty"`
}

// Restart is a machine's restart policy.
type Restart struct {
	Policy     string `json:"policy,omitempty"` // no, always, on-failure
	MaxRetries int    `json:"max_retries,omitempty"`
}

// StopConfig is the signal a machine is stopped with and how long it gets before it is killed.
type StopConfig struct {
	Timeout *Duration `json:"timeout,omitempty"`
	Signal  *string   `json:"signal,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("30s"); read from a string or, as fly-go does,
// from a number of nanoseconds.
type Duration struct{ time.Duration }

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.Duration.String()) }

// UnmarshalJSON reads a Go duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case float64:
		d.Duration = time.Duration(v)
	case string:
		p, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		d.Duration = p
	default:
		return fmt.Errorf("duration %s: want a string such as \"30s\"", b)
	}
	return nil
}

// configKnown is the typed part of a config on the wire.
type configKnown struct {
	Image       string            `json:"image,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Guest       *Guest            `json:"guest,omitempty"`
	Restart     *Restart          `json:"restart,omitempty"`
	StopConfig  *StopConfig       `json:"stop_config,omitempty"`
	AutoDestroy bool              `json:"auto_destroy,omitempty"`
}

var configKeys = []string{"image", "env", "metadata", "guest", "restart", "stop_config", "auto_destroy"}

// UnmarshalJSON reads the typed fields and keeps the others in Extra.
func (c *MachineConfig) UnmarshalJSON(b []byte) error {
	var k configKnown
	if err := json.Unmarshal(b, &k); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for _, key := range configKeys {
		delete(all, key)
	}
	if len(all) == 0 {
		all = nil
	}
	*c = MachineConfig{Image: k.Image, Env: k.Env, Metadata: k.Metadata, Guest: k.Guest, Restart: k.Restart,
		StopConfig: k.StopConfig, AutoDestroy: k.AutoDestroy, Extra: all}
	return nil
}

// MarshalJSON writes the typed fields and Extra as one object; a typed field wins over an Extra key of its name.
func (c MachineConfig) MarshalJSON() ([]byte, error) {
	known, err := json.Marshal(configKnown{Image: c.Image, Env: c.Env, Metadata: c.Metadata, Guest: c.Guest,
		Restart: c.Restart, StopConfig: c.StopConfig, AutoDestroy: c.AutoDestroy})
	if err != nil {
		return nil, err
	}
	out := map[string]json.RawMessage{}
	if err := json.Unmarshal(known, &out); err != nil {
		return nil, err
	}
	for k, v := range c.Extra {
		if _, ok := out[k]; !ok && !slices.Contains(configKeys, k) {
			out[k] = v
		}
	}
	return json.Marshal(out)
}

// Clone returns a deep copy.
func (c MachineConfig) Clone() MachineConfig {
	c.Env = maps.Clone(c.Env)
	c.Metadata = maps.Clone(c.Metadata)
	c.Extra = maps.Clone(c.Extra)
	if c.Guest != nil {
		g := *c.Guest
		c.Guest = &g
	}
	if c.Restart != nil {
		r := *c.Restart
		c.Restart = &r
	}
	if c.StopConfig != nil {
		s := *c.StopConfig
		c.StopConfig = &s
	}
	return c
}

// CreateRequest is the body of a create call.
type CreateRequest struct {
	// Name is the machine's name; empty lets Fly generate one.
	Name string `json:"name,omitempty"`
	// Region is where the machine runs; empty means the region nearest to the API's caller.
	Region string `json:"region,omitempty"`
	// Config is the machine's config; Config.Image is required.
	Config MachineConfig `json:"config"`
	// SkipLaunch creates the machine stopped.
	SkipLaunch bool `json:"skip_launch,omitempty"`
	// LeaseTTL, in seconds, creates the machine leased; the nonce is in the answer's Nonce.
	LeaseTTL int `json:"lease_ttl,omitempty"`
}

// StartResult is the answer of a start call.
type StartResult struct {
	PreviousState string `json:"previous_state"`
	Migrated      bool   `json:"migrated"`
	NewHost       string `json:"new_host"`
}

// StopRequest is the optional body of a stop call.
type StopRequest struct {
	// Signal is the signal the machine is stopped with, such as "SIGTERM". Empty means the machine's
	// stop_config (fly.toml's kill_signal), else SIGINT.
	Signal string
	// Timeout is how long the machine gets before it is killed. Zero means the machine's stop_config (fly.toml's
	// kill_timeout), else 5s.
	Timeout time.Duration
}

// WaitRequest says what a wait call waits for.
type WaitRequest struct {
	// State is the state to wait for: started, stopped, suspended or destroyed. Empty means started.
	State string
	// Timeout bounds the wait. Fly waits at most MaxWaitTimeout per call, so a longer wait is several calls.
	// Zero means MaxWaitTimeout.
	Timeout time.Duration
	// InstanceID is the version the wait is about: Fly's documentation asks for it when waiting for stopped.
	// Empty sends none.
	InstanceID string
}

// MaxWaitTimeout is the longest one wait call may wait; Fly's default and maximum.
const MaxWaitTimeout = 60 * time.Second

// Lease is a lease on a machine: while it holds, calls that change the machine must carry its Nonce (see
// WithLeaseNonce).
type Lease struct {
	Nonce       string
	ExpiresAt   time.Time
	Owner       string
	Description string
	Version     string
}

// leaseJSON is a lease on the wire: {"status": "success", "data": {...}}, expires_at in Unix seconds.
type leaseJSON struct {
	Status string `json:"status"`
	Data   struct {
		Nonce       string `json:"nonce"`
		ExpiresAt   int64  `json:"expires_at"`
		Owner       string `json:"owner"`
		Description string `json:"description"`
		Version     string `json:"version"`
	} `json:"data"`
}

func (l leaseJSON) lease() *Lease {
	return &Lease{Nonce: l.Data.Nonce, ExpiresAt: time.Unix(l.Data.ExpiresAt, 0), Owner: l.Data.Owner,
		Description: l.Data.Description, Version: l.Data.Version}
}
