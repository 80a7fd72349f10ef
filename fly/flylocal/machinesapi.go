package flylocal

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits and defaults of the Machines API, as Fly documents them.
const (
	// MaxWaitTimeout is the longest a wait call waits before answering 408: Fly's default and maximum.
	MaxWaitTimeout = 60 * time.Second
	// DefaultLeaseTTL is the lease TTL when a lease request names none.
	DefaultLeaseTTL = 30 * time.Second
	// maxAPIBody bounds a request body of the Machines API.
	maxAPIBody = 1 << 20
)

// apiStateFileName is the file in Config.StateDir that keeps what the Machines API knows of each machine
// (names, config, metadata) and the machines it created, so that they survive restarts of flylocal as Fly's do.
const apiStateFileName = "api-machines.json"

// LeaseNonceHeader carries a lease's nonce on calls that change a leased machine.
const LeaseNonceHeader = "fly-machine-lease-nonce"

// MachinesAPI serves the part of Fly's Machines REST API (https://fly.io/docs/machines/api/) that Spaceport's
// tools use, for flylocal's machines, under /v1/apps/{app}/machines:
//
//	GET    /v1/apps/{app}/machines                     list; ?metadata.KEY=VALUE and ?region= filter
//	POST   /v1/apps/{app}/machines                     create: a new machine running the app's configured command,
//	                                                   with config.env added to its environment; started unless
//	                                                   skip_launch
//	GET    /v1/apps/{app}/machines/{id}                get
//	DELETE /v1/apps/{app}/machines/{id}                delete a stopped machine (?force=true or ?kill=true stops it
//	                                                   first)
//	POST   /v1/apps/{app}/machines/{id}/start          start (returns at once; wait for started)
//	POST   /v1/apps/{app}/machines/{id}/stop           stop (returns at once; wait for stopped)
//	GET    /v1/apps/{app}/machines/{id}/wait           ?state=started|stopped|destroyed&timeout=SECONDS; 408 on timeout
//	GET    /v1/apps/{app}/machines/{id}/metadata       metadata
//	POST   /v1/apps/{app}/machines/{id}/metadata/{key} set {"value": "..."}; 204
//	DELETE /v1/apps/{app}/machines/{id}/metadata/{key} delete; 204
//	POST, GET, DELETE /v1/apps/{app}/machines/{id}/lease   acquire or refresh, read, release a lease
//
// Answers have Fly's shapes: machines as Fly's Machine object (id, name, state, region "local", instance_id,
// private_ip, config, created_at, updated_at), errors as {"error": "..."} with Fly's status codes (400, 401, 404,
// 408, 409 for a lease held by someone else or a missing nonce, 412 for a machine in the wrong state, 422 for a
// request flylocal cannot carry out). While a lease is held, calls that change the machine need its nonce in the
// fly-machine-lease-nonce header.
//
// What differs from Fly: config.image is recorded but not run (every machine of an app runs the app's command);
// a stop always sends SIGTERM and kills after the app's kill_timeout, whatever signal and timeout the request
// names; there is no update, suspend, cordon, exec or events endpoint, no rate limit and no app-level API. A
// configured machine deleted through the API comes back when flylocal starts again, because its config asks for
// it; machines created through the API are kept in the state directory and started again with flylocal.
type MachinesAPI struct {
	cfg    Config
	sup    *Supervisor
	logger *slog.Logger
	path   string // the state file
	mux    *http.ServeMux

	mu      sync.Mutex
	faults  []Fault               // injected by InjectFault, consumed in order
	records map[string]*apiRecord // by machine ID: every machine of sup
	leases  map[string]*apiLease  // by machine ID
	ports   []int                 // claimed for machines created through the API; released by release
}

