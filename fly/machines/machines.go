package machines

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// machinesPath is the path of an app's machines, or of one machine and a suffix.
func machinesPath(app string, idAndRest ...string) string {
	p := "/apps/" + pathEscape(app) + "/machines"
	for i, s := range idAndRest {
		if i == 0 {
			p += "/" + pathEscape(s)
		} else {
			p += s
		}
	}
	return p
}

// ListOptions filters List.
type ListOptions struct {
	// Metadata keeps the machines whose metadata has every key with the given value (?metadata.KEY=VALUE).
	Metadata map[string]string
	// Region keeps the machines of one region.
	Region string
	// IncludeDeleted lists destroyed machines too.
	IncludeDeleted bool
}

// List returns the machines of app.
func (c *Client) List(ctx context.Context, app string, opts ListOptions) ([]Machine, error) {
	q := url.Values{}
	for k, v := range opts.Metadata {
		q.Set("metadata."+k, v)
	}
	if opts.Region != "" {
		q.Set("region", opts.Region)
	}
	if opts.IncludeDeleted {
		q.Set("include_deleted", "true")
	}
	var out []Machine
	err := c.do(ctx, call{op: "list machines of app " + app, method: http.MethodGet, path: machinesPath(app),
		query: q, out: &out, limit: action("list"), key: app})
	return out, err
}

