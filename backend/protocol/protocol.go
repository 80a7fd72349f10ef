// Package protocol defines the frames of Spaceport's wire protocol: Replicache
// 15 pushes, pulls and pokes carried over one WebSocket per client
// (docs/protocol.md). It decodes client frames strictly, so that a bad frame
// is named and refused before it reaches a space, and encodes server frames.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxSafeInteger is JavaScript's Number.MAX_SAFE_INTEGER: ids and cookies
// beyond it cannot round-trip through a browser.
const maxSafeInteger = 1<<53 - 1

// Version is the protocol version the backend announces in `welcome`.
const Version = 1

// CloseCode is a WebSocket close code with the meaning docs/protocol.md §5
// gives it.
type CloseCode int

// Close codes (docs/protocol.md §5). Codes below 4000 are RFC 6455's.
const (
	CloseNormal       CloseCode = 1000 // normal
	CloseGoingAway    CloseCode = 1001 // server going away (deploy, scale-down, unloading): reconnect with backoff
	CloseTooBig       CloseCode = 1009 // frame larger than the server's limit: do not resend it
	CloseInternal     CloseCode = 1011 // internal error: reconnect with backoff
	CloseProtocol     CloseCode = 4000 // protocol error / bad request: reconnect only after a reload
	CloseUnauthorized CloseCode = 4001 // token missing, invalid or expired: get a new token
	CloseForbidden    CloseCode = 4003 // no access to this space: stop
	CloseMoved        CloseCode = 4004 // this machine does not own the space: reconnect at once through the router
	CloseTooSlow      CloseCode = 4008 // send queue bound passed: reconnect with backoff
	CloseRateLimited  CloseCode = 4029 // rate limited: reconnect after the delay in the reason
)

// MaxReasonLen is the longest close reason we send; RFC 6455 allows 123 bytes
// and the protocol promises under 120.
const MaxReasonLen = 119

// Error codes carried by `error` frames.
const (
	ErrCodeStorage             = "storage_unavailable"   // retryable: the batch could not be committed
	ErrCodeClientGroupMismatch = "client_group_mismatch" // a clientID already belongs to another group
	ErrCodeForbidden           = "forbidden"             // the caller may not use that client group
	ErrCodeOverloaded          = "overloaded"            // retryable: the space is shedding load
)

// ProtocolError is a malformed frame: the connection is closed with Code and
// Reason, and nothing else happens.
type ProtocolError struct {
	Code   CloseCode
	Reason string
}

func (e *ProtocolError) Error() string { return fmt.Sprintf("close %d: %s", e.Code, e.Reason) }

func protoErr(format string, args ...any) *ProtocolError {
	return &ProtocolError{Code: CloseProtocol, Reason: TruncateReason(fmt.Sprintf(format, args...))}
}

// TruncateReason cuts a close reason to MaxReasonLen bytes at a character
// boundary: a reason that is not valid UTF-8 makes browsers fail the
// connection (1006) instead of reporting our code.
func TruncateReason(r string) string {
	if len(r) <= MaxReasonLen {
		return r
	}
	r = r[:MaxReasonLen]
	for len(r) > 0 && !utf8.ValidString(r) {
		r = r[:len(r)-1]
	}
	return r
}

// MaxIDLen bounds client group IDs, client IDs, request IDs and mutator
// names. Replicache's are far shorter; the bound keeps them storable and
// indexable (Postgres refuses index entries over ~8 KB, and one bad row would
// fail a whole group commit).
const MaxIDLen = 256

// checkID refuses IDs that are empty, too long, or hold a NUL (which Postgres
// text cannot store).
func checkID(what, id string) *ProtocolError {
	switch {
	case id == "":
		return protoErr("missing field: %s", what)
	case len(id) > MaxIDLen:
		return protoErr("%s longer than %d bytes", what, MaxIDLen)
	case strings.IndexByte(id, 0) >= 0:
		return protoErr("%s holds a NUL character", what)
	}
	return nil
}