// apiRecord is what the API knows of one machine beyond the supervisor's view, as kept in the state file.
type apiRecord struct {
	ID         string                     `json:"id"`
	App        string                     `json:"app"`
	Name       string                     `json:"name"`
	Created    bool                       `json:"created"` // made through the API, not by the config
	Port       int                        `json:"port"`
	InstanceID string                     `json:"instance_id"`
	Config     map[string]json.RawMessage `json:"config"`
	CreatedAt  time.Time                  `json:"created_at"`
	UpdatedAt  time.Time                  `json:"updated_at"`
}

type apiLease struct {
	Nonce       string `json:"nonce"`
	ExpiresAt   int64  `json:"expires_at"`
	Owner       string `json:"owner"`
	Description string `json:"description"`
	Version     string `json:"version"`
}

type apiStateFile struct {
	Machines []*apiRecord `json:"machines"`
}

// newMachinesAPI builds the API over the machines of sup, reading the state file: the machines it created in
// earlier runs are added to sup again (stopped), and configured machines get back their names and metadata.
func newMachinesAPI(cfg Config, sup *Supervisor, logger *slog.Logger) (*MachinesAPI, error) {
	a := &MachinesAPI{
		cfg: cfg, sup: sup, logger: logger,
		path:    filepath.Join(cfg.StateDir, apiStateFileName),
		records: make(map[string]*apiRecord),
		leases:  make(map[string]*apiLease),
	}
	var st apiStateFile
	data, err := os.ReadFile(a.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read machines API state: %w", err)
	default:
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("read machines API state %s: %w", a.path, err)
		}
	}
	saved := make(map[string]*apiRecord, len(st.Machines))
	for _, r := range st.Machines {
		saved[r.ID] = r
	}
	now := time.Now().UTC()
	for _, m := range sup.Machines("") {
		r := saved[m.ID]
		if r == nil || r.App != m.App {
			r = &apiRecord{ID: m.ID, App: m.App, Name: m.App + "-" + m.ID[:6], CreatedAt: now, UpdatedAt: now,
				Config: map[string]json.RawMessage{}}
			r.setImage("flylocal/" + m.App)
			r.setMetadata(map[string]string{"fly_platform_version": "v2", "fly_process_group": "app"})
		}
		r.Created, r.Port = false, m.Port
		if r.InstanceID == "" {
			r.InstanceID = crand.Text()
		}
		a.records[m.ID] = r
	}
	for _, r := range st.Machines {
		if !r.Created || a.records[r.ID] != nil {
			continue
		}
		if err := a.restore(r); err != nil {
			a.release()
			return nil, err
		}
	}
	if err := a.save(); err != nil {
		a.release()
		return nil, err
	}
	a.routes()
	return a, nil
}

// restore adds a machine created in an earlier run back to the supervisor, on its old port if it is free.
func (a *MachinesAPI) restore(r *apiRecord) error {
	app, ok := a.cfg.app(r.App)
	if !ok || len(app.Command) == 0 {
		a.logger.Warn("machines API: dropping a machine whose app is no longer configured to run", "app", r.App,
			"machine", r.ID)
		return nil
	}
	if !claimPort(r.Port) {
		p, err := freePort(map[int]bool{})
		if err != nil {
			return err
		}
		r.Port = p
	}
	a.ports = append(a.ports, r.Port)
	if err := a.sup.Add(a.machineConfig(app, r)); err != nil {
		return err
	}
	a.records[r.ID] = r
	return nil
}

// machineConfig is the supervisor's config of a machine the API created.
func (a *MachinesAPI) machineConfig(app AppConfig, r *apiRecord) MachineConfig {
	return MachineConfig{
		ID:          r.ID,
		App:         r.App,
		Port:        r.Port,
		Command:     app.Command,
		Env:         slices.Concat(envList(a.cfg.Env), envList(app.Env), envList(r.env())),
		Autostart:   *app.Autostart,
		KillTimeout: time.Duration(app.KillTimeout),
	}
}

