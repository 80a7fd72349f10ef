package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/spaceport-sync/spaceport/backend/auth"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/protocol"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/fly/replay"
	"github.com/spaceport-sync/spaceport/router/dedicated"
)

const invalidSpaceIDMessage = "a space ID is 1 to 64 characters of [A-Za-z0-9_-]"

// handleReplay answers a WebSocket connection request with the machine that
// owns the space. It never upgrades: the edge replays the same request to
// that machine, which does (PROTOCOL.md §1).
func (s *Server) handleReplay(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "*")
	if !protocol.ValidSpaceID(id) {
		s.metrics.decisions.WithLabelValues(outcomeInvalidID).Inc()
		writeError(w, http.StatusBadRequest, "invalid_space_id", invalidSpaceIDMessage)
		return
	}
	if s.cfg.Auth != nil {
		// Before the lookup: a refused request costs no directory read.
		if _, err := s.cfg.Auth.Authorize(r.URL.Query().Get("token"), id); err != nil {
			if errors.Is(err, auth.ErrForbidden) {
				s.metrics.decisions.WithLabelValues(outcomeForbidden).Inc()
				writeError(w, http.StatusForbidden, "forbidden", "the token does not grant this space")
				return
			}
			s.metrics.decisions.WithLabelValues(outcomeUnauthorized).Inc()
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid token is required (token query parameter)")
			return
		}
	}
	sp, err := s.cache.Lookup(r.Context(), id)
	switch {
	case err == nil:
	case errors.Is(err, directory.ErrSpaceNotFound):
		s.metrics.decisions.WithLabelValues(outcomeNotFound).Inc()
		writeError(w, http.StatusNotFound, "space_not_found", "no space "+id)
		return
	case r.Context().Err() != nil:
		// The client left; nobody reads an answer.
		s.metrics.decisions.WithLabelValues(outcomeCanceled).Inc()
		return
	default:
		s.metrics.decisions.WithLabelValues(outcomeUnavailable).Inc()
		s.log.Warn("router: replay decision failed", "space", id, "err", err)
		s.unavailable(w, "directory_unavailable", "the space directory is unreachable; retry shortly")
		return
	}
	if sp.MovingTo != "" {
		// Its data is being copied to another cluster, and no backend
		// serves it until that ends: a replay would only be refused.
		s.metrics.decisions.WithLabelValues(outcomeMoving).Inc()
		s.unavailable(w, "space_moving", "the space is being moved to another storage cluster; retry shortly")
		return
	}
	s.metrics.decisions.WithLabelValues(outcomeReplayed).Inc()
	h := w.Header()
	h.Set(replay.Header, replay.Replay{App: sp.App, Instance: sp.Machine, State: s.cfg.ReplaySecret}.String())
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusTemporaryRedirect)
	_, _ = io.WriteString(w, "replay to "+sp.Machine+"\n")
	if s.log.Enabled(r.Context(), slog.LevelDebug) {
		s.log.Debug("router: replay", "space", id, "app", sp.App, "machine", sp.Machine)
	}
}

// spaceJSON is a space on the wire (PROTOCOL.md §1b).
type spaceJSON struct {
	ID        string    `json:"id"`
	App       string    `json:"app"`
	Machine   string    `json:"machine"`
	CreatedAt time.Time `json:"createdAt"`
	// Cluster is the Postgres cluster that holds the space's data;
	// MovingTo, while its data is being moved, where to.
	Cluster  string `json:"cluster"`
	MovingTo string `json:"movingTo,omitempty"`
}

func toSpaceJSON(sp directory.Space) spaceJSON {
	return spaceJSON{ID: sp.ID, App: sp.App, Machine: sp.Machine, CreatedAt: sp.CreatedAt, Cluster: sp.Cluster, MovingTo: sp.MovingTo}
}