// Get returns machine id of app.
func (c *Client) Get(ctx context.Context, app, id string) (*Machine, error) {
	var m Machine
	err := c.do(ctx, call{op: opName("get", app, id), method: http.MethodGet, path: machinesPath(app, id),
		out: &m, limit: getClass, key: id})
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// Create creates a machine in app; Fly starts it unless req.SkipLaunch.
func (c *Client) Create(ctx context.Context, app string, req CreateRequest) (*Machine, error) {
	if req.Config.Image == "" {
		return nil, fmt.Errorf("create machine in app %s: config.image is required", app)
	}
	var m Machine
	err := c.do(ctx, call{op: "create machine in app " + app, method: http.MethodPost, path: machinesPath(app),
		body: req, out: &m, limit: action("create"), key: app})
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// Start starts a stopped machine. Fly answers at once; Wait for StateStarted.
func (c *Client) Start(ctx context.Context, app, id string) (*StartResult, error) {
	var out StartResult
	err := c.do(ctx, call{op: opName("start", app, id), method: http.MethodPost, path: machinesPath(app, id, "/start"),
		out: &out, limit: action("start"), key: id})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Stop stops a machine: req.Signal, then a kill after req.Timeout. Fly answers at once; Wait for StateStopped.
func (c *Client) Stop(ctx context.Context, app, id string, req StopRequest) error {
	body := map[string]string{}
	if req.Signal != "" {
		body["signal"] = req.Signal
	}
	if req.Timeout > 0 {
		body["timeout"] = req.Timeout.String()
	}
	return c.do(ctx, call{op: opName("stop", app, id), method: http.MethodPost, path: machinesPath(app, id, "/stop"),
		body: body, limit: action("stop"), key: id})
}

// Wait waits until machine id is in req.State. It returns an error matching ErrWaitTimeout if req.Timeout
// passes first.
func (c *Client) Wait(ctx context.Context, app, id string, req WaitRequest) error {
	state := req.State
	if state == "" {
		state = StateStarted
	}
	total := req.Timeout
	if total <= 0 {
		total = MaxWaitTimeout
	}
	deadline := time.Now().Add(total)
	for {
		left := time.Until(deadline)
		secs := max(1, min(int((left+time.Second-1)/time.Second), int(MaxWaitTimeout/time.Second)))
		q := url.Values{"state": {state}, "timeout": {itoa(secs)}}
		if req.InstanceID != "" {
			q.Set("instance_id", req.InstanceID)
		}
		err := c.do(ctx, call{op: opName("wait for "+state+":", app, id), method: http.MethodGet,
			path: machinesPath(app, id, "/wait"), query: q, limit: action("wait"), key: id,
			timeout: time.Duration(secs)*time.Second + c.timeout})
		if err == nil || !errors.Is(err, ErrWaitTimeout) || time.Until(deadline) <= 0 {
			return err
		}
	}
}

// StopAndWait stops machine m (as read by Get or List) with req unless it is
// stopped already, and waits at most timeout until it is: Stop alone answers
// before the machine has stopped. The wait is for m's instance, so a machine
// started again meanwhile does not count as stopped. A machine that no longer
// exists gives an error matching ErrNotFound.
func (c *Client) StopAndWait(ctx context.Context, app string, m *Machine, req StopRequest, timeout time.Duration) error {
	if m.State != StateStopped {
		if err := c.Stop(ctx, app, m.ID, req); err != nil {
			return err
		}
	}
	return c.Wait(ctx, app, m.ID, WaitRequest{State: StateStopped, InstanceID: m.InstanceID, Timeout: timeout})
}

// Destroy destroys stopped machine id and waits at most timeout until it is
// gone. A machine that is gone already is not an error.
func (c *Client) Destroy(ctx context.Context, app, id string, timeout time.Duration) error {
	err := c.Delete(ctx, app, id, false)
	if err == nil {
		err = c.Wait(ctx, app, id, WaitRequest{State: StateDestroyed, Timeout: timeout})
	}
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Delete destroys machine id. A machine that is not stopped is refused (ErrPreconditionFailed) unless force,
// which stops it first.
func (c *Client) Delete(ctx context.Context, app, id string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, call{op: opName("delete", app, id), method: http.MethodDelete, path: machinesPath(app, id),
		query: q, limit: action("delete"), key: id})
}

// Metadata returns machine id's metadata.
func (c *Client) Metadata(ctx context.Context, app, id string) (map[string]string, error) {
	var out map[string]string
	err := c.do(ctx, call{op: opName("get metadata of", app, id), method: http.MethodGet,
		path: machinesPath(app, id, "/metadata"), out: &out, limit: action("metadata"), key: id})
	return out, err
}

// SetMetadata sets one metadata key of machine id. It does not restart the machine.
func (c *Client) SetMetadata(ctx context.Context, app, id, key, value string) error {
	return c.do(ctx, call{op: opName("set metadata "+key+" of", app, id), method: http.MethodPost,
		path: machinesPath(app, id, "/metadata/"+pathEscape(key)), body: map[string]string{"value": value},
		limit: action("metadata-set"), key: id})
}

// DeleteMetadata deletes one metadata key of machine id.
func (c *Client) DeleteMetadata(ctx context.Context, app, id, key string) error {
	return c.do(ctx, call{op: opName("delete metadata "+key+" of", app, id), method: http.MethodDelete,
		path: machinesPath(app, id, "/metadata/"+pathEscape(key)), limit: action("metadata-delete"), key: id})
}

// AcquireLease leases machine id for ttl (whole seconds). It fails with ErrConflict while someone else holds a
// lease.
func (c *Client) AcquireLease(ctx context.Context, app, id string, ttl time.Duration, description string) (*Lease, error) {
	var out leaseJSON
	secs := int(ttl / time.Second)
	err := c.do(ctx, call{op: opName("lease", app, id), method: http.MethodPost, path: machinesPath(app, id, "/lease"),
		body: map[string]any{"ttl": secs, "description": description}, out: &out, limit: action("lease"), key: id})
	if err != nil {
		return nil, err
	}
	return out.lease(), nil
}

// RefreshLease extends the lease with nonce for another ttl.
func (c *Client) RefreshLease(ctx context.Context, app, id, nonce string, ttl time.Duration) (*Lease, error) {
	var out leaseJSON
	err := c.do(ctx, call{op: opName("refresh lease of", app, id), method: http.MethodPost,
		path: machinesPath(app, id, "/lease"), query: url.Values{"ttl": {itoa(int(ttl / time.Second))}},
		header: http.Header{http.CanonicalHeaderKey(LeaseNonceHeader): {nonce}}, out: &out,
		limit: action("lease"), key: id})
	if err != nil {
		return nil, err
	}
	return out.lease(), nil
}

// GetLease returns machine id's lease; ErrNotFound if there is none.
func (c *Client) GetLease(ctx context.Context, app, id string) (*Lease, error) {
	var out leaseJSON
	err := c.do(ctx, call{op: opName("get lease of", app, id), method: http.MethodGet,
		path: machinesPath(app, id, "/lease"), out: &out, limit: action("lease-get"), key: id})
	if err != nil {
		return nil, err
	}
	return out.lease(), nil
}

// ReleaseLease releases the lease with nonce.
func (c *Client) ReleaseLease(ctx context.Context, app, id, nonce string) error {
	return c.do(ctx, call{op: opName("release lease of", app, id), method: http.MethodDelete,
		path: machinesPath(app, id, "/lease"), header: http.Header{http.CanonicalHeaderKey(LeaseNonceHeader): {nonce}},
		limit: action("lease-release"), key: id})
}

func opName(verb, app, id string) string { return verb + " machine " + id + " of app " + app }
