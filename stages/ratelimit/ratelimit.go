// Package ratelimit is the stage that bounds the request rate (S17) with
// token buckets (golang.org/x/time/rate) per rule, per client and per source
// address. A request over any limit is answered 429 with a Retry-After of
// the time until that bucket has a token again, and never reaches the
// stages after this one.
//
// The stage keys on Exchange.Rule, so it must come after route, as in the
// gateway's ingress chain:
//
//	observe -> encode -> decode -> limit -> route -> ratelimit -> rule_stages -> request_limit -> egress
//
// Requests without a rule pass unlimited. The per-address limit applies on
// the ingress side only, to the request's source (Exchange.Source, set by
// decode: the TCP peer, or behind a proxy listed in trusted_proxies the
// address it forwarded for; Request.RemoteAddr when no stage set one). On
// the egress side the request arrived over the tunnel, so it is not
// limited by address there. Behind a proxy that is not trusted every user
// shares the proxy's address.
//
// Limits are checked narrowest first (address, then client, then rule) and
// a request refused by one spends no token of the others, so that one
// address flooding a rule exhausts its own bucket and not the rule's.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/internal/clock"
)

// Limit is one token bucket: Rate requests per second on average, with
// bursts of up to Burst at once. The zero value is no limit.
type Limit struct {
	// Rate is the sustained rate in requests per second; fractions are
	// fine (0.5 is one request every two seconds). If zero, no limit.
	Rate float64 `yaml:"rate"`
	// Burst is how many requests may pass at once after a quiet period
	// (the bucket's size). If zero, max(1, ceil(Rate)). Must be zero when
	// Rate is zero.
	Burst int `yaml:"burst"`
}

// maxRate bounds Rate so that the default burst fits any int and the
// message stays readable. A billion requests per second is no limit.
const maxRate = 1e9

// Validate reports a negative, non-finite or incomplete limit.
func (l Limit) Validate() error {
	switch {
	case math.IsNaN(l.Rate) || l.Rate < 0 || l.Rate > maxRate:
		return fmt.Errorf("rate %v is outside 0..%g requests/s", l.Rate, float64(maxRate))
	case l.Burst < 0:
		return fmt.Errorf("burst %d must not be negative", l.Burst)
	case l.Burst > 0 && l.Rate == 0:
		return fmt.Errorf("burst %d without a rate: set rate (requests per second) too, or neither", l.Burst)
	}
	return nil
}

// normalized returns l with its default burst filled in.
func (l Limit) normalized() Limit {
	if l.Rate > 0 && l.Burst == 0 {
		l.Burst = max(1, int(math.Ceil(l.Rate)))
	}
	return l
}

func (l Limit) unlimited() bool { return l.Rate == 0 }

// Config configures the rate-limit stage. The zero value is the default:
// no limits at all.
type Config struct {
	// PerRule limits each rule (keyed by rule id), whoever sends to it.
	// If zero, no limit.
	PerRule Limit `yaml:"per_rule"`
	// PerClient limits each tunnel client: the connection's client id on
	// the egress side, the rule's client on the ingress side. If zero, no
	// limit.
	PerClient Limit `yaml:"per_client"`
	// PerIP limits each source address of a user, on the ingress side
	// only. IPv6 addresses are grouped by IPv6Prefix. If zero, no limit.
	PerIP Limit `yaml:"per_ip"`
	// MaxIPs bounds how many addresses have a bucket at once. When it is
	// reached, the least recently seen address's bucket is dropped (that
	// address starts again with a full burst) rather than refusing new
	// addresses: many addresses must not lock out everyone else. The
	// rule and client limits still apply. If zero, 100000 (about 200 bytes each).
	MaxIPs int `yaml:"max_ips"`
	// IPIdle is how long an address's bucket is kept after its last
	// request. A bucket that refills within IPIdle loses nothing when
	// forgotten. Idle buckets are swept at most every IPIdle/2, by the
	// request that finds the sweep due. If zero, 10m.
	IPIdle time.Duration `yaml:"ip_idle"`
	// IPv6Prefix is how many leading bits of an IPv6 address make one
	// user: a single host usually holds a whole /64. 1..128; if zero, 64.
	IPv6Prefix int `yaml:"ipv6_prefix"`
}

// SetDefaults fills every zero setting with its default.
func (c *Config) SetDefaults() {
	if c.MaxIPs == 0 {
		c.MaxIPs = 100_000
	}
	if c.IPIdle == 0 {
		c.IPIdle = 10 * time.Minute
	}
	if c.IPv6Prefix == 0 {
		c.IPv6Prefix = 64
	}
}

