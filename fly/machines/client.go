// Package machines is a client of Fly's Machines REST API (https://fly.io/docs/machines/api/): list, get, create,
// start, stop, wait, delete, metadata and leases of an app's machines. github.com/superfly/fly-go cannot be
// installed here, so this client follows Fly's documentation, and flylocal serves the same endpoints for local
// machines, which is what the tests run against.
//
// Calls are typed; a failed call returns an *APIError, which matches the sentinel errors of its status code with
// errors.Is (ErrNotFound, ErrWaitTimeout, ...). The client keeps to Fly's documented rate limits on its side, and
// retries only what Fly says is safe to send again: reads, and requests that never reached the API.
package machines

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults for Config fields left at their zero value.
const (
	// DefaultBaseURL is Fly's public Machines API. Inside a Fly organization's private network the same API is
	// at http://_api.internal:4280; flylocal serves it locally at http://127.0.0.1:4280.
	DefaultBaseURL = "https://api.machines.dev"
	// DefaultTimeout bounds one HTTP exchange, except a wait, which gets its own timeout plus this.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxRetries is how many times a call that may be retried is sent again.
	DefaultMaxRetries = 2
	// DefaultRetryMin and DefaultRetryMax bound the jittered exponential backoff between retries (fly-go uses the
	// same bounds).
	DefaultRetryMin = 100 * time.Millisecond
	DefaultRetryMax = 500 * time.Millisecond
	// DefaultUserAgent is sent with every request.
	DefaultUserAgent = "spaceport-machines/1"
)

// Environment variables read by ConfigFromEnv: the names Fly's documentation uses.
const (
	TokenEnv    = "FLY_API_TOKEN"
	HostnameEnv = "FLY_API_HOSTNAME"
)

// maxResponseBody bounds how much of an answer is read.
const maxResponseBody = 16 << 20

// Config configures a Client. The zero value talks to DefaultBaseURL without a token.
type Config struct {
	// BaseURL is the API's scheme and host, without /v1 ("https://api.machines.dev",
	// "http://_api.internal:4280", "http://127.0.0.1:4280"). Empty means DefaultBaseURL.
	BaseURL string
	// Token is the API token: from `fly tokens create deploy` (which prints "FlyV1 fm2_..."), or
	// `fly auth token`. The scheme is chosen as fly-go does: FlyV1 for macaroon tokens, else Bearer; a "Bearer "
	// or "FlyV1 " prefix in the value is understood. Empty sends no Authorization header (flylocal needs none).
	Token string
	// HTTPClient sends the requests. Nil means a client of its own; each call has its own timeout either way.
	HTTPClient *http.Client
	// Timeout bounds one HTTP exchange (a wait gets its own timeout plus this). Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxRetries is how many times a call that may be retried is sent again. Zero means DefaultMaxRetries;
	// negative means never.
	MaxRetries int
	// UserAgent is sent with every request. Empty means DefaultUserAgent.
	UserAgent string
	// Logger receives a debug line per retry and rate-limit wait. Nil means slog.Default().
	Logger *slog.Logger
}

// ConfigFromEnv reads the base URL from FLY_API_HOSTNAME and the token from FLY_API_TOKEN, as Fly's
// documentation and flyctl do. getenv is os.Getenv outside tests.
func ConfigFromEnv(getenv func(string) string) Config {
	return Config{BaseURL: getenv(HostnameEnv), Token: getenv(TokenEnv)}
}

// Client calls the Machines API. It is safe for concurrent use.
type Client struct {
	base      string // scheme://host, no trailing slash
	auth      string // the Authorization header, or ""
	http      *http.Client
	timeout   time.Duration
	retries   int
	userAgent string
	log       *slog.Logger
	limits    *limiter
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	base := strings.TrimRight(cfg.BaseURL, "/")
	if base == "" {
		base = DefaultBaseURL
	}
	base = strings.TrimSuffix(base, "/v1")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("machines API base URL %q: want http(s)://host[:port]", cfg.BaseURL)
	}
	c := &Client{
		base:      base,
		auth:      authorization(cfg.Token),
		http:      cfg.HTTPClient,
		timeout:   cfg.Timeout,
		retries:   cfg.MaxRetries,
		userAgent: cfg.UserAgent,
		log:       cfg.Logger,
		limits:    newLimiter(time.Now),
	}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	switch {
	case c.retries == 0:
		c.retries = DefaultMaxRetries
	case c.retries < 0:
		c.retries = 0
	}
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	return c, nil
}

// BaseURL is the API's base URL, without /v1.
func (c *Client) BaseURL() string { return c.base }

