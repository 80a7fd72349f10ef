// Package mutatortest has the mutators tests use besides an app's own:
//
//   - putRaw {"key": k, "value": v} stores v at k as it is (any JSON, limits
//     checked by the transaction);
//   - del "k" deletes k;
//   - panic panics.
package mutatortest

import (
	"encoding/json"

	"github.com/spaceport-sync/spaceport/backend/mutator"
)

// Register adds the test mutators to reg.
func Register(reg *mutator.Registry) {
	reg.Register("putRaw", PutRaw)
	reg.Register("del", Del)
	reg.Register("panic", func(mutator.Tx, json.RawMessage) error { panic("boom") })
}

// PutRaw stores args.value at args.key.
func PutRaw(tx mutator.Tx, args json.RawMessage) error {
	a, err := mutator.DecodeArgs[struct {
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	}](args)
	if err != nil {
		return err
	}
	return tx.Put(a.Key, a.Value)
}

// Del deletes the key that args is.
func Del(tx mutator.Tx, args json.RawMessage) error {
	key, err := mutator.DecodeArgs[string](args)
	if err != nil {
		return err
	}
	tx.Del(key)
	return nil
}
