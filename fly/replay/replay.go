// Package replay formats and parses the headers of Fly's dynamic request routing: the fly-replay response header
// with which a machine asks Fly's proxy to redeliver a request elsewhere, the fly-replay-src request header the
// proxy adds to the redelivered request, and the fly-replay-failed request header it adds when a replay falls back
// to its sender. The grammar is written once here and used by the router (which answers fly-replay) and by flylocal
// (which honours it).
//
// # Grammar
//
// All three headers are lists of key=value pairs separated by ';' (Fly's documentation at
// https://fly.io/docs/networking/dynamic-request-routing/):
//
//	app=spaceport-backend;instance=90801679a10038;state=abc
//	region="iad,ord";elsewhere=true
//
// A value is either bare (it runs up to the next ';', surrounding spaces and tabs removed) or double-quoted. Inside
// quotes ';', ',', '=' and spaces are literal, and a backslash escapes the next character, so `\"` is a quote and
// `\\` a backslash (the quoted-string of RFC 9110 §5.6.4). Quotes are required when a value contains a comma
// (a list of regions) or anything else outside the token characters of RFC 9110 §5.6.2.
//
// The formatters write a value bare when every byte is a token character and quoted otherwise, escaping '"' and
// '\'. Parsing is tolerant: spaces and tabs around keys, '=', values and ';' are ignored, empty segments (";;", a
// trailing ';') are skipped, keys are matched without regard to case, and an empty value means the same as an absent
// field. Parsing is strict about structure: a pair without '=', an unterminated quote, text after a closing quote,
// a quote inside a bare value, a control character or a known key given twice is ErrMalformed. Unknown keys are
// ignored, so a header from a newer Fly with fields this package does not know still parses; the fields it knows
// are read as usual.
//
// Fly's documentation once showed `app=x,state=y` (comma-separated); ',' is not a pair separator here, so that
// value parses as app "x,state=y", which Validate rejects.
//
// # Round trip
//
// For every value v that Parse accepts, Parse(Parse(v).String()) returns the same Replay, and likewise for Source
// and Failed. For every Replay that Validate accepts, Parse(r.String()) returns r. The state field round-trips
// for any string that can appear in an HTTP header at all: any bytes except the control characters (0x00-0x1F other
// than tab, and 0x7F), which HTTP forbids in field values; Validate rejects a state containing one. An empty state
// is the same as no state.
//
// Fly's proxy, not this package, copies state from fly-replay into fly-replay-src, and its documentation does not
// say how it treats quoted values. A state made of token characters (for example base64url without padding, or hex)
// reaches the target unchanged through Fly as well as through flylocal; prefer such states.
package replay

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header names. Go's net/http canonicalises header names, so these are the canonical forms; HTTP header names are
// case-insensitive and Fly documents them in lower case.
const (
	// Header is the response header with which a machine asks the proxy to replay the request elsewhere.
	Header = "Fly-Replay"
	// SourceHeader is the request header the proxy adds to a replayed request, naming its sender.
	SourceHeader = "Fly-Replay-Src"
	// FailedHeader is the request header the proxy adds when a replay falls back to its sender.
	FailedHeader = "Fly-Replay-Failed"
	// PreferredInstanceUnavailableHeader is the request header the proxy adds when it could not honour a
	// prefer_instance and chose another machine; its value is the preferred machine ID.
	PreferredInstanceUnavailableHeader = "Fly-Preferred-Instance-Unavailable"
)

// Fallback values.
const (
	// FallbackForceSelf sends a failed replay back to the exact machine that issued it, else the proxy errors.
	FallbackForceSelf = "force_self"
	// FallbackPreferSelf sends a failed replay back to the issuing machine if possible, else to any machine of the
	// issuing app.
	FallbackPreferSelf = "prefer_self"
)

// Reasons in a fly-replay-failed header.
const (
	ReasonTimeout          = "timeout"
	ReasonRetriesExhausted = "retries_exhausted"
	ReasonNoCandidate      = "no_candidate"
)

// Regions with a meaning beyond one place.
const (
	// RegionAny in a region list means any machine, wherever it runs (`region="sjc,any"`: prefer sjc).
	RegionAny = "any"
)

// MachineIDLength is the length of a Fly Machine ID: 14 lowercase hexadecimal characters, e.g. 90801679a10038.
const MachineIDLength = 14

// MaxAppNameLength bounds an app name; Fly app names are DNS labels.
const MaxAppNameLength = 63

// MaxRegionLength bounds a region code or alias (Fly's are 3 letters, aliases up to 4; flylocal uses "local").
const MaxRegionLength = 16

var (
	// ErrMalformed means a header value does not follow the grammar.
	ErrMalformed = errors.New("malformed header value")
	// ErrEmpty means a fly-replay names no target: none of app, instance, prefer_instance, region, elsewhere.
	ErrEmpty = errors.New("replay names no target")
	// ErrInvalid means a field's value is outside its domain or fields contradict each other.
	ErrInvalid = errors.New("invalid replay")
)

// Replay is a fly-replay response header: where the proxy should redeliver the request. The zero value of each
// field means the field is absent.
type Replay struct {
	// App is the app to replay to; empty means the app of the machine that answered.
	App string
	// Instance is the Machine ID to replay to, forced: if it cannot be reached the replay fails.
	Instance string
	// PreferInstance is a Machine ID to replay to if possible; otherwise any machine matching the other fields,
	// which then receives the PreferredInstanceUnavailableHeader.
	PreferInstance string
	// Regions lists regions in order of preference (RegionAny: anywhere).
	Regions []string
	// State is an opaque string the proxy copies into the fly-replay-src header of the replayed request.
	State string
	// Elsewhere excludes the answering machine from the next load-balancing round.
	Elsewhere bool
	// Timeout is how long the proxy should try to reach the target (best effort); zero means the proxy's default.
	Timeout time.Duration
	// Fallback is FallbackForceSelf, FallbackPreferSelf or empty (a failed replay is a proxy error).
	Fallback string
}

