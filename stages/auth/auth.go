// Package auth is the stage that asks users for credentials before their
// requests reach the upstream, as Traefik's basicAuth, Caddy's basic_auth
// and nginx's auth_basic do, with bearer tokens beside:
//
//   - HTTP Basic (RFC 7617), against users given as htpasswd lines, in the
//     configuration (basic.users) or in an htpasswd file
//     (basic.users_file). Passwords are bcrypt hashes only
//     ("htpasswd -nB alice"); the file may hold comments (#) and blank
//     lines.
//   - Bearer tokens (RFC 6750), given as the hex SHA-256 of each accepted
//     token (bearer.tokens_sha256), as the gateway's client tokens are
//     ("tunnel hash-token"): the configuration holds no secret.
//
// A request with no Authorization field, with a scheme that is not
// configured, or with credentials that do not match is answered 401
// "authentication required", with one WWW-Authenticate field per
// configured scheme (Basic realm="...", charset="UTF-8" and/or Bearer
// realm="..."), so that browsers ask for a password. The answer never says
// which part was wrong; Reject.Err (ErrMissing or ErrInvalid) tells the
// logs whether credentials were sent. A request with more than one
// Authorization field is refused as ambiguous.
//
// Once a request is admitted, its Authorization field is removed before it
// goes on, so that the upstream never sees the gateway's credentials,
// unless forward_authorization is set.
//
// # Cost
//
// bcrypt is slow by design (tens of milliseconds at the usual cost of 10).
// The stage remembers the credentials it admitted, keyed by a keyed
// SHA-256 of user and password (the key is random per stage, so the
// memory holds nothing an attacker could look up), in a table of at most
// 4096 entries per stage that forgets a random entry when full: a busy API
// pays bcrypt once per user and password, then a few hundred nanoseconds.
// Refusals are never remembered, so a wrong password always costs a full
// bcrypt check; an unknown user costs the same check (against another
// user's hash), so that timing does not tell which users exist. Put
// ratelimit before auth to bound what guessing costs the gateway. Tokens
// cost one SHA-256 and a constant-time comparison with each configured
// digest.
//
// The stage reads the request only, so it works on HTTP rules (Module's
// Protocols are pipeline.HTTPProtocols: HTTP/1, HTTP/2, gRPC, WebSocket),
// anywhere after decode. It is immutable once built, so a reload that
// changes the users builds a new stage (with an empty table).
package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/pipeline"
)

// Name is the stage's name in rule stage lists, errors, spans and metrics.
const Name = "auth"

// DefaultRealm is the realm when Config.Realm is empty.
const DefaultRealm = "qtunnel"

// Config configures the auth stage. At least one user or token is
// required: the zero value is invalid, since an auth stage that admits no
// one is a mistake.
type Config struct {
	// Realm names the protected space in the WWW-Authenticate challenge
	// (browsers show it). If empty, "qtunnel". It must not hold '"', '\'
	// or control characters.
	Realm string `yaml:"realm"`
	// Basic holds the users of HTTP Basic authentication.
	Basic BasicConfig `yaml:"basic"`
	// Bearer holds the accepted bearer tokens.
	Bearer BearerConfig `yaml:"bearer"`
	// ForwardAuthorization keeps the Authorization field on an admitted
	// request, for an upstream that checks it again. If false (the
	// default) it is removed, so the upstream never sees the credentials.
	ForwardAuthorization bool `yaml:"forward_authorization"`
}

// BasicConfig lists the users of HTTP Basic authentication. A user may be
// listed once, in Users or in UsersFile.
type BasicConfig struct {
	// Users are htpasswd lines, "user:hash", with bcrypt hashes
	// ($2y$..., $2b$..., $2a$...), as "htpasswd -nB user" prints them.
	Users []string `yaml:"users"`
	// UsersFile is an htpasswd file of such lines; blank lines and lines
	// starting with # are skipped. It is read by New, once. A relative path
	// is taken as it is (from the working directory): the caller resolves
	// it first, as the config loader does against the config file's
	// directory.
	UsersFile string `yaml:"users_file"`
}