// save writes the state file. a.mu must be held, or a must not be shared yet.
func (a *MachinesAPI) save() error {
	st := apiStateFile{Machines: slices.Collect(maps.Values(a.records))}
	slices.SortFunc(st.Machines, func(x, y *apiRecord) int { return strings.Compare(x.ID, y.ID) })
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("write machines API state: %w", err)
	}
	tmp := a.path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write machines API state: %w", err)
	}
	if err := os.Rename(tmp, a.path); err != nil {
		return fmt.Errorf("write machines API state: %w", err)
	}
	return nil
}

// release gives up the ports of the machines the API created. Call it once the supervisor has stopped them.
func (a *MachinesAPI) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	releasePorts(a.ports)
	a.ports = nil
}

func (a *MachinesAPI) routes() {
	mux := http.NewServeMux()
	const m = "/v1/apps/{app}/machines"
	mux.HandleFunc("GET "+m, a.faulty("list", a.handleList))
	mux.HandleFunc("POST "+m, a.faulty("create", a.handleCreate))
	mux.HandleFunc("GET "+m+"/{id}", a.faulty("get", a.handleGet))
	mux.HandleFunc("DELETE "+m+"/{id}", a.faulty("delete", a.handleDelete))
	mux.HandleFunc("POST "+m+"/{id}/start", a.faulty("start", a.handleStart))
	mux.HandleFunc("POST "+m+"/{id}/stop", a.faulty("stop", a.handleStop))
	mux.HandleFunc("GET "+m+"/{id}/wait", a.faulty("wait", a.handleWait))
	mux.HandleFunc("GET "+m+"/{id}/metadata", a.faulty("metadata", a.handleGetMetadata))
	mux.HandleFunc("POST "+m+"/{id}/metadata/{key}", a.faulty("metadata-set", a.handleSetMetadata))
	mux.HandleFunc("DELETE "+m+"/{id}/metadata/{key}", a.faulty("metadata-delete", a.handleDeleteMetadata))
	mux.HandleFunc("POST "+m+"/{id}/lease", a.faulty("lease", a.handleAcquireLease))
	mux.HandleFunc("GET "+m+"/{id}/lease", a.faulty("lease-get", a.handleGetLease))
	mux.HandleFunc("DELETE "+m+"/{id}/lease", a.faulty("lease-release", a.handleReleaseLease))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, fmt.Sprintf("flylocal's Machines API has no %s %s", r.Method, r.URL.Path))
	})
	a.mux = mux
}

// ServeHTTP serves the API, checking the token if Config.APIToken is set.
func (a *MachinesAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.cfg.APIToken != "" && !tokenMatches(r.Header.Get("Authorization"), a.cfg.APIToken) {
		apiError(w, http.StatusUnauthorized, "unauthorized: send the API token as \"Authorization: Bearer <token>\"")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxAPIBody)
	a.mux.ServeHTTP(w, r)
}

// tokenMatches reports whether an Authorization header carries token, with either scheme Fly accepts.
func tokenMatches(header, token string) bool {
	for _, scheme := range []string{"Bearer ", "FlyV1 "} {
		if v, ok := strings.CutPrefix(header, scheme); ok {
			v = strings.TrimPrefix(v, "FlyV1 ") // flyctl's deploy tokens carry their scheme
			return v == strings.TrimPrefix(token, "FlyV1 ")
		}
	}
	return false
}

// machineJSON is a machine in the shape of Fly's Machine object.
type machineJSON struct {
	ID         string                     `json:"id"`
	Name       string                     `json:"name"`
	State      State                      `json:"state"`
	Region     string                     `json:"region"`
	InstanceID string                     `json:"instance_id"`
	PrivateIP  string                     `json:"private_ip"`
	Config     map[string]json.RawMessage `json:"config"`
	ImageRef   imageRefJSON               `json:"image_ref"`
	HostStatus string                     `json:"host_status"`
	CreatedAt  string                     `json:"created_at"`
	UpdatedAt  string                     `json:"updated_at"`
	Events     []struct{}                 `json:"events"`
}

type imageRefJSON struct {
	Registry   string `json:"registry"`
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
}