// Validate checks a configuration (defaulted or not). Errors name the
// setting as in the config file ("per_ip.rate: ...").
func (c *Config) Validate() error {
	var errs []error
	for _, l := range []struct {
		name string
		lim  Limit
	}{{"per_rule", c.PerRule}, {"per_client", c.PerClient}, {"per_ip", c.PerIP}} {
		if err := l.lim.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", l.name, err))
		}
	}
	if c.MaxIPs < 0 {
		errs = append(errs, fmt.Errorf("max_ips: %d must not be negative", c.MaxIPs))
	}
	if c.IPIdle < 0 {
		errs = append(errs, fmt.Errorf("ip_idle: %v must not be negative", c.IPIdle))
	}
	if c.IPv6Prefix < 0 || c.IPv6Prefix > 128 {
		errs = append(errs, fmt.Errorf("ipv6_prefix: %d is outside 1..128", c.IPv6Prefix))
	}
	return errors.Join(errs...)
}

// Option configures a Limiter beyond its Config.
type Option func(*options)

type options struct {
	clock func() time.Time
	log   *slog.Logger
}

// WithClock makes the limiter read the time from now instead of time.Now,
// for deterministic tests. now must be safe for concurrent use.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.clock = now }
}

// WithLogger sets the logger for the limiter's rare events (the address
// table filling up). If nil or not given, slog.Default(). Nothing is
// logged per request.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.log = l }
}

// Limiter is the rate-limit stage. Safe for concurrent use. It starts no
// goroutines and holds no timers, so it needs no Close.
type Limiter struct {
	perRule, perClient, perIP Limit // normalized
	idle                      int64 // IPIdle in ns
	v6bits                    int
	clock                     clock.Clock
	log                       *slog.Logger
	sweep                     clock.Sweep // once per IPIdle/2
	ips                       ipTable
	// The maps' locks are written by every request: keep the fields
	// above, read by every request, off their cache lines.
	_ [64]byte

	rules   bucketMap // by rule id
	clients bucketMap // by client id
}

// New returns a rate-limit stage, or an error naming every invalid setting.
func New(cfg Config, opts ...Option) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	cfg.SetDefaults()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	l := &Limiter{
		perRule:   cfg.PerRule.normalized(),
		perClient: cfg.PerClient.normalized(),
		perIP:     cfg.PerIP.normalized(),
		idle:      int64(cfg.IPIdle),
		v6bits:    cfg.IPv6Prefix,
		clock:     clock.New(o.clock),
		log:       o.log,
		rules:     bucketMap{m: make(map[string]*bucket)},
		clients:   bucketMap{m: make(map[string]*bucket)},
	}
	l.ips.init(cfg.MaxIPs)
	l.sweep.Start(cfg.IPIdle / 2)
	return l, nil
}

// Name implements pipeline.Namer.
func (l *Limiter) Name() string { return Name }

// Name is the stage's name in the chains' order.
const Name = "ratelimit"

// Handle implements pipeline.Stage.
func (l *Limiter) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Rule == nil {
		return next.Handle(ctx, x)
	}
	now, off := l.clock.Now()
	if l.sweep.Due(off) {
		l.forgetIdle(now, off)
	}

	var ip *rate.Limiter
	var addr netip.Addr
	if !l.perIP.unlimited() && x.Side == pipeline.Ingress && x.Request != nil {
		if a, ok := l.sourceKey(x); ok {
			addr = a
			ip = l.ips.get(a, off, l.perIP, l)
		}
	}
	var client *bucket
	var cid string
	if !l.perClient.unlimited() {
		if cid = clientID(x); cid != "" {
			client = l.clients.get(cid, off, l.perClient)
		}
	}
	var rule *bucket
	if !l.perRule.unlimited() {
		rule = l.rules.get(x.Rule.ID, off, l.perRule)
	}

	// Look before taking: a request refused by one limit spends no token
	// of another. Two requests racing for the last tokens may still spend
	// a narrower token each; that errs on the strict side.
	if ip != nil {
		if d := delay(ip, now); d > 0 {
			return l.rejectIP(addr, d)
		}
	}
	if client != nil {
		if d := delay(client.rl, now); d > 0 {
			return l.reject("client", cid, client.lim, d)
		}
	}
	if rule != nil {
		if d := delay(rule.rl, now); d > 0 {
			return l.reject("rule", x.Rule.ID, rule.lim, d)
		}
	}
	if ip != nil && !ip.AllowN(now, 1) {
		return l.rejectIP(addr, delay(ip, now))
	}
	if client != nil && !client.rl.AllowN(now, 1) {
		return l.reject("client", cid, client.lim, delay(client.rl, now))
	}
	if rule != nil && !rule.rl.AllowN(now, 1) {
		return l.reject("rule", x.Rule.ID, rule.lim, delay(rule.rl, now))
	}
	return next.Handle(ctx, x)
}

