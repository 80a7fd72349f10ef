package machines

import (
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLimiter_FlyLimits(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := newLimiter(clock.now)
	start := action("start")

	// A burst of 3 goes at once; then one a second, each request waiting behind those before it.
	for i, want := range []time.Duration{0, 0, 0, time.Second, 2 * time.Second} {
		if got := l.reserve(start, "m1"); got != want {
			t.Fatalf("start #%d: wait %s, want %s", i+1, got, want)
		}
	}
	// Other machines and other actions have buckets of their own.
	if got := l.reserve(start, "m2"); got != 0 {
		t.Fatalf("start of another machine waits %s", got)
	}
	if got := l.reserve(action("stop"), "m1"); got != 0 {
		t.Fatalf("stop of the same machine waits %s", got)
	}
	// Gets: bursts of 10 at 5 a second.
	for i := range GetBurst {
		if got := l.reserve(getClass, "m1"); got != 0 {
			t.Fatalf("get #%d waits %s", i+1, got)
		}
	}
	if got := l.reserve(getClass, "m1"); got != 200*time.Millisecond {
		t.Fatalf("the 11th get waits %s, want 200ms", got)
	}

	// Time refills the bucket, up to the burst: after 10s the five reservations above are paid and the bucket is
	// full again.
	clock.t = clock.t.Add(10 * time.Second)
	for i := range ActionBurst {
		if got := l.reserve(start, "m1"); got != 0 {
			t.Fatalf("after 10s, start #%d waits %s", i+1, got)
		}
	}
	if got := l.reserve(start, "m1"); got != time.Second {
		t.Fatalf("after the burst, start waits %s, want 1s", got)
	}
	// A caller that gives up returns its token.
	l.unreserve(start, "m1")
	if got := l.reserve(start, "m1"); got != time.Second {
		t.Fatalf("after a returned token, start waits %s, want 1s", got)
	}
}

func TestLimiter_Prunes(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := newLimiter(clock.now)
	for i := range maxBuckets {
		l.reserve(action("start"), string(rune('a'+i%26))+time.Duration(i).String())
	}
	clock.t = clock.t.Add(2 * time.Minute)
	l.reserve(action("start"), "new")
	if len(l.buckets) != 1 {
		t.Fatalf("%d buckets after pruning, want 1", len(l.buckets))
	}
}
