package replay_test

import (
	"reflect"
	"testing"

	"github.com/spaceport-sync/spaceport/fly/replay"
)

// FuzzParse feeds arbitrary values to the three parsers: none may panic, and whatever a parser accepts must come
// back unchanged from formatting and parsing again. The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"app=spaceport-backend;instance=90801679a10038",
		`region="sjc,any";app=target-app`,
		"app=my-worker;timeout=10s;fallback=force_self",
		"instance=90801679a10038;region=local;t=1772366400123456;state=abc",
		"instance=00bb33ff;app=target-app;region=iad;replay_source=11aa44ee;reason=timeout;elapsed_ms=10000",
		`state="a;b,c=d \"q\" \\"`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if r, err := replay.Parse(v); err == nil {
			again, err := replay.Parse(r.String())
			if err != nil {
				t.Fatalf("Parse(%q) ok, but Parse of its String %q: %v", v, r.String(), err)
			}
			if !reflect.DeepEqual(again, r) {
				t.Fatalf("Parse(%q)=%#v; Parse(%q)=%#v", v, r, r.String(), again)
			}
			_ = r.Validate() // must not panic
		}
		if s, err := replay.ParseSource(v); err == nil {
			again, err := replay.ParseSource(s.String())
			if err != nil {
				t.Fatalf("ParseSource(%q) ok, but ParseSource of its String %q: %v", v, s.String(), err)
			}
			if !sourceEqual(again, s) {
				t.Fatalf("ParseSource(%q)=%#v; ParseSource(%q)=%#v", v, s, s.String(), again)
			}
		}
		if fl, err := replay.ParseFailed(v); err == nil {
			again, err := replay.ParseFailed(fl.String())
			if err != nil {
				t.Fatalf("ParseFailed(%q) ok, but ParseFailed of its String %q: %v", v, fl.String(), err)
			}
			if again != fl {
				t.Fatalf("ParseFailed(%q)=%#v; ParseFailed(%q)=%#v", v, fl, fl.String(), again)
			}
		}
	})
}