// BearerConfig lists the accepted bearer tokens.
type BearerConfig struct {
	// TokensSHA256 are the hex SHA-256 digests of the accepted tokens (64
	// hex digits each, as "tunnel hash-token" prints them).
	TokensSHA256 []string `yaml:"tokens_sha256"`
}

// Validate reports every problem of the configuration at once, naming
// each setting as in the config file (`basic.users[1]: ...`). It does not
// read UsersFile; New does.
func (c Config) Validate() error {
	var errs []error
	if err := checkRealm(c.Realm); err != nil {
		errs = append(errs, fmt.Errorf("realm: %w", err))
	}
	seen := make(map[string]int, len(c.Basic.Users))
	for i, line := range c.Basic.Users {
		user, _, err := parseUser(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("basic.users[%d]: %w", i, err))
			continue
		}
		if j, dup := seen[user]; dup {
			errs = append(errs, fmt.Errorf("basic.users[%d]: user %q is listed twice (also basic.users[%d])", i, user, j))
			continue
		}
		seen[user] = i
	}
	for i, h := range c.Bearer.TokensSHA256 {
		if _, err := control.ParseTokenHash(h); err != nil {
			errs = append(errs, fmt.Errorf("bearer.tokens_sha256[%d]: %w", i, err))
		}
	}
	if len(c.Basic.Users) == 0 && c.Basic.UsersFile == "" && len(c.Bearer.TokensSHA256) == 0 {
		errs = append(errs, errors.New("no credentials: set basic.users, basic.users_file or bearer.tokens_sha256"))
	}
	return errors.Join(errs...)
}

// checkRealm refuses what a quoted-string would need to escape, and what
// no header value may hold.
func checkRealm(r string) error {
	if !utf8.ValidString(r) {
		return fmt.Errorf("%q is not valid UTF-8", r)
	}
	for _, c := range r {
		if c < 0x20 || c == 0x7f || c == '"' || c == '\\' {
			return fmt.Errorf("%q must not hold '\"', '\\' or control characters", r)
		}
	}
	return nil
}

// parseUser parses an htpasswd line with a bcrypt hash.
func parseUser(line string) (user string, hash []byte, err error) {
	user, h, ok := strings.Cut(strings.TrimSpace(line), ":")
	if !ok || user == "" || h == "" {
		return "", nil, errors.New(`want "user:bcrypt-hash", as "htpasswd -nB user" prints it`)
	}
	if !strings.HasPrefix(h, "$2y$") && !strings.HasPrefix(h, "$2b$") && !strings.HasPrefix(h, "$2a$") {
		return "", nil, fmt.Errorf(`user %q: only bcrypt hashes ($2y$..., from "htpasswd -B") are supported`, user)
	}
	hash = []byte(h)
	if _, err := bcrypt.Cost(hash); err != nil {
		return "", nil, fmt.Errorf("user %q: malformed bcrypt hash (%v)", user, err)
	}
	return user, hash, nil
}

// Why a request was refused, in Reject.Err (for logs; the user sees
// "authentication required" either way).
var (
	// ErrMissing: no credentials, more than one Authorization field, or
	// a scheme that is not configured.
	ErrMissing = errors.New("auth: no usable credentials")
	// ErrInvalid: credentials of a configured scheme that do not match.
	ErrInvalid = errors.New("auth: wrong credentials")
	// ErrBusy: every slot for a password check was taken (see
	// passwordChecks); the request is refused with 503 and Retry-After,
	// unchecked.
	ErrBusy = errors.New("auth: too many password checks under way")
)

// keyLen is the length of the per-stage key of the cache's digests.
const keyLen = 32

// cacheSize bounds how many admitted credentials a stage remembers.
const cacheSize = 4096

// Stage is the auth stage. It is immutable once built, but for its cache
// of admitted credentials, which has its own lock: safe for concurrent
// use.
type Stage struct {
	users     map[string][]byte // user: bcrypt hash
	dummy     []byte            // a hash to check unknown users against
	tokens    []control.TokenHash
	challenge []string // the WWW-Authenticate values, clipped
	forward   bool
	key       [keyLen]byte // prefixes the cache's digests
	cache     cache
	wait      time.Duration // longest wait for a password check's slot
}

