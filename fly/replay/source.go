package replay

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Source is a fly-replay-src request header: the proxy tells the target which machine replayed the request to it.
// The zero value of each field means the field is absent.
type Source struct {
	// Instance is the Machine ID that answered with fly-replay.
	Instance string
	// Region is the region the request was replayed from.
	Region string
	// Time is when the proxy replayed the request; the header carries microseconds since the Unix epoch.
	Time time.Time
	// State is the state field of the fly-replay.
	State string
}

// String returns the header value: instance, region, t, state; absent fields left out.
func (s Source) String() string {
	var w writer
	w.field("instance", s.Instance)
	w.field("region", s.Region)
	if !s.Time.IsZero() {
		w.field("t", strconv.FormatInt(s.Time.UnixMicro(), 10))
	}
	w.field("state", s.State)
	return w.String()
}

// ParseSource parses a fly-replay-src header value. Time is in UTC. Errors wrap ErrMalformed.
func ParseSource(v string) (Source, error) {
	var s Source
	err := parse(v, func(key, val string) error {
		switch key {
		case "instance":
			s.Instance = val
		case "region":
			s.Region = val
		case "t":
			us, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return fmt.Errorf("%w: t is not an integer (microseconds since the Unix epoch)", ErrMalformed)
			}
			s.Time = time.UnixMicro(us).UTC()
		case "state":
			s.State = val
		default:
			return errUnknownKey
		}
		return nil
	})
	if err != nil {
		return Source{}, fmt.Errorf("parse %s: %w", SourceHeader, err)
	}
	return s, nil
}

// Failed is a fly-replay-failed request header: the proxy could not reach a replay's target and delivered the
// request back to its sender (the replay's fallback). The zero value of each field means the field is absent.
type Failed struct {
	// Instance, App and Region describe the target that could not be reached.
	Instance, App, Region string
	// ReplaySource is the Machine ID that issued the replay.
	ReplaySource string
	// Reason is ReasonTimeout, ReasonRetriesExhausted or ReasonNoCandidate.
	Reason string
	// Elapsed is how long the proxy tried; the header carries whole milliseconds.
	Elapsed time.Duration
}

// String returns the header value: instance, app, region, replay_source, reason, elapsed_ms; absent fields left
// out. Elapsed is truncated to whole milliseconds.
func (f Failed) String() string {
	var w writer
	w.field("instance", f.Instance)
	w.field("app", f.App)
	w.field("region", f.Region)
	w.field("replay_source", f.ReplaySource)
	w.field("reason", f.Reason)
	if ms := f.Elapsed.Milliseconds(); ms != 0 {
		w.field("elapsed_ms", strconv.FormatInt(ms, 10))
	}
	return w.String()
}

// ParseFailed parses a fly-replay-failed header value. Errors wrap ErrMalformed.
func ParseFailed(v string) (Failed, error) {
	var f Failed
	err := parse(v, func(key, val string) error {
		switch key {
		case "instance":
			f.Instance = val
		case "app":
			f.App = val
		case "region":
			f.Region = val
		case "replay_source":
			f.ReplaySource = val
		case "reason":
			f.Reason = val
		case "elapsed_ms":
			ms, err := strconv.ParseInt(val, 10, 64)
			if err != nil || ms < 0 || ms > math.MaxInt64/int64(time.Millisecond) {
				return fmt.Errorf("%w: elapsed_ms is not a count of milliseconds", ErrMalformed)
			}
			f.Elapsed = time.Duration(ms) * time.Millisecond
		default:
			return errUnknownKey
		}
		return nil
	})
	if err != nil {
		return Failed{}, fmt.Errorf("parse %s: %w", FailedHeader, err)
	}
	return f, nil
}
