// Package mutator is the server side of Replicache's mutators: Go functions
// registered by name that the space's single writer runs, in arrival order,
// inside the batch's transaction. Their result is the truth; the client's
// optimistic result is never trusted or even sent.
//
// A mutator reads and writes through Tx. Every error it returns is permanent
// for that mutation: its writes are discarded, the failure is logged and
// counted, and the client's lastMutationID still advances so the client does
// not retry it forever (docs/protocol.md §4). Storage failures never surface
// here: reads come from the space's memory and the batch is committed after
// the mutators ran.
package mutator

import (
	"encoding/json"
	"errors"
	"fmt"
	"iter"
)

// Role is what a caller may do in a space.
type Role string

// Roles.
const (
	RoleEditor Role = "editor"
	RoleViewer Role = "viewer"
)

// Caller is who sent the mutation.
type Caller struct {
	UserID   string
	Role     Role
	ClientID string // the Replicache client (one tab) that sent the mutation
}

// Tx is the transaction a mutator runs in. Keys are UTF-8 strings ordered by
// bytes, as in Replicache; values are JSON.
type Tx interface {
	// Get returns the JSON value at key, or ok=false.
	Get(key string) (value json.RawMessage, ok bool)
	// Has reports whether key holds a value.
	Has(key string) bool
	// Put stores value at key. A json.RawMessage or []byte value must be
	// valid JSON and is stored as is; anything else is marshalled.
	Put(key string, value any) error
	// Del removes key; it reports whether the key held a value.
	Del(key string) bool
	// Scan yields the keys starting with prefix and their values, in key
	// order, including this transaction's own writes.
	Scan(prefix string) iter.Seq2[string, json.RawMessage]
	// Caller is who sent the mutation.
	Caller() Caller
}

// Func is a mutator: it applies args to tx.
type Func func(tx Tx, args json.RawMessage) error

// Errors a mutator or the transaction returns. All are permanent.
var (
	ErrInvalidArgs   = errors.New("invalid mutator arguments")
	ErrForbidden     = errors.New("not allowed for this caller")
	ErrUnknown       = errors.New("unknown mutator")
	ErrKeyTooLarge   = errors.New("key too large")
	ErrInvalidKey    = errors.New("key is not valid UTF-8 or holds a NUL")
	ErrValueTooLarge = errors.New("value too large")
	ErrInvalidJSON   = errors.New("value is not valid JSON")
)

// Registry maps mutator names to functions. Register everything before the
// server starts; lookups are then safe from many goroutines.
type Registry struct {
	funcs map[string]Func
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{funcs: make(map[string]Func)} }

// Register adds a mutator. Registering a name twice is a programming error.
func (r *Registry) Register(name string, fn Func) {
	if _, dup := r.funcs[name]; dup {
		panic(fmt.Sprintf("mutator %q registered twice", name))
	}
	r.funcs[name] = fn
}

// Lookup returns the mutator registered under name.
func (r *Registry) Lookup(name string) (Func, bool) {
	fn, ok := r.funcs[name]
	return fn, ok
}

// DecodeArgs unmarshals a mutator's args into T, wrapping failures in
// ErrInvalidArgs.
func DecodeArgs[T any](args json.RawMessage) (T, error) {
	var v T
	if err := json.Unmarshal(args, &v); err != nil {
		return v, fmt.Errorf("%w: %v", ErrInvalidArgs, err)
	}
	return v, nil
}