// Frame types.
const (
	TypeHello   = "hello"
	TypePush    = "push"
	TypePull    = "pull"
	TypePing    = "ping"
	TypeWelcome = "welcome"
	TypePoke    = "poke"
	TypePushed  = "pushed"
	TypePulled  = "pulled"
	TypeError   = "error"
	TypePong    = "pong"
)

// Cookie is a Replicache cookie as the client sent it. Spaceport's own cookies
// are JSON integers (the space version); anything else a client holds (null,
// or a cookie it cannot have got from us) is not Numeric and gets a full
// resync. Raw is kept so a poke can echo the client's cookie exactly as its
// baseCookie.
type Cookie struct {
	Raw     json.RawMessage
	Version int64
	Numeric bool
}

// NullCookie is the cookie of a client that has never pulled.
var NullCookie = Cookie{Raw: json.RawMessage("null")}

// VersionCookie is the cookie for space version v.
func VersionCookie(v int64) Cookie {
	return Cookie{Raw: json.RawMessage(fmt.Sprint(v)), Version: v, Numeric: true}
}

func parseCookie(raw json.RawMessage) Cookie {
	c := Cookie{Raw: raw}
	// Our cookies are plain JSON integers; anything else (a string, an
	// object, a fraction) was not made by us and gets a full resync.
	if v, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64); err == nil && v >= 0 && v <= maxSafeInteger {
		c.Version, c.Numeric = v, true
	}
	return c
}

// Hello opens a session on a space.
type Hello struct {
	ClientGroupID string
	ClientID      string
	Cookie        Cookie
	SchemaVersion string
}

// Mutation is a Replicache MutationV1.
type Mutation struct {
	ID        int64           `json:"id"`
	ClientID  string          `json:"clientID"`
	Name      string          `json:"name"`
	Args      json.RawMessage `json:"args"`
	Timestamp float64         `json:"timestamp"`
}

// PushRequest is a Replicache PushRequestV1. A request with another
// PushVersion carries only that version: the rest of it is not read.
type PushRequest struct {
	PushVersion   int
	SchemaVersion string
	ProfileID     string
	ClientGroupID string
	Mutations     []Mutation
}

// PullRequest is a Replicache PullRequestV1 (or just the version of another).
type PullRequest struct {
	PullVersion   int
	SchemaVersion string
	ProfileID     string
	ClientGroupID string
	Cookie        Cookie
}

// Push is a `push` frame.
type Push struct {
	ID   string
	Body PushRequest
}

// Pull is a `pull` frame.
type Pull struct {
	ID   string
	Body PullRequest
}

// ClientFrame is one decoded client frame: Type says which field is set
// (none for ping).
type ClientFrame struct {
	Type  string
	Hello *Hello
	Push  *Push
	Pull  *Pull
}

type rawFrame struct {
	Type          *string         `json:"type"`
	ID            *string         `json:"id"`
	Body          json.RawMessage `json:"body"`
	ClientGroupID *string         `json:"clientGroupID"`
	ClientID      *string         `json:"clientID"`
	Cookie        json.RawMessage `json:"cookie"`
	SchemaVersion *string         `json:"schemaVersion"`
}

type rawPush struct {
	PushVersion   *int           `json:"pushVersion"`
	SchemaVersion *string        `json:"schemaVersion"`
	ProfileID     *string        `json:"profileID"`
	ClientGroupID *string        `json:"clientGroupID"`
	Mutations     *[]rawMutation `json:"mutations"`
}

type rawMutation struct {
	ID        *float64        `json:"id"`
	ClientID  *string         `json:"clientID"`
	Name      *string         `json:"name"`
	Args      json.RawMessage `json:"args"`
	Timestamp *float64        `json:"timestamp"`
}

type rawPull struct {
	PullVersion   *int            `json:"pullVersion"`
	SchemaVersion *string         `json:"schemaVersion"`
	ProfileID     *string         `json:"profileID"`
	ClientGroupID *string         `json:"clientGroupID"`
	Cookie        json.RawMessage `json:"cookie"`
}

