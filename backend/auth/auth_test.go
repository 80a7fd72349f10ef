package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/spaceport-sync/spaceport/backend/mutator"
)

const secret = "0123456789abcdef0123456789abcdef"

func keys(t testing.TB, now time.Time) *Keys {
	t.Helper()
	k, err := NewKeys(secret)
	if err != nil {
		t.Fatal(err)
	}
	k.now = func() time.Time { return now }
	return k
}

func TestIssueVerifyAuthorize(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := keys(t, now)
	tok, err := k.Issue(Grant{UserID: "alice", Spaces: "team-*", Role: mutator.RoleViewer, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c, err := k.Authorize(tok, "team-42")
	if err != nil || c.UserID() != "alice" || c.Role != mutator.RoleViewer {
		t.Fatalf("authorize: %+v, %v", c, err)
	}
	if _, err := k.Authorize(tok, "other"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("other space: %v, want ErrForbidden", err)
	}
	// The token verified above is remembered; its expiry still applies.
	k.now = func() time.Time { return now.Add(2 * time.Hour) }
	if _, err := k.Verify(tok); !errors.Is(err, ErrExpired) || !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("expired: %v", err)
	}
}

func TestVerify_RefusesForgedAndMalformedTokens(t *testing.T) {
	now := time.Now()
	k := keys(t, now)
	other, _ := NewKeys(strings.Repeat("x", MinSecretLen))
	forged, _ := other.Issue(Grant{UserID: "mallory", Spaces: "*", Role: mutator.RoleEditor, TTL: time.Hour})
	none := jwt.NewWithClaims(jwt.SigningMethodNone, Claims{Spaces: "*", Role: mutator.RoleEditor,
		RegisteredClaims: jwt.RegisteredClaims{Issuer: Issuer, Subject: "m", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}})
	noneTok, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	noExp := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{Spaces: "*", Role: mutator.RoleEditor,
		RegisteredClaims: jwt.RegisteredClaims{Issuer: Issuer, Subject: "m"}})
	noExpTok, _ := noExp.SignedString([]byte(secret))
	badRole := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{Spaces: "*", Role: "admin",
		RegisteredClaims: jwt.RegisteredClaims{Issuer: Issuer, Subject: "m", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}})
	badRoleTok, _ := badRole.SignedString([]byte(secret))
	for name, tok := range map[string]string{
		"empty": "", "garbage": "not.a.jwt", "forged": forged, "alg none": noneTok,
		"no expiry": noExpTok, "bad role": badRoleTok,
	} {
		if _, err := k.Verify(tok); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: err = %v, want ErrUnauthorized", name, err)
		}
	}
}

func TestNewKeys_ShortSecret(t *testing.T) {
	if _, err := NewKeys("short"); !errors.Is(err, ErrShortSecret) {
		t.Fatalf("err = %v", err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"token=abc.def":     "token=REDACTED",
		"a=1&token=abc&b=2": "a=1&token=REDACTED&b=2",
		"mytoken=x":         "mytoken=x",
		"":                  "",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// fuzzNow is the clock of FuzzVerify, so that its committed seeds (tokens
// issued at fuzzNow) stay valid.
var fuzzNow = time.Unix(1_800_000_000, 0)

// FuzzVerify: no token text may panic the verifier, and a token verifies only
// if it was issued with the secret: the oracle checks, without the JWT
// library, that an accepted token is three base64url parts whose header says
// HS256 and whose signature is the HMAC-SHA256 of the first two with our
// secret, and that the claims returned are those the payload carries (issuer,
// a subject, a known role, an expiry still ahead). Seeds are committed under
// testdata/fuzz/FuzzVerify: tokens issued with the secret, with another
// secret, with alg none or HS512, expired, without subject, with a bad role
// or issuer, with a tampered signature.
func FuzzVerify(f *testing.F) {
	k := keys(f, fuzzNow)
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := k.Verify(tok)
		if err != nil {
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("Verify(%q) failed with %v, which is not ErrUnauthorized", tok, err)
			}
			return
		}
		if problem := issuedWithSecret(tok, []byte(secret), fuzzNow, c); problem != "" {
			t.Fatalf("Verify accepted %q: %s", tok, problem)
		}
	})
}

// issuedWithSecret checks an accepted token by hand: it returns what is wrong
// with it ("" if nothing).
func issuedWithSecret(tok string, secret []byte, now time.Time, c *Claims) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return fmt.Sprintf("%d parts", len(parts))
	}
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return "header not base64url: " + err.Error()
	}
	var h struct{ Alg string }
	if err := json.Unmarshal(header, &h); err != nil || h.Alg != "HS256" {
		return fmt.Sprintf("header %s is not HS256 (%v)", header, err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "signature not base64url: " + err.Error()
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if !hmac.Equal(sig, mac.Sum(nil)) {
		return "not signed with the secret"
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "payload not base64url: " + err.Error()
	}
	var p struct {
		Iss, Sub, Spaces string
		Role             mutator.Role
		Exp              float64
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return fmt.Sprintf("payload %s: %v", payload, err)
	}
	switch {
	case p.Iss != Issuer:
		return fmt.Sprintf("issuer %q", p.Iss)
	case p.Sub == "" || c.Subject != p.Sub:
		return fmt.Sprintf("subject %q, claims say %q", p.Sub, c.Subject)
	case p.Role != mutator.RoleEditor && p.Role != mutator.RoleViewer || c.Role != p.Role:
		return fmt.Sprintf("role %q, claims say %q", p.Role, c.Role)
	case c.Spaces != p.Spaces:
		return fmt.Sprintf("spaces %q, claims say %q", p.Spaces, c.Spaces)
	case !now.Before(time.Unix(int64(p.Exp), 0).Add(time.Second)):
		return fmt.Sprintf("expired at %v (now %v)", p.Exp, now)
	}
	return ""
}
