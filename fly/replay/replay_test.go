package replay_test

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spaceport-sync/spaceport/fly/replay"
)

const (
	machineA = "90801679a10038"
	machineB = "3d8d9e4ea42e89"
)

func TestReplay_String(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    replay.Replay
		want string
	}{
		{"zero", replay.Replay{}, ""},
		{"router answer", replay.Replay{App: "spaceport-backend", Instance: machineA},
			"app=spaceport-backend;instance=90801679a10038"},
		{"one region", replay.Replay{Regions: []string{"sjc"}}, "region=sjc"},
		{"region list is quoted", replay.Replay{Regions: []string{"sjc", "any"}, App: "target-app"},
			`app=target-app;region="sjc,any"`},
		{"timeout and fallback", replay.Replay{App: "my-worker", Timeout: 10 * time.Second, Fallback: replay.FallbackForceSelf},
			"app=my-worker;timeout=10s;fallback=force_self"},
		{"sub-second timeout", replay.Replay{App: "a", Timeout: 800 * time.Millisecond}, "app=a;timeout=800ms"},
		{"canonical order", replay.Replay{
			State: "s", Fallback: replay.FallbackPreferSelf, Timeout: time.Second, Elsewhere: true,
			Regions: []string{"iad"}, PreferInstance: machineB, Instance: machineA, App: "x",
		}, "app=x;instance=90801679a10038;prefer_instance=3d8d9e4ea42e89;region=iad;elsewhere=true;timeout=1s;fallback=prefer_self;state=s"},
		{"token state is bare", replay.Replay{Elsewhere: true, State: "captured_write"}, "elsewhere=true;state=captured_write"},
		{"state with separators is quoted", replay.Replay{Instance: machineA, State: "a;b,c=d"},
			`instance=90801679a10038;state="a;b,c=d"`},
		{"state with quote and backslash is escaped", replay.Replay{Instance: machineA, State: `say "hi" \o/`},
			`instance=90801679a10038;state="say \"hi\" \\o/"`},
		{"state with spaces is quoted", replay.Replay{Instance: machineA, State: " padded "},
			`instance=90801679a10038;state=" padded "`},
		{"base64 padding is quoted", replay.Replay{Instance: machineA, State: "YWJj+/=="},
			`instance=90801679a10038;state="YWJj+/=="`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.String(); got != tt.want {
				t.Fatalf("String()=%s, want %s", got, tt.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   string
		want replay.Replay
	}{
		// The examples of Fly's documentation (reference/fly-platform.md §1).
		{"docs region", "region=sjc", replay.Replay{Regions: []string{"sjc"}}},
		{"docs instance", "instance=00bb33ff", replay.Replay{Instance: "00bb33ff"}},
		{"docs app", "app=target-app", replay.Replay{App: "target-app"}},
		{"docs region list and app", `region="sjc,any";app=target-app`,
			replay.Replay{Regions: []string{"sjc", "any"}, App: "target-app"}},
		{"docs region preference list", `region="iad,ord,us,na"`, replay.Replay{Regions: []string{"iad", "ord", "us", "na"}}},
		{"docs timeout fallback", "app=my-worker;timeout=10s;fallback=force_self",
			replay.Replay{App: "my-worker", Timeout: 10 * time.Second, Fallback: replay.FallbackForceSelf}},
		{"docs older form", "region=sjc;app=app-in-same-org", replay.Replay{Regions: []string{"sjc"}, App: "app-in-same-org"}},
		{"fly-ruby", "region=ord;state=captured_write", replay.Replay{Regions: []string{"ord"}, State: "captured_write"}},

		{"empty", "", replay.Replay{}},
		{"only separators and spaces", " ; ;; ", replay.Replay{}},
		{"spaces everywhere", " app = x ; instance\t=\t" + machineA + " ; ",
			replay.Replay{App: "x", Instance: machineA}},
		{"keys ignore case", "App=x;INSTANCE=" + machineA, replay.Replay{App: "x", Instance: machineA}},
		{"unknown keys ignored", "app=x;future=1;other=\"a;b\"", replay.Replay{App: "x"}},
		{"unknown key twice ignored", "future=1;future=2;app=x", replay.Replay{App: "x"}},
		{"empty value is absent", `app=;state="";elsewhere=;instance=` + machineA, replay.Replay{Instance: machineA}},
		{"quoted token", `app="x"`, replay.Replay{App: "x"}},
		{"spaces inside quoted region list", `region=" iad , ord "`, replay.Replay{Regions: []string{"iad", "ord"}}},
		{"bare region list tolerated", "region=iad,ord", replay.Replay{Regions: []string{"iad", "ord"}}},
		{"bare value may hold '='", "state=YWJj==", replay.Replay{State: "YWJj=="}},
		{"quoted state with separators", `state="a;b,c=d";app=x`, replay.Replay{State: "a;b,c=d", App: "x"}},
		{"escapes", `state="say \"hi\" \\o/ \x"`, replay.Replay{State: `say "hi" \o/ x`}},
		{"quoted spaces kept", `state="  two  "`, replay.Replay{State: "  two  "}},
		{"elsewhere true", "elsewhere=true", replay.Replay{Elsewhere: true}},
		{"elsewhere false", "elsewhere=false;app=x", replay.Replay{App: "x"}},
		{"elsewhere other spellings", "elsewhere=TRUE", replay.Replay{Elsewhere: true}},
		{"obs-text in state", "state=caf\xc3\xa9", replay.Replay{State: "caf\xc3\xa9"}},
		{"comma-separated pairs are one value", "app=x,state=y", replay.Replay{App: "x,state=y"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := replay.Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse(%q)=%#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParse_Malformed(t *testing.T) {
	for _, in := range []string{
		"app",                                 // no '='
		"app x",                               // no '='
		"=x",                                  // no key
		";=x",                                 // no key
		`app="x`,                              // unterminated
		`state="x\"`,                          // escaped closing quote: unterminated
		`state="x\`,                           // backslash at the end
		`app="x"y`,                            // text after quote
		`app="x" y;instance=z`,                // text after quote
		`app=a"b`,                             // quote in bare value
		"app=x;app=y",                         // duplicate
		"APP=x;app=y",                         // duplicate, any case
		"state=a\nb",                          // control character
		"state=\"a\x00b\"",                    // control character in quotes
		"state=\"a\\\x01\"",                   // escaped control character
		"app=x\x7f",                           // DEL
		"elsewhere=maybe",                     // not a bool
		"timeout=10",                          // no unit
		"timeout=soon",                        // not a duration
		`region="iad,,ord"`,                   // empty element
		`region=","`,                          // empty elements
		"a(pp=x",                              // key with a non-token character
		"app=x;;instance=" + "y;" + "\"z\"=1", // quoted key
	} {
		_, err := replay.Parse(in)
		if !errors.Is(err, replay.ErrMalformed) {
			t.Errorf("Parse(%q) error=%v, want ErrMalformed", in, err)
		}
	}
}

func TestReplay_Validate(t *testing.T) {
	valid := []replay.Replay{
		{App: "spaceport-backend", Instance: machineA},
		{Instance: machineA, State: `any "text" ;,= \ é` + "\t"},
		{PreferInstance: machineB, App: "a1"},
		{Regions: []string{"sjc", "any"}},
		{Regions: []string{"local"}},
		{Elsewhere: true},
		{App: "my-worker", Timeout: 10 * time.Second, Fallback: replay.FallbackForceSelf},
		{App: "w", Fallback: replay.FallbackPreferSelf},
	}
	for _, r := range valid {
		if err := r.Validate(); err != nil {
			t.Errorf("%#v.Validate(): %v", r, err)
		}
	}

	for _, tt := range []struct {
		r    replay.Replay
		want error
	}{
		{replay.Replay{}, replay.ErrEmpty},
		{replay.Replay{State: "x", Timeout: time.Second, Fallback: replay.FallbackForceSelf}, replay.ErrEmpty},
		{replay.Replay{Instance: "00bb33ff"}, replay.ErrInvalid},                         // the docs' placeholder
		{replay.Replay{Instance: "90801679A10038"}, replay.ErrInvalid},                   // upper case
		{replay.Replay{Instance: "90801679a1003g"}, replay.ErrInvalid},                   // not hex
		{replay.Replay{PreferInstance: "space-1"}, replay.ErrInvalid},                    // not an ID
		{replay.Replay{Instance: machineA, PreferInstance: machineB}, replay.ErrInvalid}, // exclusive
		{replay.Replay{App: "Target"}, replay.ErrInvalid},
		{replay.Replay{App: "x,state=y"}, replay.ErrInvalid},
		{replay.Replay{App: "-x"}, replay.ErrInvalid},
		{replay.Replay{App: strings.Repeat("a", replay.MaxAppNameLength+1)}, replay.ErrInvalid},
		{replay.Replay{Regions: []string{""}}, replay.ErrInvalid},
		{replay.Replay{Regions: []string{"iad,ord"}}, replay.ErrInvalid},
		{replay.Replay{Regions: []string{" iad"}}, replay.ErrInvalid},
		{replay.Replay{App: "x", Timeout: -time.Second}, replay.ErrInvalid},
		{replay.Replay{App: "x", Fallback: "self"}, replay.ErrInvalid},
		{replay.Replay{App: "x", State: "line\nbreak"}, replay.ErrInvalid},
	} {
		if err := tt.r.Validate(); !errors.Is(err, tt.want) {
			t.Errorf("%#v.Validate()=%v, want %v", tt.r, err, tt.want)
		}
	}
}

func TestValidateErrorHidesState(t *testing.T) {
	err := replay.Replay{App: "x", State: "secret\x01"}.Validate()
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("Validate()=%v, want an error that does not quote the state", err)
	}
}

func TestSource(t *testing.T) {
	ts := time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)
	for _, tt := range []struct {
		name string
		s    replay.Source
		want string
	}{
		{"zero", replay.Source{}, ""},
		{"full", replay.Source{Instance: machineA, Region: "local", Time: ts, State: "abc"},
			"instance=90801679a10038;region=local;t=1772366400123456;state=abc"},
		{"quoted state", replay.Source{Instance: machineA, Region: "iad", Time: ts, State: `a;b"c`},
			`instance=90801679a10038;region=iad;t=1772366400123456;state="a;b\"c"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.String(); got != tt.want {
				t.Fatalf("String()=%s, want %s", got, tt.want)
			}
			got, err := replay.ParseSource(tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if !sourceEqual(got, tt.s) {
				t.Fatalf("ParseSource(%q)=%#v, want %#v", tt.want, got, tt.s)
			}
		})
	}

	// Sub-microsecond precision is not carried; Time comes back in UTC.
	s, err := replay.ParseSource(replay.Source{Time: time.Unix(5, 1999).In(time.FixedZone("x", 3600))}.String())
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Unix(5, 1000).UTC(); s.Time != want {
		t.Fatalf("Time=%v, want %v", s.Time, want)
	}

	for _, in := range []string{"t=soon", "t=1.5", "t=99999999999999999999", `instance="x`, "state=a;state=b"} {
		if _, err := replay.ParseSource(in); !errors.Is(err, replay.ErrMalformed) {
			t.Errorf("ParseSource(%q) error=%v, want ErrMalformed", in, err)
		}
	}
}

func TestFailed(t *testing.T) {
	// The example of Fly's documentation.
	const docs = "instance=00bb33ff;app=target-app;region=iad;replay_source=11aa44ee;reason=timeout;elapsed_ms=10000"
	want := replay.Failed{Instance: "00bb33ff", App: "target-app", Region: "iad", ReplaySource: "11aa44ee",
		Reason: replay.ReasonTimeout, Elapsed: 10 * time.Second}
	got, err := replay.ParseFailed(docs)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("ParseFailed=%#v, want %#v", got, want)
	}
	if s := want.String(); s != docs {
		t.Fatalf("String()=%s, want %s", s, docs)
	}
	if s := (replay.Failed{Reason: replay.ReasonNoCandidate, Elapsed: 1500 * time.Microsecond}).String(); s != "reason=no_candidate;elapsed_ms=1" {
		t.Fatalf("String()=%s", s)
	}
	for _, in := range []string{"elapsed_ms=-1", "elapsed_ms=1s", "elapsed_ms=9223372036854775807", "reason"} {
		if _, err := replay.ParseFailed(in); !errors.Is(err, replay.ErrMalformed) {
			t.Errorf("ParseFailed(%q) error=%v, want ErrMalformed", in, err)
		}
	}
}

// TestRoundTrip checks the property that every valid Replay survives String and Parse, with states drawn from
// every byte HTTP allows in a header value.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 5000; i++ {
		r := randomReplay(rng)
		if err := r.Validate(); err != nil {
			t.Fatalf("generator made an invalid replay %#v: %v", r, err)
		}
		got, err := replay.Parse(r.String())
		if err != nil {
			t.Fatalf("Parse(%q): %v", r.String(), err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("Parse(%q)=%#v, want %#v", r.String(), got, r)
		}

		s := replay.Source{Instance: r.Instance, Region: "local", Time: time.UnixMicro(rng.Int64()).UTC(), State: r.State}
		gotS, err := replay.ParseSource(s.String())
		if err != nil {
			t.Fatalf("ParseSource(%q): %v", s.String(), err)
		}
		if !sourceEqual(gotS, s) {
			t.Fatalf("ParseSource(%q)=%#v, want %#v", s.String(), gotS, s)
		}
	}
}

func randomReplay(rng *rand.Rand) replay.Replay {
	var r replay.Replay
	if rng.IntN(2) == 0 {
		r.App = "app-" + randomHex(rng, 1+rng.IntN(10))
	}
	switch rng.IntN(3) {
	case 0:
		r.Instance = randomHex(rng, replay.MachineIDLength)
	case 1:
		r.PreferInstance = randomHex(rng, replay.MachineIDLength)
	}
	for n := rng.IntN(4); n > 0; n-- {
		r.Regions = append(r.Regions, []string{"iad", "ord", "sjc", "any", "local", "eu"}[rng.IntN(6)])
	}
	r.Elsewhere = rng.IntN(2) == 0 || r.App == "" && r.Instance == "" && r.PreferInstance == "" && r.Regions == nil
	if rng.IntN(2) == 0 {
		r.Timeout = time.Duration(rng.Int64N(int64(time.Hour)))
	}
	r.Fallback = []string{"", replay.FallbackForceSelf, replay.FallbackPreferSelf}[rng.IntN(3)]
	r.State = randomState(rng)
	return r
}

// randomState returns a string over every byte HTTP allows in a field value, biased towards the characters the
// grammar treats specially.
func randomState(rng *rand.Rand) string {
	const special = ` ";,=\` + "\t"
	b := make([]byte, rng.IntN(24))
	for i := range b {
		if rng.IntN(3) == 0 {
			b[i] = special[rng.IntN(len(special))]
			continue
		}
		for {
			c := byte(rng.IntN(256))
			if c == '\t' || c >= 0x20 && c != 0x7f {
				b[i] = c
				break
			}
		}
	}
	return string(b)
}

func randomHex(rng *rand.Rand, n int) string {
	const hex = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = hex[rng.IntN(16)]
	}
	return string(b)
}

func sourceEqual(a, b replay.Source) bool {
	return a.Instance == b.Instance && a.Region == b.Region && a.State == b.State && a.Time.Equal(b.Time)
}