// ErrNotObject is the cause of a frame that is not a JSON object.
var ErrNotObject = errors.New("frame is not a JSON object")

// DecodeClientFrame decodes and validates one client frame. A malformed frame
// returns a *ProtocolError naming the problem.
func DecodeClientFrame(data []byte) (ClientFrame, error) {
	if !isObject(data) {
		return ClientFrame{}, protoErr("invalid frame: not a JSON object")
	}
	var rf rawFrame
	if err := json.Unmarshal(data, &rf); err != nil {
		return ClientFrame{}, protoErr("invalid JSON: %s", shortJSONError(err))
	}
	if rf.Type == nil {
		return ClientFrame{}, protoErr("missing field: type")
	}
	switch t := *rf.Type; t {
	case TypePing:
		return ClientFrame{Type: t}, nil
	case TypeHello:
		h := &Hello{}
		if rf.ClientGroupID == nil {
			return ClientFrame{}, protoErr("hello: missing field: clientGroupID")
		}
		if e := checkID("clientGroupID", *rf.ClientGroupID); e != nil {
			return ClientFrame{}, protoErr("hello: %s", e.Reason)
		}
		if rf.ClientID == nil {
			return ClientFrame{}, protoErr("hello: missing field: clientID")
		}
		if e := checkID("clientID", *rf.ClientID); e != nil {
			return ClientFrame{}, protoErr("hello: %s", e.Reason)
		}
		switch {
		case rf.Cookie == nil:
			return ClientFrame{}, protoErr("hello: missing field: cookie")
		case rf.SchemaVersion == nil:
			return ClientFrame{}, protoErr("hello: missing field: schemaVersion")
		}
		h.ClientGroupID, h.ClientID, h.SchemaVersion = *rf.ClientGroupID, *rf.ClientID, *rf.SchemaVersion
		h.Cookie = parseCookie(rf.Cookie)
		return ClientFrame{Type: t, Hello: h}, nil
	case TypePush:
		if rf.ID == nil {
			return ClientFrame{}, protoErr("push: missing field: id")
		}
		if len(*rf.ID) > MaxIDLen {
			return ClientFrame{}, protoErr("push: id longer than %d bytes", MaxIDLen)
		}
		body, err := decodePush(rf.Body)
		if err != nil {
			return ClientFrame{}, err
		}
		return ClientFrame{Type: t, Push: &Push{ID: *rf.ID, Body: body}}, nil
	case TypePull:
		if rf.ID == nil {
			return ClientFrame{}, protoErr("pull: missing field: id")
		}
		if len(*rf.ID) > MaxIDLen {
			return ClientFrame{}, protoErr("pull: id longer than %d bytes", MaxIDLen)
		}
		body, err := decodePull(rf.Body)
		if err != nil {
			return ClientFrame{}, err
		}
		return ClientFrame{Type: t, Pull: &Pull{ID: *rf.ID, Body: body}}, nil
	default:
		return ClientFrame{}, protoErr("unknown frame type %+.40q", t)
	}
}

