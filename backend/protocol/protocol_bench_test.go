package protocol_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// pushFrame is a `push` frame of n increments, as Replicache sends them.
func pushFrame(n int) []byte {
	var ms []string
	for i := range n {
		ms = append(ms, fmt.Sprintf(`{"id":%d,"clientID":"c-5f2a9c1e77d04b1a","name":"increment","args":{"key":"counter","delta":1},"timestamp":1732350000000.5}`, i+1))
	}
	return []byte(`{"type":"push","id":"c-5f2a9c1e77d04b1a-push-42","body":{"pushVersion":1,"schemaVersion":"1","profileID":"p7f3",` +
		`"clientGroupID":"g-0c8e3d","mutations":[` + strings.Join(ms, ",") + `]}}`)
}

// BenchmarkDecodeClientFrame is the reader's cost per frame: strict decoding
// and validation of what every connection sends.
func BenchmarkDecodeClientFrame(b *testing.B) {
	for _, bc := range []struct {
		name  string
		frame []byte
	}{
		{"hello", []byte(`{"type":"hello","clientGroupID":"g-0c8e3d","clientID":"c-5f2a9c1e77d04b1a","cookie":1234,"schemaVersion":"1"}`)},
		{"ping", []byte(`{"type":"ping"}`)},
		{"push-1", pushFrame(1)},
		{"push-10", pushFrame(10)},
		{"push-100", pushFrame(100)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.frame)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := protocol.DecodeClientFrame(bc.frame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppendPoke is the encoding of one poke frame around an already
// encoded patch: the part of a poke that is done once per connection.
func BenchmarkAppendPoke(b *testing.B) {
	for _, ops := range []int{1, 100} {
		var patch []byte
		for i := range ops {
			patch = protocol.PatchPut(patch, i == 0, fmt.Sprintf("todo/%06d", i), json.RawMessage(`{"id":"x","text":"buy milk","completed":false,"sort":3}`))
		}
		lmids := []protocol.LMIDChange{{ClientID: "c-5f2a9c1e77d04b1a", LMID: 4321}}
		base := json.RawMessage("1233")
		b.Run(fmt.Sprintf("ops=%d", ops), func(b *testing.B) {
			buf := make([]byte, 0, len(patch)+256)
			b.SetBytes(int64(len(protocol.AppendPoke(nil, base, 1234, lmids, patch))))
			b.ReportAllocs()
			for b.Loop() {
				buf = protocol.AppendPoke(buf[:0], base, 1234, lmids, patch)
			}
		})
	}
}

// BenchmarkPatchPut is the encoding of one changed entry into a patch.
func BenchmarkPatchPut(b *testing.B) {
	value := json.RawMessage(`{"id":"x","text":"buy milk","completed":false,"sort":3}`)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = protocol.PatchPut(buf[:0], false, "todo/01JD3X7Q8M2V", value)
	}
}

// BenchmarkEncodePushed is the acknowledgement of one push.
func BenchmarkEncodePushed(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = protocol.EncodePushed("c-5f2a9c1e77d04b1a-push-42", nil)
	}
}