// machine returns the record and snapshot of machine id of app, or answers 404 itself.
func (a *MachinesAPI) machine(w http.ResponseWriter, r *http.Request) (*apiRecord, Machine, bool) {
	app, id := r.PathValue("app"), r.PathValue("id")
	if !a.knownApp(w, app) {
		return nil, Machine{}, false
	}
	m, err := a.sup.Machine(id)
	a.mu.Lock()
	rec := a.records[id]
	a.mu.Unlock()
	if err != nil || m.App != app || rec == nil {
		apiError(w, http.StatusNotFound, fmt.Sprintf("machine %s not found in app %s", id, app))
		return nil, Machine{}, false
	}
	return rec, m, true
}

func (a *MachinesAPI) knownApp(w http.ResponseWriter, app string) bool {
	if _, ok := a.cfg.app(app); !ok {
		apiError(w, http.StatusNotFound, fmt.Sprintf("app %s not found", app))
		return false
	}
	return true
}

// toJSON renders a machine. a.mu must not be held.
func (a *MachinesAPI) toJSON(rec *apiRecord, m Machine) machineJSON {
	a.mu.Lock()
	defer a.mu.Unlock()
	image := rec.image()
	repo, tag, _ := strings.Cut(image, ":")
	return machineJSON{
		ID: m.ID, Name: rec.Name, State: m.State, Region: Region, InstanceID: rec.InstanceID,
		PrivateIP: PrivateIP, Config: maps.Clone(rec.Config),
		ImageRef:   imageRefJSON{Registry: "flylocal", Repository: repo, Tag: tag},
		HostStatus: "ok", Events: []struct{}{},
		CreatedAt: rec.CreatedAt.Format(time.RFC3339), UpdatedAt: rec.UpdatedAt.Format(time.RFC3339),
	}
}

func (a *MachinesAPI) handleList(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if !a.knownApp(w, app) {
		return
	}
	q := r.URL.Query()
	want := map[string]string{}
	for k, vs := range q {
		if key, ok := strings.CutPrefix(k, "metadata."); ok && len(vs) > 0 {
			want[key] = vs[0]
		}
	}
	region := q.Get("region")
	out := []machineJSON{}
	for _, m := range a.sup.Machines(app) {
		a.mu.Lock()
		rec := a.records[m.ID]
		var md map[string]string
		if rec != nil {
			md = rec.metadata()
		}
		a.mu.Unlock()
		if rec == nil || (region != "" && region != Region) {
			continue
		}
		match := true
		for k, v := range want {
			if md[k] != v {
				match = false
			}
		}
		if match {
			out = append(out, a.toJSON(rec, m))
		}
	}
	writeAPIJSON(w, http.StatusOK, out)
}

func (a *MachinesAPI) handleGet(w http.ResponseWriter, r *http.Request) {
	if rec, m, ok := a.machine(w, r); ok {
		writeAPIJSON(w, http.StatusOK, a.toJSON(rec, m))
	}
}

// createRequest is the body of a create call.
type createRequest struct {
	Name       string                     `json:"name"`
	Region     string                     `json:"region"`
	Config     map[string]json.RawMessage `json:"config"`
	SkipLaunch bool                       `json:"skip_launch"`
}