func decodePush(body json.RawMessage) (PushRequest, error) {
	if body == nil || !isObject(body) {
		return PushRequest{}, protoErr("push: missing field: body")
	}
	var rp rawPush
	if err := json.Unmarshal(body, &rp); err != nil {
		return PushRequest{}, protoErr("push: invalid body: %s", shortJSONError(err))
	}
	if rp.PushVersion == nil {
		return PushRequest{}, protoErr("push: missing field: body.pushVersion")
	}
	p := PushRequest{PushVersion: *rp.PushVersion}
	if p.PushVersion != 1 {
		// Legacy (v0) and unknown versions have other shapes; the answer is
		// VersionNotSupported, not a protocol error.
		return p, nil
	}
	if rp.ClientGroupID == nil {
		return PushRequest{}, protoErr("push: missing field: body.clientGroupID")
	}
	if e := checkID("body.clientGroupID", *rp.ClientGroupID); e != nil {
		return PushRequest{}, protoErr("push: %s", e.Reason)
	}
	switch {
	case rp.Mutations == nil:
		return PushRequest{}, protoErr("push: missing field: body.mutations")
	case rp.SchemaVersion == nil:
		return PushRequest{}, protoErr("push: missing field: body.schemaVersion")
	}
	p.ClientGroupID, p.SchemaVersion = *rp.ClientGroupID, *rp.SchemaVersion
	if rp.ProfileID != nil {
		p.ProfileID = *rp.ProfileID
	}
	p.Mutations = make([]Mutation, len(*rp.Mutations))
	for i, rm := range *rp.Mutations {
		switch {
		case rm.ID == nil:
			return PushRequest{}, protoErr("push: mutation %d: missing field: id", i)
		case rm.ClientID == nil:
			return PushRequest{}, protoErr("push: mutation %d: missing field: clientID", i)
		case rm.Name == nil:
			return PushRequest{}, protoErr("push: mutation %d: missing field: name", i)
		}
		if e := checkID("clientID", *rm.ClientID); e != nil {
			return PushRequest{}, protoErr("push: mutation %d: %s", i, e.Reason)
		}
		if e := checkID("name", *rm.Name); e != nil {
			return PushRequest{}, protoErr("push: mutation %d: %s", i, e.Reason)
		}
		id := int64(*rm.ID)
		if float64(id) != *rm.ID || id < 1 || id > maxSafeInteger {
			return PushRequest{}, protoErr("push: mutation %d: id must be a positive integer", i)
		}
		m := Mutation{ID: id, ClientID: *rm.ClientID, Name: *rm.Name, Args: rm.Args}
		if m.Args == nil {
			// JSON.stringify drops an undefined args; the mutator sees null.
			m.Args = json.RawMessage("null")
		}
		if rm.Timestamp != nil {
			m.Timestamp = *rm.Timestamp
		}
		p.Mutations[i] = m
	}
	return p, nil
}

func decodePull(body json.RawMessage) (PullRequest, error) {
	if body == nil || !isObject(body) {
		return PullRequest{}, protoErr("pull: missing field: body")
	}
	var rp rawPull
	if err := json.Unmarshal(body, &rp); err != nil {
		return PullRequest{}, protoErr("pull: invalid body: %s", shortJSONError(err))
	}
	if rp.PullVersion == nil {
		return PullRequest{}, protoErr("pull: missing field: body.pullVersion")
	}
	p := PullRequest{PullVersion: *rp.PullVersion}
	if p.PullVersion != 1 {
		return p, nil
	}
	if rp.ClientGroupID == nil {
		return PullRequest{}, protoErr("pull: missing field: body.clientGroupID")
	}
	if e := checkID("body.clientGroupID", *rp.ClientGroupID); e != nil {
		return PullRequest{}, protoErr("pull: %s", e.Reason)
	}
	switch {
	case rp.Cookie == nil:
		return PullRequest{}, protoErr("pull: missing field: body.cookie")
	case rp.SchemaVersion == nil:
		return PullRequest{}, protoErr("pull: missing field: body.schemaVersion")
	}
	p.ClientGroupID, p.SchemaVersion = *rp.ClientGroupID, *rp.SchemaVersion
	if rp.ProfileID != nil {
		p.ProfileID = *rp.ProfileID
	}
	p.Cookie = parseCookie(rp.Cookie)
	return p, nil
}

func isObject(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return true
		default:
			return false
		}
	}
	return false
}

// shortJSONError keeps the decoder's message but not the whole input.
func shortJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %s must be %s", te.Field, jsonKind(te.Type.Kind().String()))
		}
		return "wrong type"
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at offset %d", se.Offset)
	}
	return "malformed"
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "int", "int64", "float64":
		return "a number"
	case "slice":
		return "an array"
	case "struct", "map":
		return "an object"
	case "bool":
		return "a boolean"
	}
	return "of another type"
}
