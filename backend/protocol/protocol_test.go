package protocol_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spaceport-sync/spaceport/backend/protocol"
)

const examples = "../../docs/protocol-examples"

// The example frames in docs/protocol-examples are what the TypeScript
// transport is tested against too: every client example must decode, every
// server example must be something our encoders produce the same way.
func TestExamples_ClientFramesDecode(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(examples, "client-*.json"))
	if len(files) == 0 {
		t.Fatal("no client examples found")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fr, err := protocol.DecodeClientFrame(data)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		want := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "client-"), ".json")
		if !strings.HasPrefix(want, fr.Type) {
			t.Errorf("%s decoded as %q", f, fr.Type)
		}
	}
}

func TestExamples_ServerFramesMatchEncoders(t *testing.T) {
	lmids := []protocol.LMIDChange{{ClientID: "c-1", LMID: 8}}
	todo := json.RawMessage(`{"id":"t1","text":"Buy milk","completed":false,"sort":1}`)
	patch := protocol.PatchPut(nil, true, "todo/t1", todo)
	patch = protocol.PatchDel(patch, false, "todo/t0")
	full := protocol.PatchClear(nil, true)
	full = protocol.PatchPut(full, false, "counter", json.RawMessage("41"))
	full = protocol.PatchPut(full, false, "todo/t1", todo)
	cases := map[string][]byte{
		"server-welcome.json":        protocol.EncodeWelcome("list-1", "3d8d9e1c2b7a40", "local"),
		"server-poke.json":           protocol.AppendPoke(nil, json.RawMessage("12"), 14, lmids, patch),
		"server-poke-full.json":      protocol.AppendPoke(nil, json.RawMessage("null"), 14, lmids, full),
		"server-pushed.json":         protocol.EncodePushed("c-1-s-3", nil),
		"server-pushed-version.json": protocol.EncodePushed("c-1-s-3", protocol.VersionNotSupported("schema")),
		"server-pushed-csnf.json":    protocol.EncodePushed("c-1-s-3", protocol.ClientStateNotFound),
		"server-pulled.json":         protocol.AppendPulled(nil, "c-1-s-4", 14, nil, protocol.PatchPut(nil, true, "counter", json.RawMessage("41"))),
		"server-error.json":          protocol.EncodeError("c-1-s-3", protocol.ErrCodeStorage, "could not commit: database unreachable", true),
		"server-pong.json":           protocol.EncodePong(),
		"server-poke-refused.json":   protocol.AppendPokeRefusal(nil, json.RawMessage("999"), protocol.ClientStateNotFound),
	}
	files, _ := filepath.Glob(filepath.Join(examples, "server-*.json"))
	if len(files) != len(cases) {
		t.Errorf("%d server examples, %d encoders checked: keep them in step", len(files), len(cases))
	}
	for name, got := range cases {
		want, err := os.ReadFile(filepath.Join(examples, name))
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(got) {
			t.Errorf("%s: encoder output is not JSON: %s", name, got)
		}
		if string(got) != strings.TrimSpace(string(want)) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

func TestDecode_BadFrames(t *testing.T) {
	tests := []struct {
		frame, reason string
	}{
		{`not json`, "not a JSON object"},
		{`[1,2]`, "not a JSON object"},
		{`{"type":`, "invalid JSON"},
		{`{}`, "missing field: type"},
		{`{"type":7}`, "field type must be a string"},
		{`{"type":"shout"}`, "unknown frame type"},
		{`{"type":"hello","clientID":"c","cookie":null,"schemaVersion":""}`, "missing field: clientGroupID"},
		{`{"type":"hello","clientGroupID":"g","cookie":null,"schemaVersion":""}`, "missing field: clientID"},
		{`{"type":"hello","clientGroupID":"g","clientID":"c","schemaVersion":""}`, "missing field: cookie"},
		{`{"type":"hello","clientGroupID":"g","clientID":"c","cookie":1}`, "missing field: schemaVersion"},
		{`{"type":"push","body":{}}`, "missing field: id"},
		{`{"type":"push","id":"1"}`, "missing field: body"},
		{`{"type":"push","id":"1","body":{"clientGroupID":"g"}}`, "missing field: body.pushVersion"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","mutations":[]}}`, "missing field: body.clientGroupID"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g"}}`, "missing field: body.mutations"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"clientID":"c","name":"x"}]}}`, "mutation 0: missing field: id"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":1.5,"clientID":"c","name":"x"}]}}`, "id must be a positive integer"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":"1","clientID":"c","name":"x"}]}}`, "must be a number"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":0,"clientID":"c","name":"x"}]}}`, "id must be a positive integer"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":1,"name":"x"}]}}`, "missing field: clientID"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":1,"clientID":"c"}]}}`, "missing field: name"},
		{`{"type":"pull","id":"1","body":{"pullVersion":1,"schemaVersion":"","clientGroupID":"g"}}`, "missing field: body.cookie"},
		{`{"type":"pull","body":{}}`, "missing field: id"},
		{`{"type":"hello","clientGroupID":"g\u0000","clientID":"c","cookie":null,"schemaVersion":""}`, "clientGroupID holds a NUL"},
		{`{"type":"hello","clientGroupID":"g","clientID":"` + strings.Repeat("c", 257) + `","cookie":null,"schemaVersion":""}`, "clientID longer than 256 bytes"},
		{`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":1,"clientID":"c\u0000","name":"x"}]}}`, "mutation 0: clientID holds a NUL"},
		{`{"type":"push","id":"` + strings.Repeat("i", 257) + `","body":{}}`, "id longer than 256"},
		{`{"type":"` + strings.Repeat("€", 60) + `"}`, "unknown frame type"},
	}
	for _, tt := range tests {
		_, err := protocol.DecodeClientFrame([]byte(tt.frame))
		var pe *protocol.ProtocolError
		if !errors.As(err, &pe) {
			t.Errorf("%s: err = %v, want a protocol error", tt.frame, err)
			continue
		}
		if pe.Code != protocol.CloseProtocol || !strings.Contains(pe.Reason, tt.reason) || len(pe.Reason) >= 120 || !utf8.ValidString(pe.Reason) {
			t.Errorf("%s: close %d %q, want 4000 naming %q", tt.frame, pe.Code, pe.Reason, tt.reason)
		}
	}
}