func (a *MachinesAPI) handleCreate(w http.ResponseWriter, r *http.Request) {
	appName := r.PathValue("app")
	if !a.knownApp(w, appName) {
		return
	}
	app, _ := a.cfg.app(appName)
	var req createRequest
	if !readAPIJSON(w, r, &req) {
		return
	}
	rec := &apiRecord{App: appName, Name: req.Name, Created: true, InstanceID: crand.Text(), Config: req.Config}
	if rec.Config == nil {
		apiError(w, http.StatusBadRequest, "config is required")
		return
	}
	if rec.image() == "" {
		apiError(w, http.StatusBadRequest, "config.image is required")
		return
	}
	if req.Region != "" && req.Region != Region {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("region %q: every flylocal machine runs in region %q", req.Region, Region))
		return
	}
	if err := validateEnv(rec.env()); err != nil {
		apiError(w, http.StatusBadRequest, "config.env: "+err.Error())
		return
	}
	if len(app.Command) == 0 {
		apiError(w, http.StatusUnprocessableEntity, fmt.Sprintf("app %s has no command in flylocal's config to run", appName))
		return
	}

	if err := a.add(app, rec); err != nil {
		var ae *apiErr
		if errors.As(err, &ae) {
			writeAPIJSON(w, ae.code, ae.body)
			return
		}
		apiError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	a.logger.Info("machines API: machine created", "app", appName, "machine", rec.ID, "port", rec.Port)
	if !req.SkipLaunch {
		if _, err := a.sup.RequestStart(rec.ID); err != nil {
			a.logger.Warn("machines API: start new machine", "machine", rec.ID, "err", err)
		}
	}
	m, err := a.sup.Machine(rec.ID)
	if err != nil { // deleted at once by another call
		apiError(w, http.StatusNotFound, err.Error())
		return
	}
	writeAPIJSON(w, http.StatusOK, a.toJSON(rec, m))
}

// apiErr is an answer other than {"error": ...} alone.
type apiErr struct {
	code int
	body map[string]string
}

func (e *apiErr) Error() string { return e.body["error"] }

// add gives rec an ID, a name if it has none, and a port, and adds it to the supervisor, stopped.
func (a *MachinesAPI) add(app AppConfig, rec *apiRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	taken := make(map[string]bool, len(a.records))
	for id, other := range a.records {
		taken[id] = true
		if rec.Name != "" && other.App == rec.App && other.Name == rec.Name {
			return &apiErr{code: http.StatusUnprocessableEntity, body: map[string]string{
				"error": fmt.Sprintf("a machine named %s already exists in app %s", rec.Name, rec.App), "status": "name_taken"}}
		}
	}
	rec.ID = newMachineID(taken)
	if rec.Name == "" {
		rec.Name = rec.App + "-" + rec.ID[:6]
	}
	port, err := freePort(map[int]bool{})
	if err != nil {
		return err
	}
	rec.Port = port
	rec.CreatedAt = time.Now().UTC()
	rec.UpdatedAt = rec.CreatedAt
	if err := a.sup.Add(a.machineConfig(app, rec)); err != nil {
		releasePorts([]int{port})
		return err
	}
	a.ports = append(a.ports, port)
	a.records[rec.ID] = rec
	if err := a.save(); err != nil {
		a.logger.Error("machines API: save state", "err", err)
	}
	return nil
}

func (a *MachinesAPI) handleStart(w http.ResponseWriter, r *http.Request) {
	_, m, ok := a.machine(w, r)
	if !ok || !a.checkLease(w, r, m.ID) {
		return
	}
	prev, err := a.sup.RequestStart(m.ID)
	if err != nil {
		apiError(w, http.StatusPreconditionFailed, fmt.Sprintf("unable to start machine from state %s: %v", prev, err))
		return
	}
	a.logger.Info("machines API: start", "machine", m.ID, "previous_state", prev)
	writeAPIJSON(w, http.StatusOK, map[string]any{"previous_state": prev, "migrated": false, "new_host": ""})
}

// stopRequest is the optional body of a stop call. flylocal validates it and always stops with SIGTERM, then
// SIGKILL after the app's kill_timeout.
type stopRequest struct {
	Signal  string `json:"signal"`
	Timeout any    `json:"timeout"`
}

