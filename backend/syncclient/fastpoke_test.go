package syncclient

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// slowPoke decodes a frame the way every other frame is decoded.
func slowPoke(data []byte) (frame, error) {
	var f frame
	err := json.Unmarshal(data, &f)
	return f, err
}

// checkFastPoke fails if the fast path accepts data and disagrees with
// encoding/json about it.
func checkFastPoke(t *testing.T, data []byte) (accepted bool) {
	t.Helper()
	base, body, ok := decodePokeFast(data)
	if !ok {
		return false
	}
	f, err := slowPoke(data)
	if err != nil {
		t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", data, err)
	}
	if f.Type != "poke" || !bytes.Equal(base, f.BaseCookie) || !reflect.DeepEqual(body, f.Body) {
		t.Fatalf("fast path and encoding/json disagree on %q:\nfast: %s %+v\nslow: %s %+v", data, base, body, f.BaseCookie, f.Body)
	}
	return true
}

var pokeSeeds = []string{
	`{"type":"poke","baseCookie":null,"body":{"cookie":1,"lastMutationIDChanges":{},"patch":[{"op":"clear"}]}}`,
	`{"type":"poke","baseCookie":7,"body":{"cookie":9,"lastMutationIDChanges":{"c1":4,"c\u00e92":-1},"patch":[{"op":"put","key":"k","value":{"a":[1,2.5e-3,true,false,null,"x\"y"]}},{"op":"del","key":"q\\/r"}]}}`,
	`{"type":"poke","baseCookie":999,"body":{"error":"ClientStateNotFound"}}`,
	`{"type":"poke","baseCookie":1,"body":{"cookie":2,"lastMutationIDChanges":{},"patch":[]},"extra":[{}]}`,
	`{"type":"poke", "baseCookie" : 1 , "body" : { "cookie" : 2 , "patch" : [ { "op" : "put" , "key" : "a" , "value" : "b" } ] } }`,
	`{"type":"poke","baseCookie":1,"body":null}`,
	`{"type":"poke","BaseCookie":1,"body":{"cookie":2}}`,
	`{"type":"poke","baseCookie":1,"body":{"cookie":2,"lastMutationIDChanges":{"c":1.5}}}`,
	`{"type":"poke","baseCookie":1,"body":{"cookie":2}} x`,
	`{"type":"poke","baseCookie":01,"body":{"cookie":2}}`,
	`{"type":"poke","baseCookie":1,"body":{"cookie":2,"patch":[{"op":"put","key":"\xff","value":1}]}}`,
	`{"type":"poke","type":"pong"}`,
}

func TestFastPokeAgreesWithEncodingJSON(t *testing.T) {
	examples, _ := filepath.Glob("../../docs/protocol-examples/server-poke*.json")
	if len(examples) == 0 {
		t.Fatal("no poke examples")
	}
	for _, f := range examples {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.TrimSpace(data)
		// Compact, as the server writes frames.
		var buf bytes.Buffer
		if err := json.Compact(&buf, data); err != nil {
			t.Fatal(err)
		}
		if !checkFastPoke(t, buf.Bytes()) {
			t.Errorf("%s: the fast path does not take the server's own pokes", f)
		}
	}
	accepted := 0
	for _, s := range pokeSeeds {
		if checkFastPoke(t, []byte(s)) {
			accepted++
		}
	}
	if accepted < 5 {
		t.Errorf("the fast path took only %d of the well-formed seeds", accepted)
	}
	// What the fast path must leave to encoding/json.
	for _, s := range []string{
		`{"type":"poke","BaseCookie":1,"body":{"cookie":2}}`,
		`{"type":"poke","baseCookie":1,"body":{"cookie":2}} x`,
		`{"type":"poke","baseCookie":01,"body":{"cookie":2}}`,
		`{"type":"poke","type":"pong"}`,
	} {
		if _, _, ok := decodePokeFast([]byte(s)); ok {
			t.Errorf("fast path took %q", s)
		}
	}
}

func FuzzDecodePoke(f *testing.F) {
	for _, s := range pokeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkFastPoke(t, data) })
}

func BenchmarkDecodePoke(b *testing.B) {
	var ops []string
	for i := range 100 {
		ops = append(ops, `{"op":"put","key":"count/lg-1a2b3c4d-0-c`+string(rune('0'+i%10))+`","value":12345}`)
	}
	data := []byte(`{"type":"poke","baseCookie":1041,"body":{"cookie":1042,"lastMutationIDChanges":{"lg-1a2b3c4d-0-c7":812},"patch":[` +
		string(bytes.Join(func() [][]byte {
			out := make([][]byte, len(ops))
			for i, o := range ops {
				out[i] = []byte(o)
			}
			return out
		}(), []byte(","))) + `]}}`)
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, _, ok := decodePokeFast(data); !ok {
				b.Fatal("slow path")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := slowPoke(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
