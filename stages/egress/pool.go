package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/rules"
)

// PoolConfig configures the upstream connection pool (A5, S10). The zero
// value is the default.
type PoolConfig struct {
	// WarmConns is how many connections are opened to each upstream when
	// its rule is installed, before its first request. If zero, 2; negative
	// turns warm-up off.
	WarmConns int `yaml:"warm_conns"`
	// MaxConnsPerUpstream bounds the connections to one upstream; requests
	// beyond it wait for a free connection. If zero, 512.
	MaxConnsPerUpstream int `yaml:"max_conns_per_upstream"`
	// MaxIdlePerUpstream bounds the idle connections kept for reuse. If
	// zero, 128.
	MaxIdlePerUpstream int `yaml:"max_idle_per_upstream"`
	// IdleTimeout closes connections idle this long. If zero, 90s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// DialTimeout bounds connecting to an upstream. If zero, 10s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ResponseHeaderTimeout bounds the wait for an upstream's response head
	// after the request was sent (S19). If zero, 30s.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	// EjectTime is how long an upstream stays out of rotation after
	// failing to connect several times in a row (passive ejection), when
	// its rule has no health check; with one, it stays out until its next
	// good check. If zero, 10s.
	EjectTime time.Duration `yaml:"eject_time"`
	// Logger receives warm-up failures and the changes of upstream health
	// (warn when an upstream goes out of rotation, info when it is back).
	// If nil, slog.Default().
	Logger *slog.Logger `yaml:"-"`
}