func (s *Server) handleCreateSpace(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID string `json:"id"`
	}
	if !s.readJSON(w, r, &req, true) {
		return
	}
	if req.ID != "" && !protocol.ValidSpaceID(req.ID) {
		writeError(w, http.StatusBadRequest, "invalid_space_id", invalidSpaceIDMessage)
		return
	}
	sp, err := s.cfg.Placement.CreateSpace(r.Context(), req.ID)
	if errors.Is(err, dedicated.ErrMachineUnavailable) {
		s.log.Warn("router: no machine for a new space", "space", req.ID, "err", err)
		s.unavailable(w, "machine_unavailable", "no backend machine could be created for the space ("+
			machineFailure(err)+"); nothing was created, retry shortly")
		return
	}
	if err != nil {
		s.directoryError(w, r, "create space", err)
		return
	}
	// Drop a negative answer this router may hold at once; other routers
	// hear of the new space through the directory's NOTIFY.
	s.cache.Evict(sp.ID)
	s.log.Info("router: space created", "space", sp.ID, "app", sp.App, "machine", sp.Machine, "cluster", sp.Cluster)
	w.Header().Set("Location", "/api/spaces/"+sp.ID)
	writeJSON(w, http.StatusCreated, toSpaceJSON(sp))
}

func (s *Server) handleListSpaces(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after := q.Get("after")
	limit := directory.DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > directory.MaxListLimit {
			writeError(w, http.StatusBadRequest, "invalid_limit",
				"limit must be a whole number from 1 to "+strconv.Itoa(directory.MaxListLimit))
			return
		}
		limit = n
	}
	spaces, err := s.dir.ListSpaces(r.Context(), after, limit)
	if err != nil {
		s.directoryError(w, r, "list spaces", err)
		return
	}
	resp := struct {
		Spaces []spaceJSON `json:"spaces"`
		// Next, when present, is the "after" of the next page.
		Next string `json:"next,omitempty"`
	}{Spaces: make([]spaceJSON, 0, len(spaces))}
	for _, sp := range spaces {
		resp.Spaces = append(resp.Spaces, toSpaceJSON(sp))
	}
	if len(spaces) == limit {
		resp.Next = spaces[len(spaces)-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleGetSpace(w http.ResponseWriter, r *http.Request) {
	sp, err := s.dir.GetSpace(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.directoryError(w, r, "get space", err)
		return
	}
	writeJSON(w, http.StatusOK, toSpaceJSON(sp))
}

// handleMoveSpace is an admin operation (Config.AdminAuth).
func (s *Server) handleMoveSpace(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	var req struct {
		Machine string `json:"machine"`
	}
	if !s.readJSON(w, r, &req, false) {
		return
	}
	if req.Machine == "" {
		writeError(w, http.StatusBadRequest, "invalid_machine", `the body must name a machine: {"machine": "<machine id>"}`)
		return
	}
	sp, err := s.dir.MoveSpace(r.Context(), id, req.Machine)
	if err != nil {
		s.directoryError(w, r, "move space", err)
		return
	}
	s.cache.Evict(id)
	s.log.Info("router: space moved", "space", sp.ID, "app", sp.App, "machine", sp.Machine)
	writeJSON(w, http.StatusOK, toSpaceJSON(sp))
}

// machineFailure names why a machine could not be created, for the caller.
func machineFailure(err error) string {
	switch {
	case errors.Is(err, machines.ErrInsufficientCapacity):
		return "no capacity in the region"
	case errors.Is(err, machines.ErrRateLimited):
		return "the Machines API's rate limit"
	case errors.Is(err, machines.ErrWaitTimeout), errors.Is(err, context.DeadlineExceeded):
		return "the machine did not start in time"
	default:
		return "the Machines API failed"
	}
}

// handleDeleteSpace is an admin operation (Config.AdminAuth): it removes the
// space from the directory and, under dedicated placement, retires the
// machine made for it (Config.Placement). The space's data stays in Postgres.
func (s *Server) handleDeleteSpace(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	res, err := s.cfg.Placement.DeleteSpace(r.Context(), id)
	if res.Space.ID == "" {
		s.directoryError(w, r, "delete space", err)
		return
	}
	s.cache.Evict(id)
	if err != nil {
		// The space is gone; its machine is an orphan the reconciler destroys.
		s.log.Warn("router: space deleted, its machine not retired yet", "space", id, "machine", res.Space.Machine, "err", err)
	}
	s.log.Info("router: space deleted", "space", id, "machine", res.Space.Machine, "machine_retired", res.Retired)
	writeJSON(w, http.StatusOK, struct {
		spaceJSON
		// MachineRetired: the space's machine was dedicated to it and has
		// been destroyed.
		MachineRetired bool `json:"machineRetired"`
	}{toSpaceJSON(res.Space), res.Retired})
}

// machineJSON is a backend machine on the wire.
type machineJSON struct {
	ID            string    `json:"id"`
	App           string    `json:"app"`
	Region        string    `json:"region"`
	State         string    `json:"state"`
	Live          bool      `json:"live"`
	Spaces        int       `json:"spaces"`
	LastHeartbeat time.Time `json:"lastHeartbeat"`
	CreatedAt     time.Time `json:"createdAt"`
}

func (s *Server) handleListMachines(w http.ResponseWriter, r *http.Request) {
	ms, err := s.dir.ListMachines(r.Context())
	if err != nil {
		s.directoryError(w, r, "list machines", err)
		return
	}
	resp := struct {
		Machines []machineJSON `json:"machines"`
	}{Machines: make([]machineJSON, 0, len(ms))}
	for _, m := range ms {
		resp.Machines = append(resp.Machines, machineJSON{
			ID: m.ID, App: m.App, Region: m.Region, State: string(m.State), Live: m.Live,
			Spaces: m.Spaces, LastHeartbeat: m.LastHeartbeat, CreatedAt: m.CreatedAt,
		})
	}
	writeJSON(w, http.StatusOK, resp)
}

// directoryError answers a failed directory call: the client gets a code and
// a message, the log gets the cause.
func (s *Server) directoryError(w http.ResponseWriter, r *http.Request, op string, err error) {
	switch {
	case errors.Is(err, directory.ErrInvalidSpaceID):
		writeError(w, http.StatusBadRequest, "invalid_space_id", invalidSpaceIDMessage)
	case errors.Is(err, directory.ErrSpaceNotFound):
		writeError(w, http.StatusNotFound, "space_not_found", "no such space")
	case errors.Is(err, directory.ErrSpaceExists):
		writeError(w, http.StatusConflict, "space_exists", "a space with this ID already exists")
	case errors.Is(err, directory.ErrMachineNotFound):
		writeError(w, http.StatusUnprocessableEntity, "machine_not_found", "no such machine in the directory")
	case errors.Is(err, directory.ErrNoLiveMachine):
		s.log.Warn("router: no live backend machine", "op", op, "app", s.cfg.App)
		s.unavailable(w, "no_live_machine", "no live backend machine in app "+s.cfg.App+" to place the space on")
	case r.Context().Err() != nil:
		// The client left; nothing to answer.
	default:
		s.log.Error("router: directory call failed", "op", op, "err", err)
		s.unavailable(w, "directory_unavailable", "the space directory is unreachable; retry shortly")
	}
}

// unavailable answers 503 with Retry-After.
func (s *Server) unavailable(w http.ResponseWriter, code, message string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(s.cfg.RetryAfter.Seconds()))))
	writeError(w, http.StatusServiceUnavailable, code, message)
}