// New validates c, reads c.Basic.UsersFile if set, and returns the stage.
// The error names every problem found.
func New(c Config) (*Stage, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	s := &Stage{
		users:   make(map[string][]byte),
		forward: c.ForwardAuthorization,
		wait:    passwordWait,
	}
	from := make(map[string]string) // user: where it was listed
	for i, line := range c.Basic.Users {
		user, hash, _ := parseUser(line) // valid: checked above
		s.users[user] = hash
		from[user] = fmt.Sprintf("basic.users[%d]", i)
		if s.dummy == nil {
			s.dummy = hash
		}
	}
	var errs []error
	if c.Basic.UsersFile != "" {
		errs = s.readUsersFile(c.Basic.UsersFile, from)
	}
	for _, h := range c.Bearer.TokensSHA256 {
		d, _ := control.ParseTokenHash(h) // valid: checked above
		s.tokens = append(s.tokens, d)
	}
	if len(errs) == 0 && len(s.users) == 0 && len(s.tokens) == 0 {
		errs = append(errs, fmt.Errorf("basic.users_file: %s holds no user, and no other credentials are set", c.Basic.UsersFile))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	realm := c.Realm
	if realm == "" {
		realm = DefaultRealm
	}
	if len(s.users) > 0 {
		s.challenge = append(s.challenge, `Basic realm="`+realm+`", charset="UTF-8"`)
	}
	if len(s.tokens) > 0 {
		s.challenge = append(s.challenge, `Bearer realm="`+realm+`"`)
	}
	s.challenge = s.challenge[:len(s.challenge):len(s.challenge)]
	if _, err := rand.Read(s.key[:]); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	s.cache.m = make(map[[sha256.Size]byte]struct{})
	return s, nil
}

// readUsersFile adds the users of an htpasswd file and returns every
// problem found, each naming the file and line.
func (s *Stage) readUsersFile(path string, from map[string]string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{fmt.Errorf("basic.users_file: %w", err)}
	}
	var errs []error
	n := 0
	for line := range strings.Lines(string(data)) {
		n++
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		where := fmt.Sprintf("%s:%d", path, n)
		user, hash, err := parseUser(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("basic.users_file: %s: %w", where, err))
			continue
		}
		if prev, dup := from[user]; dup {
			errs = append(errs, fmt.Errorf("basic.users_file: %s: user %q is listed twice (also %s)", where, user, prev))
			continue
		}
		s.users[user] = hash
		from[user] = where
		if s.dummy == nil {
			s.dummy = hash
		}
	}
	return errs
}

// Module lets configuration name the stage ("auth"), on HTTP rules.
var Module = pipeline.NewModule(Name, pipeline.HTTPProtocols, New)

// Name implements pipeline.Namer.
func (s *Stage) Name() string { return Name }

// Handle implements pipeline.Stage: it calls next if the request carries
// credentials the stage accepts, and returns a 401 *pipeline.Reject
// otherwise.
func (s *Stage) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	r := x.Request
	if r == nil {
		return s.refuse(ErrMissing) // not an HTTP exchange: fail closed
	}
	vals := r.Header["Authorization"]
	if len(vals) != 1 {
		return s.refuse(ErrMissing)
	}
	if err := s.check(ctx, vals[0]); err != nil {
		if err == ErrBusy {
			return &pipeline.Reject{Status: http.StatusServiceUnavailable, RetryAfter: time.Second,
				Message: "too many logins being checked, retry", Err: err}
		}
		return s.refuse(err)
	}
	if !s.forward {
		delete(r.Header, "Authorization")
	}
	return next.Handle(ctx, x)
}

// refuse is the 401 answer. The challenge's values are shared by every
// refusal (clipped, so that appending to them copies); the map is each
// refusal's own.
func (s *Stage) refuse(cause error) error {
	return &pipeline.Reject{
		Status:  http.StatusUnauthorized,
		Message: "authentication required",
		Header:  http.Header{"Www-Authenticate": s.challenge},
		Err:     cause,
	}
}