// SetDefaults fills every zero setting with its default.
func (c *PoolConfig) SetDefaults() {
	if c.WarmConns == 0 {
		c.WarmConns = 2
	}
	if c.MaxConnsPerUpstream == 0 {
		c.MaxConnsPerUpstream = 512
	}
	if c.MaxIdlePerUpstream == 0 {
		c.MaxIdlePerUpstream = 128
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 90 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.ResponseHeaderTimeout == 0 {
		c.ResponseHeaderTimeout = 30 * time.Second
	}
	if c.EjectTime == 0 {
		c.EjectTime = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Pool holds one managed set of connections per upstream, keyed by the
// upstream's scheme, host and protocol, and shared by every rule that points
// there. Connections are kept alive and reused; new upstreams are warmed.
//
// Each HTTP rule gets a balancer over the targets of its upstreams (see
// balance.go): round robin or least requests, skipping upstreams that fail
// their health checks or were ejected after connection failures. The pool
// owns the health checkers; Retain stops those, and closes the targets, that
// the current rules no longer need, and Close stops them all.
//
// Safe for concurrent use.
type Pool struct {
	cfg     PoolConfig
	mu      sync.RWMutex
	targets map[targetKey]*Target
	members map[memberKey]*member
	groups  map[string]*group    // by rule id
	tcp     map[string]*tcpConns // by rule id: TCP rules' connections, which are not pooled
	closed  bool
}

type targetKey struct {
	upstream string
	http2    bool
	caFile   string
	sni      string
	insecure bool
}

// keyOf is the key of upstream, one of r's upstreams.
func keyOf(r *rules.Rule, upstream string) targetKey {
	return targetKey{upstream, r.UpstreamHTTP2, r.UpstreamCAFile, r.UpstreamServerName, r.UpstreamTLSInsecureSkipVerify}
}

// NewPool returns an empty pool.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.MaxConnsPerUpstream < 0 || cfg.MaxIdlePerUpstream < 0 || cfg.IdleTimeout < 0 || cfg.DialTimeout < 0 ||
		cfg.ResponseHeaderTimeout < 0 || cfg.EjectTime < 0 {
		return nil, errors.New("egress pool: limits and timeouts must not be negative")
	}
	cfg.SetDefaults()
	return &Pool{cfg: cfg, targets: make(map[targetKey]*Target), members: make(map[memberKey]*member),
		groups: make(map[string]*group), tcp: make(map[string]*tcpConns)}, nil
}

// Target is one upstream: its base URL and its connection pool.
type Target struct {
	base *url.URL
	addr string // base's host:port, the port defaulted from the scheme
	rt   *http.Transport
	h1   *h1Client // plain-HTTP/1.1 upstreams only
	// warm holds connections dialled ahead of the first request; dial
	// hands them out before dialling new ones.
	warm   chan *warmConn
	dialer net.Dialer
	closed atomic.Bool // set by close; warm-up parks nothing after it
	// inflight counts the requests of every rule in flight on this
	// upstream, from sending to the end of the answer (least_requests).
	inflight atomic.Int64
	// dials counts the connections opened to the upstream (warm ones
	// included); open those of them not closed yet (see countedConn).
	dials atomic.Uint64
	open  atomic.Int64
}

type warmConn struct {
	net.Conn
	at time.Time
}

// ErrPoolClosed is returned by Get after Close.
var ErrPoolClosed = errors.New("egress pool closed")

// Get returns the target for r's upstream, creating it on first use. For
// a rule with several upstreams it is the one the rule's balancer picks
// next (without counting a request in flight on it).
func (p *Pool) Get(r *rules.Rule) (*Target, error) {
	g, err := p.group(r)
	if err != nil {
		return nil, err
	}
	_, m := g.pick(0)
	return m.t, nil
}

// target returns the target of upstream, one of r's upstreams, creating
// it. p.mu is held.
func (p *Pool) target(r *rules.Rule, upstream string) (*Target, error) {
	k := keyOf(r, upstream)
	if t, ok := p.targets[k]; ok {
		return t, nil
	}
	base, err := rules.ParseUpstream(upstream)
	if err != nil {
		return nil, err
	}
	tlsConf, err := upstreamTLS(r)
	if err != nil {
		return nil, err
	}
	if r.UpstreamTLSInsecureSkipVerify {
		p.cfg.Logger.Warn("TLS VERIFICATION IS OFF for this upstream: anyone on the path can read and change its traffic",
			"rule", r.ID, "upstream", upstream)
	}
	t := p.newTarget(base, r.UpstreamHTTP2, tlsConf)
	p.targets[k] = t
	return t, nil
}

// upstreamTLS is the TLS configuration for an https:// upstream: the
// system's roots or the rule's CA file, the rule's server name, and only
// with the loudly named setting no verification at all.
func upstreamTLS(r *rules.Rule) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.UpstreamServerName,
		InsecureSkipVerify: r.UpstreamTLSInsecureSkipVerify} // #nosec G402 -- opt-in per rule, logged as a warning
	if r.UpstreamCAFile != "" {
		pem, err := os.ReadFile(r.UpstreamCAFile)
		if err != nil {
			return nil, fmt.Errorf("rule %q: upstream_ca_file: %w", r.ID, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("rule %q: upstream_ca_file %s holds no PEM certificate", r.ID, r.UpstreamCAFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}

func (p *Pool) newTarget(base *url.URL, h2 bool, tlsConf *tls.Config) *Target {
	c := p.cfg
	t := &Target{base: base, addr: hostPort(base), dialer: net.Dialer{Timeout: c.DialTimeout, KeepAlive: 30 * time.Second}}
	if c.WarmConns > 0 {
		t.warm = make(chan *warmConn, c.WarmConns)
	}
	var protos http.Protocols
	switch {
	case h2 && base.Scheme == "http":
		protos.SetUnencryptedHTTP2(true)
	case h2:
		protos.SetHTTP2(true)
	default:
		protos.SetHTTP1(true)
		if base.Scheme == "https" {
			protos.SetHTTP2(true)
		}
	}
	t.rt = &http.Transport{
		Proxy:                 nil, // never route upstream traffic through an environment proxy
		DialContext:           t.dial,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   c.DialTimeout,
		DisableCompression:    true, // pass bodies through as the upstream encoded them
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   c.MaxIdlePerUpstream,
		MaxConnsPerHost:       c.MaxConnsPerUpstream,
		IdleConnTimeout:       c.IdleTimeout,
		ResponseHeaderTimeout: c.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		Protocols:             &protos,
	}
	if base.Scheme == "http" && !h2 {
		t.h1 = newH1Client(t.addr, t.dial, c)
	}
	return t
}

// hostPort is u's host and port, the port defaulted from its scheme.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// dialTCP connects a TCP rule's upstream, bounded by the dial timeout.
func (p *Pool) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: 30 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// RoundTrip sends req to the upstream.
func (t *Target) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.h1 != nil && t.h1.handles(req) {
		return t.h1.roundTrip(req)
	}
	return t.rt.RoundTrip(req)
}

// dial hands out a warm connection that is still alive, or dials a new one.
// Its errors are *dialError: the request did not leave.
func (t *Target) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	for {
		select {
		case c := <-t.warm:
			if time.Since(c.at) < 60*time.Second && alive(c.Conn) {
				return c.Conn, nil
			}
			_ = c.Close()
			continue
		default:
		}
		c, err := t.dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{err}
		}
		return t.track(c, false), nil
	}
}

// track counts c, just dialled (ahead of any request if warm), as a
// connection of t until it is closed.
func (t *Target) track(c net.Conn, warm bool) net.Conn {
	t.dials.Add(1)
	t.open.Add(1)
	return &countedConn{Conn: c, open: &t.open, warm: warm}
}

// countedConn is an upstream connection the pool dialled. Whoever closes
// it (the lean client, net/http's Transport, the warm-up, a drain) takes it
// off its target's count of open connections, once. One is made per dial,
// never per request.
type countedConn struct {
	net.Conn
	open   *atomic.Int64
	closed atomic.Bool
	// warm: dialled ahead and parked. Like a kept-alive connection, the
	// upstream may have closed it while it waited, so a request that fails
	// on it before any answer may go again on a new one. Read-only.
	warm bool
}

// NetConn returns the connection it counts, for a look at its socket.
func (c *countedConn) NetConn() net.Conn { return c.Conn }

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.open.Add(-1)
	}
	return c.Conn.Close()
}