// authorization builds the Authorization header for token the way fly-go does: any "Bearer " or "FlyV1 " prefix
// is dropped, then macaroon tokens (a comma-separated part starting with fm1r_, fm1a_ or fm2_) are sent as
// "FlyV1 <token>" and others as "Bearer <token>".
func authorization(token string) string {
	token = strings.TrimSpace(token)
	token = strings.TrimSpace(strings.TrimPrefix(token, "Bearer "))
	token = strings.TrimSpace(strings.TrimPrefix(token, "FlyV1 "))
	if token == "" {
		return ""
	}
	for _, part := range strings.Split(token, ",") {
		part = strings.TrimSpace(part)
		if strings.HasPrefix(part, "fm1r_") || strings.HasPrefix(part, "fm1a_") || strings.HasPrefix(part, "fm2_") {
			return "FlyV1 " + token
		}
	}
	return "Bearer " + token
}

type nonceKey struct{}

// WithLeaseNonce returns a context whose calls carry a lease's nonce (header fly-machine-lease-nonce): while a
// machine is leased, every call that changes it must.
func WithLeaseNonce(ctx context.Context, nonce string) context.Context {
	return context.WithValue(ctx, nonceKey{}, nonce)
}

// LeaseNonceHeader is the header that carries a lease's nonce.
const LeaseNonceHeader = "fly-machine-lease-nonce"

// call describes one API call.
type call struct {
	op      string // for errors: "start machine 9080..."
	method  string
	path    string // under /v1
	query   url.Values
	body    any           // JSON-encoded when not nil
	out     any           // the 2xx answer is decoded into it when not nil
	limit   rateClass     // which of Fly's rate limits applies
	key     string        // the machine or app the limit counts against
	timeout time.Duration // for this exchange; zero means c.timeout
	header  http.Header
}

// do runs a call: it waits for the rate limit, sends the request, retries what may be retried and decodes the
// answer.
func (c *Client) do(ctx context.Context, cl call) error {
	var body []byte
	if cl.body != nil {
		b, err := json.Marshal(cl.body)
		if err != nil {
			return fmt.Errorf("%s: encode request: %w", cl.op, err)
		}
		body = b
	}
	u := c.base + "/v1" + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	timeout := cl.timeout
	if timeout <= 0 {
		timeout = c.timeout
	}
	for attempt := 0; ; attempt++ {
		if err := c.limits.wait(ctx, cl.limit, cl.key, c.log); err != nil {
			return fmt.Errorf("%s: %w", cl.op, err)
		}
		resp, err := c.send(ctx, cl, u, body, timeout)
		if err != nil {
			if ctx.Err() != nil || attempt >= c.retries || !retryableTransport(cl.method, err) {
				return fmt.Errorf("%s: %w", cl.op, err)
			}
			c.log.Debug("machines API: retrying", "op", cl.op, "attempt", attempt+1, "err", err)
		} else {
			if resp.StatusCode >= 200 && resp.StatusCode < 300 {
				return decode(cl, resp)
			}
			apiErr := readError(cl.op, resp)
			if attempt >= c.retries || !retryableStatus(cl.method, resp.StatusCode) {
				return apiErr
			}
			c.log.Debug("machines API: retrying", "op", cl.op, "attempt", attempt+1, "status", resp.StatusCode)
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return fmt.Errorf("%s: %w", cl.op, err)
		}
	}
}

// send runs one HTTP exchange and reads the whole answer, so that the exchange's timeout covers the body too.
func (c *Client) send(ctx context.Context, cl call, u string, body []byte, timeout time.Duration) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, r)
	if err != nil {
		return nil, err
	}
	for k, vs := range cl.header {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	if nonce, ok := ctx.Value(nonceKey{}).(string); ok && nonce != "" {
		req.Header.Set(LeaseNonceHeader, nonce)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	return &response{StatusCode: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// response is an HTTP answer read whole.
type response struct {
	StatusCode int
	Header     http.Header
	Body       []byte
}

func decode(cl call, resp *response) error {
	if cl.out == nil || len(bytes.TrimSpace(resp.Body)) == 0 {
		return nil
	}
	if err := json.Unmarshal(resp.Body, cl.out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", cl.op, err)
	}
	return nil
}

// retryableTransport reports whether a request that failed without an answer may be sent again: a read (GET) in
// any case, as fly-go retries them; any request whose connection was never made, since the API never saw it.
func retryableTransport(method string, err error) bool {
	if method == http.MethodGet {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// retryableStatus reports whether an answer invites sending the request again: 429 (the request was refused by
// the rate limit, not carried out) always; a gateway error (502, 503, 504) only for reads.
func retryableStatus(method string, status int) bool {
	switch status {
	case http.StatusTooManyRequests:
		return true
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return method == http.MethodGet
	}
	return false
}

// backoff is the pause before retry attempt+1: exponential from DefaultRetryMin up to DefaultRetryMax, with
// jitter.
func backoff(attempt int) time.Duration {
	d := DefaultRetryMin << min(attempt, 8)
	d = min(d, DefaultRetryMax)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// pathEscape escapes one path segment (app names and machine IDs never need it; a bad one must not change the
// path).
func pathEscape(s string) string { return url.PathEscape(s) }

func itoa(n int) string { return strconv.Itoa(n) }