func clientID(x *pipeline.Exchange) string {
	if x.Conn != nil && x.Conn.ClientID != "" {
		return x.Conn.ClientID
	}
	return x.Rule.Client
}

// sourceKey returns the bucket key of x's source: Exchange.Source if set,
// else the address of Request.RemoteAddr.
func (l *Limiter) sourceKey(x *pipeline.Exchange) (netip.Addr, bool) {
	if x.Source.IsValid() {
		return l.keyOf(x.Source), true
	}
	return l.addrKey(x.Request.RemoteAddr)
}

// addrKey returns the bucket key of a RemoteAddr ("ip:port"): the address,
// unmapped, without zone, IPv6 cut to its prefix.
func (l *Limiter) addrKey(remote string) (netip.Addr, bool) {
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		a = ap.Addr()
	} else if a, err = netip.ParseAddr(remote); err != nil {
		return netip.Addr{}, false // not an IP (a unix socket, a test double)
	}
	return l.keyOf(a), true
}

// keyOf is a's bucket key: unmapped, without zone, IPv6 cut to its prefix.
func (l *Limiter) keyOf(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() && l.v6bits < 128 {
		p, _ := a.Prefix(l.v6bits) // cannot fail: bits checked by New
		a = p.Addr()
	}
	return a
}

// delay is how long until rl has a token, 0 if it has one now. It mirrors
// rate.Limiter.AllowN so that "no delay" and "allowed" agree.
func delay(rl *rate.Limiter, now time.Time) time.Duration {
	t := rl.TokensAt(now)
	if t >= 1 {
		return 0
	}
	return time.Duration((1 - t) / float64(rl.Limit()) * float64(time.Second))
}

func (l *Limiter) reject(kind, key string, lim Limit, d time.Duration) error {
	return &pipeline.Reject{
		Status:     http.StatusTooManyRequests,
		Message:    "rate limit of " + kind + " " + strconv.Quote(key) + " exceeded (" + formatRate(lim.Rate) + " requests/s)",
		RetryAfter: clock.RetryAfter(d),
	}
}

func (l *Limiter) rejectIP(addr netip.Addr, d time.Duration) error {
	who := addr.String()
	if addr.Is6() && l.v6bits < 128 {
		who += "/" + strconv.Itoa(l.v6bits)
	}
	return &pipeline.Reject{
		Status:     http.StatusTooManyRequests,
		Message:    "rate limit of address " + who + " exceeded (" + formatRate(l.perIP.Rate) + " requests/s)",
		RetryAfter: clock.RetryAfter(d),
	}
}

func formatRate(r float64) string { return strconv.FormatFloat(r, 'f', -1, 64) }

// forgetIdle forgets idle buckets; it runs at most once per IPIdle/2, on
// the request that finds the sweep due.
func (l *Limiter) forgetIdle(now time.Time, off int64) {
	cutoff := off - l.idle
	l.ips.sweep(cutoff)
	l.rules.sweep(now, cutoff)
	l.clients.sweep(now, cutoff)
}

// bucket is the token bucket of one rule or client.
type bucket struct {
	rl   *rate.Limiter
	lim  Limit
	last atomic.Int64 // offset of the last request, to within a second
}

// bucketMap holds buckets by key, created on first use. The keys are rule
// and client ids, bounded by the rule table and the configured clients;
// buckets idle for IPIdle and full again are swept, which loses nothing.
type bucketMap struct {
	mu sync.RWMutex
	m  map[string]*bucket
}

// get returns key's bucket, creating it with lim (a limit, not Limit{}) if
// it has none.
func (bm *bucketMap) get(key string, off int64, lim Limit) *bucket {
	bm.mu.RLock()
	b := bm.m[key]
	bm.mu.RUnlock()
	if b == nil {
		bm.mu.Lock()
		if b = bm.m[key]; b == nil {
			b = &bucket{rl: rate.NewLimiter(rate.Limit(lim.Rate), lim.Burst), lim: lim}
			bm.m[strings.Clone(key)] = b
		}
		bm.mu.Unlock()
	}
	// Only write the shared word when it moved a second: a hot bucket's
	// cache line stays clean.
	if off-b.last.Load() >= int64(time.Second) {
		b.last.Store(off)
	}
	return b
}

func (bm *bucketMap) sweep(now time.Time, cutoff int64) {
	bm.mu.Lock()
	defer bm.mu.Unlock()
	for k, b := range bm.m {
		if b.last.Load() <= cutoff && b.rl.TokensAt(now) >= float64(b.lim.Burst) {
			delete(bm.m, k)
		}
	}
}

var _ pipeline.Stage = (*Limiter)(nil)