func TestDecode_LegacyVersionsAreNotProtocolErrors(t *testing.T) {
	// A v0 push has another shape (no clientGroupID, mutations without
	// clientID): it must reach the server's VersionNotSupported answer.
	f, err := protocol.DecodeClientFrame([]byte(`{"type":"push","id":"1","body":{"pushVersion":0,"clientID":"c","mutations":[{"id":1,"name":"x","args":{}}]}}`))
	if err != nil || f.Push.Body.PushVersion != 0 {
		t.Fatalf("v0 push: %+v, %v", f, err)
	}
	f, err = protocol.DecodeClientFrame([]byte(`{"type":"pull","id":"1","body":{"pullVersion":0,"clientID":"c","cookie":1,"lastMutationID":3}}`))
	if err != nil || f.Pull.Body.PullVersion != 0 {
		t.Fatalf("v0 pull: %+v, %v", f, err)
	}
}

func TestDecode_Cookies(t *testing.T) {
	for raw, want := range map[string]protocol.Cookie{
		`null`:        {Raw: json.RawMessage(`null`)},
		`0`:           {Raw: json.RawMessage(`0`), Numeric: true},
		`12`:          {Raw: json.RawMessage(`12`), Version: 12, Numeric: true},
		`"12"`:        {Raw: json.RawMessage(`"12"`)},
		`{"order":3}`: {Raw: json.RawMessage(`{"order":3}`)},
		`1.5`:         {Raw: json.RawMessage(`1.5`)},
		`-1`:          {Raw: json.RawMessage(`-1`)},
		`1e400`:       {Raw: json.RawMessage(`1e400`)},
	} {
		f, err := protocol.DecodeClientFrame([]byte(`{"type":"hello","clientGroupID":"g","clientID":"c","schemaVersion":"","cookie":` + raw + `}`))
		if err != nil {
			t.Errorf("cookie %s: %v", raw, err)
			continue
		}
		got := f.Hello.Cookie
		if string(got.Raw) != string(want.Raw) || got.Numeric != want.Numeric || got.Version != want.Version {
			t.Errorf("cookie %s = %+v, want %+v", raw, got, want)
		}
	}
}

func TestDecode_MissingArgsIsNull(t *testing.T) {
	f, err := protocol.DecodeClientFrame([]byte(`{"type":"push","id":"1","body":{"pushVersion":1,"schemaVersion":"","clientGroupID":"g","mutations":[{"id":1,"clientID":"c","name":"x"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(f.Push.Body.Mutations[0].Args); got != "null" {
		t.Fatalf("args = %s, want null", got)
	}
}

func TestAppendString_MatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `quote " back \ slash`, "tab\tnew\nline\r", "\x00\x1f", "héllo wörld ✓", "bad \xff utf8", "line\u2028sep\u2029", "<html>&"} {
		got := protocol.AppendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("%q encoded to invalid JSON %s: %v", s, got, err)
			continue
		}
		want, _ := json.Marshal(s)
		var wantBack string
		_ = json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("%q round-trips to %q, encoding/json to %q", s, back, wantBack)
		}
	}
}

func TestTruncateReason_KeepsValidUTF8(t *testing.T) {
	r := protocol.TruncateReason("a" + strings.Repeat("€", 60))
	if len(r) > protocol.MaxReasonLen || !utf8.ValidString(r) {
		t.Fatalf("reason %q (%d bytes)", r, len(r))
	}
}

// The server reads frames into recycled buffers: a decoded frame must not
// point into the bytes it was decoded from.
func TestDecode_FramesDoNotAliasTheirInput(t *testing.T) {
	frames := []string{
		`{"type":"hello","clientGroupID":"g1","clientID":"c1","cookie":7,"schemaVersion":"1"}`,
		`{"type":"push","id":"p1","body":{"pushVersion":1,"schemaVersion":"1","profileID":"pr","clientGroupID":"g1",` +
			`"mutations":[{"clientID":"c1","id":1,"name":"increment","args":{"key":"k","delta":1},"timestamp":1}]}}`,
		`{"type":"pull","id":"q1","body":{"pullVersion":1,"schemaVersion":"1","profileID":"pr","clientGroupID":"g1","cookie":3}}`,
	}
	for _, frame := range frames {
		buf := []byte(frame)
		f, err := protocol.DecodeClientFrame(buf)
		if err != nil {
			t.Fatalf("%s: %v", frame, err)
		}
		before := fmt.Sprintf("%+v %+v %+v", f.Hello, f.Push, f.Pull)
		for i := range buf {
			buf[i] = 'x'
		}
		if after := fmt.Sprintf("%+v %+v %+v", f.Hello, f.Push, f.Pull); after != before {
			t.Fatalf("decoded frame changed with its input:\n%s\n%s", before, after)
		}
	}
}
