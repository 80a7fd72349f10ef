package protocol_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// FuzzDecodeClientFrame: no input may panic the decoder, and every input is
// either a valid frame or a protocol error with a short reason.
func FuzzDecodeClientFrame(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(examples, "client-*.json"))
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":1e300,"clientID":"c","name":"x"}]}}`))
	f.Add([]byte(`{"type":"hello","clientGroupID":"g","clientID":"c","schemaVersion":"","cookie":{"order":"x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := protocol.DecodeClientFrame(data)
		if err != nil {
			var pe *protocol.ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("non-protocol error %T: %v", err, err)
			}
			if pe.Code != protocol.CloseProtocol || len(pe.Reason) >= 120 {
				t.Fatalf("bad close: %d %q", pe.Code, pe.Reason)
			}
			return
		}
		switch fr.Type {
		case protocol.TypePing:
		case protocol.TypeHello:
			if fr.Hello == nil || fr.Hello.ClientID == "" || fr.Hello.ClientGroupID == "" {
				t.Fatalf("hello without ids: %+v", fr.Hello)
			}
		case protocol.TypePush:
			if fr.Push == nil {
				t.Fatal("push frame without push")
			}
			for _, m := range fr.Push.Body.Mutations {
				if m.ID < 1 || m.ClientID == "" || m.Name == "" || m.Args == nil {
					t.Fatalf("invalid mutation accepted: %+v", m)
				}
			}
		case protocol.TypePull:
			if fr.Pull == nil {
				t.Fatal("pull frame without pull")
			}
		default:
			t.Fatalf("unknown type accepted: %q", fr.Type)
		}
	})
}