func (a *MachinesAPI) handleStop(w http.ResponseWriter, r *http.Request) {
	_, m, ok := a.machine(w, r)
	if !ok || !a.checkLease(w, r, m.ID) {
		return
	}
	var req stopRequest
	if r.ContentLength != 0 && !readAPIJSON(w, r, &req) {
		return
	}
	if req.Signal != "" && !strings.HasPrefix(req.Signal, "SIG") {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("signal %q: want a name such as SIGTERM", req.Signal))
		return
	}
	prev, err := a.sup.RequestStop(m.ID)
	if err != nil {
		apiError(w, http.StatusNotFound, err.Error())
		return
	}
	a.logger.Info("machines API: stop", "machine", m.ID, "previous_state", prev)
	writeAPIJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (a *MachinesAPI) handleDelete(w http.ResponseWriter, r *http.Request) {
	rec, m, ok := a.machine(w, r)
	if !ok || !a.checkLease(w, r, m.ID) {
		return
	}
	q := r.URL.Query()
	force := q.Get("force") == "true" || q.Get("kill") == "true"
	if m.State != StateStopped {
		if !force {
			apiError(w, http.StatusPreconditionFailed, fmt.Sprintf(
				"unable to destroy machine %s: it is %s, not stopped (stop it first, or pass force=true)", m.ID, m.State))
			return
		}
		if _, err := a.sup.RequestStop(m.ID); err != nil {
			apiError(w, http.StatusNotFound, err.Error())
			return
		}
		if err := a.sup.WaitState(r.Context(), m.ID, StateStopped); err != nil {
			apiError(w, http.StatusRequestTimeout, err.Error())
			return
		}
	}
	if err := a.sup.Remove(m.ID); err != nil {
		apiError(w, http.StatusPreconditionFailed, err.Error())
		return
	}
	a.mu.Lock()
	delete(a.records, m.ID)
	delete(a.leases, m.ID)
	if rec.Created {
		a.ports = slices.DeleteFunc(a.ports, func(p int) bool { return p == rec.Port })
		releasePorts([]int{rec.Port})
	}
	if err := a.save(); err != nil {
		a.logger.Error("machines API: save state", "err", err)
	}
	a.mu.Unlock()
	a.logger.Info("machines API: machine destroyed", "app", m.App, "machine", m.ID)
	writeAPIJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (a *MachinesAPI) handleWait(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	want := State(q.Get("state"))
	if want == "" {
		want = StateStarted
	}
	if want != StateStarted && want != StateStopped && want != StateDestroyed {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("state %q: flylocal waits for started, stopped or destroyed", want))
		return
	}
	timeout := MaxWaitTimeout
	if v := q.Get("timeout"); v != "" {
		secs, err := strconv.Atoi(v)
		if err != nil || secs < 1 {
			apiError(w, http.StatusBadRequest, fmt.Sprintf("timeout %q: want a whole number of seconds", v))
			return
		}
		timeout = min(time.Duration(secs)*time.Second, MaxWaitTimeout)
	}
	id := r.PathValue("id")
	if want == StateDestroyed {
		// A destroyed machine is gone: only the app needs to exist.
		if !a.knownApp(w, r.PathValue("app")) {
			return
		}
	} else if _, _, ok := a.machine(w, r); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	err := a.sup.WaitState(ctx, id, want)
	switch {
	case err == nil:
		writeAPIJSON(w, http.StatusOK, map[string]any{"ok": true, "state": want})
	case errors.Is(err, ErrMachineNotFound):
		apiError(w, http.StatusNotFound, err.Error())
	case r.Context().Err() != nil:
		// The client went away.
	default:
		st, _ := a.sup.State(id)
		apiError(w, http.StatusRequestTimeout, fmt.Sprintf("deadline_exceeded: machine %s is %s after %s waiting for %s",
			id, st, timeout, want))
	}
}

func (a *MachinesAPI) handleGetMetadata(w http.ResponseWriter, r *http.Request) {
	rec, _, ok := a.machine(w, r)
	if !ok {
		return
	}
	a.mu.Lock()
	md := rec.metadata()
	a.mu.Unlock()
	if md == nil {
		md = map[string]string{}
	}
	writeAPIJSON(w, http.StatusOK, md)
}