// conns returns how many of t's connections are idle and how many active
// (see Pool.Stats): active is the smaller of the connections open and not
// parked by the pool (warm, or idle in the lean client) and the requests
// in flight; idle is the rest of the open ones.
func (t *Target) conns() (idle, active int) {
	open := max(t.open.Load(), 0)
	parked := int64(len(t.warm))
	if t.h1 != nil {
		parked += int64(t.h1.idleConns())
	}
	busy := min(max(open-parked, 0), max(t.inflight.Load(), 0))
	return int(open - busy), int(busy)
}

// dialError marks a failure to connect: nothing of the request was sent,
// so it can go to another upstream whatever its method and body. Both the
// lean client and net/http's Transport return the dialer's error as is.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// isConnectError reports whether err says the request never left: the
// dial failed, or the target was closed before it could dial.
func isConnectError(err error) bool {
	var de *dialError
	return errors.As(err, &de) || errors.Is(err, errClientClosed)
}

// warmUp dials up to n connections to t, each bounded by the dial timeout,
// and parks them for the first requests.
func (t *Target) warmUp(ctx context.Context, n int) error {
	if t.warm == nil {
		return nil
	}
	for range min(n, cap(t.warm)-len(t.warm)) {
		c, err := t.dialer.DialContext(ctx, "tcp", t.addr)
		if err != nil {
			return fmt.Errorf("warm up %s: %w", t.base.Redacted(), err)
		}
		c = t.track(c, true)
		if t.closed.Load() {
			_ = c.Close()
			return nil
		}
		select {
		case t.warm <- &warmConn{Conn: c, at: time.Now()}:
		default:
			_ = c.Close()
			return nil
		}
		if t.closed.Load() {
			t.drainWarm() // close raced with the park above
			return nil
		}
	}
	return nil
}

// Warm makes ready the upstreams of each HTTP rule in rs whose direction
// is dir: it builds the rule's balancer, which starts its health checks,
// and opens WarmConns connections to each upstream. Failures are logged,
// not returned: an upstream that is down now may be up by its first
// request. It returns within the pool's DialTimeout, or when ctx ends.
func (p *Pool) Warm(ctx context.Context, rs []rules.Rule, dir rules.Direction) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	var wg sync.WaitGroup
	seen := make(map[*Target]bool)
	for i := range rs {
		r := &rs[i]
		if r.Direction != dir || r.Protocol == rules.ProtoTCP {
			continue
		}
		g, err := p.group(r)
		if err != nil || p.cfg.WarmConns <= 0 {
			continue
		}
		for _, m := range g.members {
			t := m.t
			if seen[t] {
				continue
			}
			seen[t] = true
			wg.Go(func() {
				if err := t.warmUp(ctx, p.cfg.WarmConns); err != nil {
					p.cfg.Logger.Warn("upstream warm-up failed", "rule", r.ID, "err", err)
				}
			})
		}
	}
	wg.Wait()
}

// Close stops the health checks, closes every idle and warm connection and
// refuses new targets. Requests in flight keep their connections until they
// finish.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	targets, members := p.targets, p.members
	p.targets, p.members, p.groups = map[targetKey]*Target{}, map[memberKey]*member{}, map[string]*group{}
	p.tcp = map[string]*tcpConns{}
	p.mu.Unlock()
	stopMembers(slices.Collect(maps.Values(members)))
	for _, t := range targets {
		t.close()
	}
}

func (t *Target) close() {
	t.closed.Store(true)
	t.rt.CloseIdleConnections()
	if t.h1 != nil {
		t.h1.close()
	}
	t.drainWarm()
}

func (t *Target) drainWarm() {
	for {
		select {
		case c := <-t.warm:
			_ = c.Close()
		default:
			return
		}
	}
}

// Warm returns the number of warm connections waiting for a first request.
func (t *Target) Warm() int { return len(t.warm) }

// prepare points req at the target: scheme and host of the upstream, its base
// path joined with the request's path.
func (t *Target) prepare(req *http.Request, hostHeader string) {
	u := req.URL
	u.Scheme = t.base.Scheme
	u.Host = t.base.Host
	if bp := t.base.Path; bp != "" && bp != "/" {
		u.Path = joinPath(bp, u.Path)
		if u.RawPath != "" {
			u.RawPath = joinPath(t.base.EscapedPath(), u.RawPath)
		}
	}
	if hostHeader != "" {
		req.Host = hostHeader
	}
}

func joinPath(a, b string) string {
	switch {
	case strings.HasSuffix(a, "/") && strings.HasPrefix(b, "/"):
		return a + b[1:]
	case !strings.HasSuffix(a, "/") && !strings.HasPrefix(b, "/"):
		return a + "/" + b
	}
	return a + b
}
