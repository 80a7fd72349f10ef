package mutator_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/mutator"
)

func TestRegistry_LookupFindsOnlyWhatWasRegistered(t *testing.T) {
	r := mutator.NewRegistry()
	called := ""
	r.Register("a", func(mutator.Tx, json.RawMessage) error { called = "a"; return nil })
	r.Register("b", func(mutator.Tx, json.RawMessage) error { called = "b"; return nil })
	fn, ok := r.Lookup("b")
	if !ok {
		t.Fatal("registered mutator b not found")
	}
	if err := fn(nil, nil); err != nil || called != "b" {
		t.Fatalf("Lookup(b) ran %q (%v), want b", called, err)
	}
	for _, name := range []string{"", "c", "A"} {
		if _, ok := r.Lookup(name); ok {
			t.Errorf("Lookup(%q) found a mutator that was never registered", name)
		}
	}
}

func TestRegistry_RegisteringANameTwicePanics(t *testing.T) {
	r := mutator.NewRegistry()
	r.Register("a", func(mutator.Tx, json.RawMessage) error { return nil })
	defer func() {
		if recover() == nil {
			t.Fatal("a second Register of the same name did not panic")
		}
	}()
	r.Register("a", func(mutator.Tx, json.RawMessage) error { return nil })
}

func TestDecodeArgs(t *testing.T) {
	type args struct {
		Key   string `json:"key"`
		Delta int    `json:"delta"`
	}
	got, err := mutator.DecodeArgs[args](json.RawMessage(`{"key":"n","delta":3}`))
	if err != nil || got != (args{Key: "n", Delta: 3}) {
		t.Fatalf("DecodeArgs = %+v, %v", got, err)
	}
	for _, bad := range []string{``, `nope`, `{"key":1}`, `{"delta":"x"}`, `[1]`} {
		if _, err := mutator.DecodeArgs[args](json.RawMessage(bad)); !errors.Is(err, mutator.ErrInvalidArgs) {
			t.Errorf("DecodeArgs(%s): %v, want ErrInvalidArgs", bad, err)
		}
	}
}