func (a *MachinesAPI) handleSetMetadata(w http.ResponseWriter, r *http.Request) {
	rec, m, ok := a.machine(w, r)
	if !ok || !a.checkLease(w, r, m.ID) {
		return
	}
	var req struct {
		Value *string `json:"value"`
	}
	if !readAPIJSON(w, r, &req) {
		return
	}
	if req.Value == nil {
		apiError(w, http.StatusBadRequest, `the body must be {"value": "..."}`)
		return
	}
	a.updateMetadata(rec, func(md map[string]string) { md[r.PathValue("key")] = *req.Value })
	w.WriteHeader(http.StatusNoContent)
}

func (a *MachinesAPI) handleDeleteMetadata(w http.ResponseWriter, r *http.Request) {
	rec, m, ok := a.machine(w, r)
	if !ok || !a.checkLease(w, r, m.ID) {
		return
	}
	a.updateMetadata(rec, func(md map[string]string) { delete(md, r.PathValue("key")) })
	w.WriteHeader(http.StatusNoContent)
}

func (a *MachinesAPI) updateMetadata(rec *apiRecord, change func(map[string]string)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	md := rec.metadata()
	if md == nil {
		md = map[string]string{}
	}
	change(md)
	rec.setMetadata(md)
	rec.UpdatedAt = time.Now().UTC()
	if err := a.save(); err != nil {
		a.logger.Error("machines API: save state", "err", err)
	}
}

// checkLease answers 409 itself if machine id is leased and the request does not carry the lease's nonce.
func (a *MachinesAPI) checkLease(w http.ResponseWriter, r *http.Request, id string) bool {
	a.mu.Lock()
	l := a.liveLease(id)
	a.mu.Unlock()
	if l == nil || r.Header.Get(LeaseNonceHeader) == l.Nonce {
		return true
	}
	apiError(w, http.StatusConflict, fmt.Sprintf("machine %s lease currently held by %s, expires at %s", id, l.Owner,
		time.Unix(l.ExpiresAt, 0).UTC().Format(time.RFC3339)))
	return false
}

// liveLease returns machine id's unexpired lease, or nil. a.mu must be held.
func (a *MachinesAPI) liveLease(id string) *apiLease {
	l := a.leases[id]
	if l == nil || time.Now().Unix() >= l.ExpiresAt {
		delete(a.leases, id)
		return nil
	}
	return l
}

func (a *MachinesAPI) handleAcquireLease(w http.ResponseWriter, r *http.Request) {
	rec, m, ok := a.machine(w, r)
	if !ok {
		return
	}
	var req struct {
		TTL         int    `json:"ttl"`
		Description string `json:"description"`
	}
	if r.ContentLength != 0 && !readAPIJSON(w, r, &req) {
		return
	}
	ttl := time.Duration(req.TTL) * time.Second
	if v := r.URL.Query().Get("ttl"); v != "" {
		secs, err := strconv.Atoi(v)
		if err != nil {
			apiError(w, http.StatusBadRequest, fmt.Sprintf("ttl %q: want a whole number of seconds", v))
			return
		}
		ttl = time.Duration(secs) * time.Second
	}
	if ttl < 0 {
		apiError(w, http.StatusBadRequest, "ttl must not be negative")
		return
	}
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	status := http.StatusCreated
	l := a.liveLease(m.ID)
	switch {
	case l != nil && r.Header.Get(LeaseNonceHeader) != l.Nonce:
		apiError(w, http.StatusConflict, fmt.Sprintf("machine %s lease currently held by %s", m.ID, l.Owner))
		return
	case l != nil: // a refresh by the holder
		status = http.StatusOK
	default:
		nonce := make([]byte, 6)
		_, _ = crand.Read(nonce)
		l = &apiLease{Nonce: fmt.Sprintf("%x", nonce), Owner: "flylocal", Description: req.Description,
			Version: rec.InstanceID}
		a.leases[m.ID] = l
	}
	l.ExpiresAt = time.Now().Add(ttl).Unix()
	writeAPIJSON(w, status, map[string]any{"status": "success", "data": *l})
}