// readJSON decodes a bounded JSON body into v. An empty body is accepted
// when optional. It answers the request itself and returns false on error.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large",
			"the request body is larger than "+strconv.FormatInt(s.cfg.MaxBodyBytes, 10)+" bytes")
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_body", "the request body could not be read")
		return false
	case len(body) == 0 && optional:
		return true
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_json", "the request body is not the expected JSON object")
		return false
	}
	return true
}

// errorJSON is every error answer: {"error": "<code>", "message": "<text>"}.
type errorJSON struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, errorJSON{Error: code, Message: message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// DevTokenTTL is the lifetime of a token from the development endpoint.
const DevTokenTTL = time.Hour

// handleDevToken hands out a token to anyone: local development only. Body
// (optional) {"user", "spaces", "role"}; defaults: a random user, every
// space, editor.
func (s *Server) handleDevToken(w http.ResponseWriter, r *http.Request) {
	var in struct {
		User   string       `json:"user"`
		Spaces string       `json:"spaces"`
		Role   mutator.Role `json:"role"`
	}
	if !s.readJSON(w, r, &in, true) {
		return
	}
	if in.User == "" {
		in.User = "dev-" + directory.NewSpaceID()[:8]
	}
	if in.Spaces == "" {
		in.Spaces = "*"
	}
	if in.Role == "" {
		in.Role = mutator.RoleEditor
	}
	tok, err := s.cfg.Auth.Issue(auth.Grant{UserID: in.User, Spaces: in.Spaces, Role: in.Role, TTL: DevTokenTTL})
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_grant", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"token": tok, "user": in.User, "expiresAt": time.Now().Add(DevTokenTTL).UTC()})
}
