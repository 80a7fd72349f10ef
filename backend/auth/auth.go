// Package auth issues and checks connection tokens: HS256 JWTs that say who
// the user is, which spaces they may open and in which role, until when. The
// router checks a token before it replays a connection (so unauthenticated
// traffic never wakes a machine) and the backend checks it again after the
// upgrade (it must not trust that the router ran).
//
// A token travels in the `token` query parameter, because browsers cannot set
// headers on a WebSocket. It is a bearer secret: never log it (see Redact).
package auth

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"time"

	"github.com/golang-jwt/jwt/v5"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/spaceport-sync/spaceport/backend/mutator"
)

// MinSecretLen is the shortest AUTH_SECRET accepted: HS256 wants a key of at
// least its output size.
const MinSecretLen = 32

// Issuer is the `iss` claim of Spaceport tokens.
const Issuer = "spaceport"

// VerifiedCacheSize is how many verified tokens Keys remembers. A browser
// sends the same token on every (re)connection, and the router and the
// backend each verify it; checking the HMAC and decoding the claims again
// costs more than the rest of a replay decision. Only tokens that verified
// are kept (garbage cannot evict them), each until its expiry.
const VerifiedCacheSize = 10_000

// Errors. A missing, malformed, forged or expired token is ErrUnauthorized
// (close 4001: get a new token); a valid token for another space is
// ErrForbidden (close 4003: stop).
var (
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
	ErrExpired      = fmt.Errorf("%w: token expired", ErrUnauthorized)
	ErrMissing      = fmt.Errorf("%w: token missing", ErrUnauthorized)
	ErrShortSecret  = fmt.Errorf("auth secret shorter than %d bytes", MinSecretLen)
)

// Claims are what a token grants.
type Claims struct {
	// Spaces is one space ID, or a pattern in path.Match syntax ("team-*",
	// "*" for every space).
	Spaces string `json:"spaces"`
	// Role is "editor" or "viewer".
	Role mutator.Role `json:"role"`
	jwt.RegisteredClaims
}

// UserID is the token's subject.
func (c *Claims) UserID() string { return c.Subject }

// Allows reports whether the claims let the user open spaceID.
func (c *Claims) Allows(spaceID string) bool {
	ok, err := path.Match(c.Spaces, spaceID)
	return err == nil && ok
}

// Keys signs and verifies tokens with one shared secret.
type Keys struct {
	secret   []byte
	now      func() time.Time
	verified *lru.Cache[string, *Claims]
}

// NewKeys returns keys for secret, which must be at least MinSecretLen bytes.
func NewKeys(secret string) (*Keys, error) {
	if len(secret) < MinSecretLen {
		return nil, ErrShortSecret
	}
	verified, err := lru.New[string, *Claims](VerifiedCacheSize)
	if err != nil {
		return nil, fmt.Errorf("verified token cache: %w", err)
	}
	return &Keys{secret: []byte(secret), now: time.Now, verified: verified}, nil
}

// Grant is what Issue puts in a token.
type Grant struct {
	UserID string
	Spaces string // one space ID or a path.Match pattern
	Role   mutator.Role
	TTL    time.Duration
}

// Issue signs a token for g.
func (k *Keys) Issue(g Grant) (string, error) {
	if g.UserID == "" || g.Spaces == "" || g.TTL <= 0 {
		return "", errors.New("issue token: user, spaces and a positive TTL are required")
	}
	if _, err := path.Match(g.Spaces, ""); err != nil {
		return "", fmt.Errorf("issue token: spaces pattern %q: %w", g.Spaces, err)
	}
	if g.Role != mutator.RoleEditor && g.Role != mutator.RoleViewer {
		return "", fmt.Errorf("issue token: role %q: want editor or viewer", g.Role)
	}
	now := k.now()
	claims := Claims{
		Spaces: g.Spaces,
		Role:   g.Role,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    Issuer,
			Subject:   g.UserID,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(g.TTL)),
		},
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(k.secret)
}

// Verify checks a token's signature, algorithm, issuer and expiry, and that
// it names a user and a valid role. The claims returned may be shared with
// other callers: do not modify them.
func (k *Keys) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, ErrMissing
	}
	if c, ok := k.verified.Get(token); ok {
		if k.now().Before(c.ExpiresAt.Time) {
			return c, nil
		}
		k.verified.Remove(token)
	}
	c, err := k.verify(token)
	if err != nil {
		return nil, err
	}
	k.verified.Add(token, c)
	return c, nil
}

func (k *Keys) verify(token string) (*Claims, error) {
	claims := &Claims{}
	_, err := jwt.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return k.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(Issuer),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(k.now),
	)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, ErrExpired
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrUnauthorized, err)
	case claims.Subject == "":
		return nil, fmt.Errorf("%w: token has no subject", ErrUnauthorized)
	case claims.Role != mutator.RoleEditor && claims.Role != mutator.RoleViewer:
		return nil, fmt.Errorf("%w: token role %q", ErrUnauthorized, claims.Role)
	}
	return claims, nil
}

// Authorize verifies token and checks it grants spaceID.
func (k *Keys) Authorize(token, spaceID string) (*Claims, error) {
	c, err := k.Verify(token)
	if err != nil {
		return nil, err
	}
	if !c.Allows(spaceID) {
		return nil, fmt.Errorf("%w: token does not grant space %s", ErrForbidden, spaceID)
	}
	return c, nil
}

var redactRe = regexp.MustCompile(`(^|&)(token=)[^&]*`)

// Redact replaces the value of a `token` query parameter in a URL's raw
// query, for logs.
func Redact(rawQuery string) string {
	return redactRe.ReplaceAllString(rawQuery, "${1}${2}REDACTED")
}