// check returns nil if the Authorization value v holds accepted
// credentials.
func (s *Stage) check(ctx context.Context, v string) error {
	scheme, cred, _ := strings.Cut(v, " ")
	cred = strings.TrimSpace(cred)
	switch {
	case cred == "":
		return ErrMissing
	case strings.EqualFold(scheme, "Basic") && len(s.users) > 0:
		return s.checkBasic(ctx, cred)
	case strings.EqualFold(scheme, "Bearer") && len(s.tokens) > 0:
		if s.checkBearer(cred) {
			return nil
		}
		return ErrInvalid
	}
	return ErrMissing
}

// stackCreds is how long credentials may be and still be checked without
// allocating; longer ones are checked all the same.
const stackCreds = 512

// passwordChecks bounds the bcrypt comparisons under way in the process,
// every auth stage together, to one per CPU: bcrypt is slow on purpose (a
// hundred milliseconds of CPU at cost 10), and unbounded, a few dozen
// password guessers at once would take every core from every tenant. A
// check waits for a slot up to passwordWait (or while its request lives),
// then is refused with ErrBusy, unchecked; admitted credentials are
// cached, so users already in pass without one.
var passwordChecks = make(chan struct{}, runtime.GOMAXPROCS(0))

// passwordWait is how long a password check waits for a slot.
const passwordWait = 2 * time.Second

// passwordSlot takes a slot of passwordChecks, waiting up to s.wait.
func (s *Stage) passwordSlot(ctx context.Context) bool {
	select {
	case passwordChecks <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(s.wait)
	defer t.Stop()
	select {
	case passwordChecks <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// checkBasic checks base64 "user:password": nil, ErrInvalid or ErrBusy.
func (s *Stage) checkBasic(ctx context.Context, enc string) error {
	// The key, then the decoded credentials: the cache's digest is of
	// both, so that it is of no use outside this stage.
	var sbuf [keyLen + stackCreds]byte
	var ssrc [(stackCreds + 2) / 3 * 4]byte
	buf, src := sbuf[:], ssrc[:]
	if n := base64.StdEncoding.DecodedLen(len(enc)); n > stackCreds {
		buf, src = make([]byte, keyLen+n), make([]byte, len(enc))
	}
	src = src[:copy(src, enc)]
	n, err := base64.StdEncoding.Decode(buf[keyLen:], src)
	if err != nil {
		return ErrInvalid
	}
	copy(buf, s.key[:])
	keyed := buf[:keyLen+n]
	cred := keyed[keyLen:]
	colon := bytes.IndexByte(cred, ':')
	if colon < 0 {
		return ErrInvalid
	}
	digest := sha256.Sum256(keyed)
	if s.cache.has(digest) {
		return nil
	}
	if !s.passwordSlot(ctx) {
		return ErrBusy
	}
	defer func() { <-passwordChecks }()
	hash, known := s.users[string(cred[:colon])]
	if !known {
		hash = s.dummy // the same work as for a wrong password
	}
	if bcrypt.CompareHashAndPassword(hash, cred[colon+1:]) != nil || !known {
		return ErrInvalid
	}
	s.cache.add(digest)
	return nil
}

// checkBearer compares the token's digest with every accepted one, in
// constant time.
func (s *Stage) checkBearer(token string) bool {
	var sbuf [stackCreds]byte
	b := sbuf[:]
	if len(token) > len(b) {
		b = make([]byte, len(token))
	}
	b = b[:copy(b, token)]
	d := sha256.Sum256(b)
	ok := 0
	for i := range s.tokens {
		ok |= subtle.ConstantTimeCompare(d[:], s.tokens[i][:])
	}
	return ok == 1
}

// cache is the set of admitted credentials' keyed digests, bounded.
type cache struct {
	mu sync.RWMutex
	m  map[[sha256.Size]byte]struct{}
}

func (c *cache) has(d [sha256.Size]byte) bool {
	c.mu.RLock()
	_, ok := c.m[d]
	c.mu.RUnlock()
	return ok
}

// add remembers d, forgetting another entry (the first the map's random
// iteration yields) if the table is full.
func (c *cache) add(d [sha256.Size]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[d]; ok {
		return
	}
	if len(c.m) >= cacheSize {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[d] = struct{}{}
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