func (a *MachinesAPI) handleGetLease(w http.ResponseWriter, r *http.Request) {
	_, m, ok := a.machine(w, r)
	if !ok {
		return
	}
	a.mu.Lock()
	l := a.liveLease(m.ID)
	var out apiLease
	if l != nil {
		out = *l
	}
	a.mu.Unlock()
	if l == nil {
		apiError(w, http.StatusNotFound, fmt.Sprintf("machine %s has no lease", m.ID))
		return
	}
	writeAPIJSON(w, http.StatusOK, map[string]any{"status": "success", "data": out})
}

func (a *MachinesAPI) handleReleaseLease(w http.ResponseWriter, r *http.Request) {
	_, m, ok := a.machine(w, r)
	if !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.liveLease(m.ID)
	if l == nil {
		apiError(w, http.StatusNotFound, fmt.Sprintf("machine %s has no lease", m.ID))
		return
	}
	if r.Header.Get(LeaseNonceHeader) != l.Nonce {
		apiError(w, http.StatusConflict, fmt.Sprintf("machine %s lease is held under another nonce", m.ID))
		return
	}
	delete(a.leases, m.ID)
	writeAPIJSON(w, http.StatusOK, map[string]any{"status": "success", "data": map[string]bool{"ok": true}})
}

// Accessors of the parts of a record's config that flylocal reads.

func (r *apiRecord) image() string {
	var s string
	_ = json.Unmarshal(r.Config["image"], &s)
	return s
}

func (r *apiRecord) setImage(image string) { r.Config["image"], _ = json.Marshal(image) }

func (r *apiRecord) env() map[string]string {
	var env map[string]string
	_ = json.Unmarshal(r.Config["env"], &env)
	return env
}

func (r *apiRecord) metadata() map[string]string {
	var md map[string]string
	_ = json.Unmarshal(r.Config["metadata"], &md)
	return md
}

func (r *apiRecord) setMetadata(md map[string]string) { r.Config["metadata"], _ = json.Marshal(md) }

// readAPIJSON decodes a request body, answering 400 itself on failure.
func readAPIJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		apiError(w, http.StatusBadRequest, "read body: "+err.Error())
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		apiError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

func apiError(w http.ResponseWriter, status int, msg string) {
	writeAPIJSON(w, status, map[string]string{"error": msg})
}

func writeAPIJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// apiListener is the Machines API's server within a Server.
type apiListener struct {
	ln       net.Listener
	http     *http.Server
	serveErr chan error
}

// openAPI listens on Config.APIListen and serves the Machines API; nothing if it is empty.
func (s *Server) openAPI() error {
	if s.Config.APIListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.Config.APIListen)
	if err != nil {
		return fmt.Errorf("listen for the machines API: %w", err)
	}
	l := &apiListener{ln: ln, serveErr: make(chan error, 1), http: &http.Server{
		Handler:           s.API,
		ReadHeaderTimeout: readHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}}
	go func() { l.serveErr <- l.http.Serve(ln) }()
	s.api = l
	// Where Fly's machines find the API (_api.internal:4280), flylocal's find it here.
	s.Supervisor.SetExtraEnv([]string{"FLY_API_HOSTNAME=" + s.APIURL()})
	s.logger.Info("machines API listening", "url", s.APIURL())
	return nil
}

// closeAPI stops the Machines API, ending waits in progress.
func (s *Server) closeAPI(ctx context.Context) error {
	if s.api == nil {
		return nil
	}
	_ = s.api.http.Close() // a wait may last a minute: end it rather than wait for it
	err := s.api.http.Shutdown(ctx)
	if serr := <-s.api.serveErr; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, fmt.Errorf("serve machines API: %w", serr))
	}
	return err
}

// APIURL is the base URL of the Machines API ("http://127.0.0.1:4280"; paths start with /v1), or "" when
// Config.APIListen is empty. Valid after Open.
func (s *Server) APIURL() string {
	if s.api == nil {
		return ""
	}
	addr := s.api.ln.Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
}
