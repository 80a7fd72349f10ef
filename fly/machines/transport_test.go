package machines_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/spaceport-sync/spaceport/fly/machines"
)

// These tests give the client answers flylocal never gives: dropped connections, gateway errors, 429s and error
// bodies in the other shapes Fly has used.

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// flaky serves handler, after first dropping the connection of the first `drops` requests without an answer.
func flaky(t *testing.T, drops int32, handler http.HandlerFunc) (*machines.Client, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= drops {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = c.Close()
			}
			return
		}
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	c, err := machines.New(machines.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c, &n
}

func TestClient_RetriesReadsOnDroppedConnections(t *testing.T) {
	c, n := flaky(t, 2, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"id":"0123456789abcd","state":"started"}`))
	})
	m, err := c.Get(context.Background(), "app", "0123456789abcd")
	if err != nil || m.State != machines.StateStarted || n.Load() != 3 {
		t.Fatalf("Get: %+v, %v after %d requests; want success on the third", m, err, n.Load())
	}
}

func TestClient_DoesNotRetryChangesOnDroppedConnections(t *testing.T) {
	c, n := flaky(t, 1, func(w http.ResponseWriter, r *http.Request) {})
	err := c.Stop(context.Background(), "app", "0123456789abcd", machines.StopRequest{})
	if err == nil || n.Load() != 1 {
		t.Fatalf("Stop: %v after %d requests; a stop that may have reached the API must not be sent again", err, n.Load())
	}
}

func TestClient_RetriesByStatus(t *testing.T) {
	for _, tc := range []struct {
		name     string
		status   int
		call     func(*machines.Client) error
		attempts int32
	}{
		{"429 on a change", http.StatusTooManyRequests, func(c *machines.Client) error {
			_, err := c.Start(context.Background(), "app", "0123456789abcd")
			return err
		}, 2},
		{"503 on a read", http.StatusServiceUnavailable, func(c *machines.Client) error {
			_, err := c.List(context.Background(), "app", machines.ListOptions{})
			return err
		}, 2},
		{"503 on a change", http.StatusServiceUnavailable, func(c *machines.Client) error {
			_, err := c.Start(context.Background(), "app", "0123456789abcd")
			return err
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 1 {
					w.WriteHeader(tc.status)
					_, _ = w.Write([]byte(`{"error":"try later"}`))
					return
				}
				_, _ = w.Write([]byte(`[]`))
			}))
			defer srv.Close()
			c, _ := machines.New(machines.Config{BaseURL: srv.URL})
			err := tc.call(c)
			if n.Load() != tc.attempts {
				t.Fatalf("%d requests (err %v), want %d", n.Load(), err, tc.attempts)
			}
			if tc.attempts == 1 && err == nil {
				t.Fatal("no error for a failed change that is not retried")
			}
		})
	}
}

func TestClient_ErrorBodies(t *testing.T) {
	for _, tc := range []struct {
		body        string
		status      int
		wantMessage string
		wantIs      error
	}{
		{`{"error":"could not reserve resource for machine: insufficient CPUs available","status":"insufficient_capacity"}`,
			http.StatusPreconditionFailed, "insufficient CPUs available", machines.ErrInsufficientCapacity},
		{`{"message":"app not found"}`, http.StatusNotFound, "app not found", machines.ErrNotFound},
		{"upstream connect error", http.StatusBadGateway, "upstream connect error", nil},
		{`{"error":"missing or invalid token"}`, http.StatusUnauthorized, "fly tokens create deploy", machines.ErrUnauthorized},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("fly-request-id", "01REQUEST")
			w.WriteHeader(tc.status)
			_, _ = w.Write([]byte(tc.body))
		}))
		c, _ := machines.New(machines.Config{BaseURL: srv.URL, MaxRetries: -1})
		_, err := c.Create(context.Background(), "app", machines.CreateRequest{Config: machines.MachineConfig{Image: "i"}})
		srv.Close()
		var apiErr *machines.APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != tc.status || apiErr.RequestID != "01REQUEST" ||
			!strings.Contains(err.Error(), tc.wantMessage) {
			t.Errorf("body %s: error %v", tc.body, err)
		}
		if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
			t.Errorf("body %s: error %v does not match %v", tc.body, err, tc.wantIs)
		}
	}
}

func TestClient_AuthorizationHeader(t *testing.T) {
	for token, want := range map[string]string{
		"fm2_abc":              "FlyV1 fm2_abc",
		"FlyV1 fm2_abc,fm2_de": "FlyV1 fm2_abc,fm2_de",
		"Bearer fm1r_x":        "FlyV1 fm1r_x",
		"personal-token":       "Bearer personal-token",
		"Bearer personal":      "Bearer personal",
		"":                     "",
	} {
		got := make(chan string, 1)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got <- r.Header.Get("Authorization")
			_, _ = w.Write([]byte(`[]`))
		}))
		c, _ := machines.New(machines.Config{BaseURL: srv.URL, Token: token})
		if _, err := c.List(context.Background(), "app", machines.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		if h := <-got; h != want {
			t.Errorf("token %q: Authorization %q, want %q", token, h, want)
		}
	}
}

func TestNew_BadBaseURL(t *testing.T) {
	for _, u := range []string{"api.machines.dev", "ftp://x", "http://"} {
		if _, err := machines.New(machines.Config{BaseURL: u}); err == nil {
			t.Errorf("New accepted base URL %q", u)
		}
	}
	c, err := machines.New(machines.Config{BaseURL: "http://_api.internal:4280/v1/"})
	if err != nil || c.BaseURL() != "http://_api.internal:4280" {
		t.Errorf("base URL with /v1: %v, %v", c, err)
	}
	if c, _ := machines.New(machines.ConfigFromEnv(func(string) string { return "" })); c.BaseURL() != machines.DefaultBaseURL {
		t.Errorf("default base URL %s", c.BaseURL())
	}
}