// String returns the header value: fields in the order app, instance, prefer_instance, region, elsewhere, timeout,
// fallback, state; absent fields left out; values quoted where needed.
func (r Replay) String() string {
	var w writer
	w.field("app", r.App)
	w.field("instance", r.Instance)
	w.field("prefer_instance", r.PreferInstance)
	w.field("region", strings.Join(r.Regions, ","))
	if r.Elsewhere {
		w.field("elsewhere", "true")
	}
	if r.Timeout != 0 {
		w.field("timeout", r.Timeout.String())
	}
	w.field("fallback", r.Fallback)
	w.field("state", r.State)
	return w.String()
}

// Parse parses a fly-replay header value. It checks the grammar and the types of elsewhere (a boolean) and
// timeout (a Go duration such as 10s or 800ms); it does not check that the replay makes sense: call Validate.
// Errors wrap ErrMalformed.
func Parse(v string) (Replay, error) {
	var r Replay
	err := parse(v, func(key, val string) error {
		switch key {
		case "app":
			r.App = val
		case "instance":
			r.Instance = val
		case "prefer_instance":
			r.PreferInstance = val
		case "region":
			regions, err := parseList(val)
			if err != nil {
				return err
			}
			r.Regions = regions
		case "state":
			r.State = val
		case "elsewhere":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return fmt.Errorf("%w: elsewhere is not a boolean", ErrMalformed)
			}
			r.Elsewhere = b
		case "timeout":
			d, err := time.ParseDuration(val)
			if err != nil {
				return fmt.Errorf("%w: timeout is not a duration", ErrMalformed)
			}
			r.Timeout = d
		case "fallback":
			r.Fallback = val
		default:
			return errUnknownKey
		}
		return nil
	})
	if err != nil {
		return Replay{}, fmt.Errorf("parse %s: %w", Header, err)
	}
	return r, nil
}

// Validate reports whether the proxy can act on r: r names a target; app is a Fly app name; instance and
// prefer_instance are Machine IDs (MachineIDLength lowercase hex characters) and not both set; every region is a
// region code or alias; timeout is not negative; fallback is empty or a Fallback value; state holds no control
// characters. Errors wrap ErrEmpty or ErrInvalid. Fly's documentation uses placeholders such as instance=00bb33ff,
// which parse but do not validate: no real Machine has such an ID.
func (r Replay) Validate() error {
	if r.App == "" && r.Instance == "" && r.PreferInstance == "" && len(r.Regions) == 0 && !r.Elsewhere {
		return fmt.Errorf("%s: %w", Header, ErrEmpty)
	}
	if r.App != "" && !ValidAppName(r.App) {
		return fmt.Errorf("%s: %w: app %q is not a Fly app name", Header, ErrInvalid, r.App)
	}
	if r.Instance != "" && !ValidMachineID(r.Instance) {
		return fmt.Errorf("%s: %w: instance %q is not a machine ID", Header, ErrInvalid, r.Instance)
	}
	if r.PreferInstance != "" && !ValidMachineID(r.PreferInstance) {
		return fmt.Errorf("%s: %w: prefer_instance %q is not a machine ID", Header, ErrInvalid, r.PreferInstance)
	}
	if r.Instance != "" && r.PreferInstance != "" {
		return fmt.Errorf("%s: %w: instance and prefer_instance are exclusive", Header, ErrInvalid)
	}
	for _, region := range r.Regions {
		if !validRegion(region) {
			return fmt.Errorf("%s: %w: region %q is not a region code", Header, ErrInvalid, region)
		}
	}
	if r.Timeout < 0 {
		return fmt.Errorf("%s: %w: negative timeout %s", Header, ErrInvalid, r.Timeout)
	}
	switch r.Fallback {
	case "", FallbackForceSelf, FallbackPreferSelf:
	default:
		return fmt.Errorf("%s: %w: fallback %q is not %s or %s", Header, ErrInvalid, r.Fallback,
			FallbackForceSelf, FallbackPreferSelf)
	}
	if hasCTL(r.State) {
		// The state may carry a secret (Fly suggests a pre-shared key), so it is not quoted in the error.
		return fmt.Errorf("%s: %w: state contains a control character", Header, ErrInvalid)
	}
	return nil
}

// ValidMachineID reports whether id has the form of a Fly Machine ID: MachineIDLength lowercase hex characters.
func ValidMachineID(id string) bool {
	if len(id) != MachineIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidAppName reports whether name has the form of a Fly app name: 1 to MaxAppNameLength lowercase letters,
// digits and dashes, not starting or ending with a dash.
func ValidAppName(name string) bool {
	if name == "" || len(name) > MaxAppNameLength || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func validRegion(region string) bool {
	if region == "" || len(region) > MaxRegionLength {
		return false
	}
	for i := 0; i < len(region); i++ {
		if c := region[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// parseList splits a comma-separated list; elements are trimmed and none may be empty.
func parseList(v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	list := strings.Split(v, ",")
	for i, s := range list {
		s = strings.Trim(s, " \t")
		if s == "" {
			return nil, fmt.Errorf("%w: empty element in region list", ErrMalformed)
		}
		list[i] = s
	}
	return list, nil
}
