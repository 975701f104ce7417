// Package admin is the admin HTTP listener of a gateway process (server or
// client): liveness, readiness, Prometheus metrics, the rule set in use and,
// on request, pprof.
//
// It is meant for operators and scrapers, not users: by default it only
// binds loopback addresses, and on any other address it requires a bearer
// token. With a Throttle (WithThrottle), an address that sent too many
// missing or wrong tokens is answered 429 with Retry-After, unchecked.
// Endpoints:
//
//	/healthz       200 "ok" while the process serves HTTP at all; never needs the token
//	/readyz        200 "ready", or 503 with the reason the side is not ready
//	/metrics       the metrics handler (WithMetrics), else 404
//	/config        the view WithConfig returns, as JSON, else 404
//	/debug/pprof/  net/http/pprof, only with Config.Pprof, else 404
//	/ui/           the web page (dashboard, request inspector); the page
//	               itself needs no token, the data it shows does
package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNonLoopback is returned for a listen address that is not loopback
// when no token is set: the admin endpoints reveal the rule set and, with
// pprof, memory contents.
var ErrNonLoopback = errors.New("admin listener on a non-loopback address needs a token")

// Config configures the admin listener. The zero value disables it.
type Config struct {
	// Listen is the TCP address to serve on, typically "127.0.0.1:9090".
	// Empty (the default) disables the admin listener. An address that
	// is not loopback (including ":9090", every interface) needs Token.
	Listen string `yaml:"listen"`
	// Token, if set, is required as "Authorization: Bearer <token>" by
	// every endpoint except /healthz. It is compared in constant time.
	Token string `yaml:"token"`
	// Pprof serves net/http/pprof under /debug/pprof/. Default false:
	// profiles show memory contents and cost CPU while they run.
	Pprof bool `yaml:"pprof"`
}

// Enabled reports whether c asks for an admin listener.
func (c Config) Enabled() bool { return c.Listen != "" }

// Validate checks c without touching the network: Listen must be
// host:port, and a literal address that is not loopback (or an empty host)
// needs a Token. Host names are resolved and checked by Start.
func (c Config) Validate() error {
	if c.Listen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("admin: listen: %q is not host:port", c.Listen)
	}
	if c.Token != "" {
		return nil
	}
	if host == "" {
		return fmt.Errorf("admin: listen %q: %w", c.Listen, ErrNonLoopback)
	}
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil && !ip.IsLoopback() {
		return fmt.Errorf("admin: listen %q: %w", c.Listen, ErrNonLoopback)
	}
	return nil
}

// Timeouts of the admin http.Server. Scrapes and probes are small; only a
// CPU profile or trace runs long, for as many seconds as it is asked for.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	pprofWriteTimeout = 2 * time.Minute
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
)

// Option customises a Server.
type Option func(*options)

type options struct {
	metrics  http.Handler
	ready    func() error
	config   func() any
	handlers []extra
	log      *slog.Logger
	throttle Throttle
}

type extra struct {
	pattern string
	h       http.Handler
}

// WithMetrics serves h on /metrics, such as metrics.Metrics.Handler().
func WithMetrics(h http.Handler) Option { return func(o *options) { o.metrics = h } }

// WithReady sets the readiness check of /readyz: nil means ready, an error
// is answered 503 with its text. It is called on every /readyz request, so
// it must be cheap and safe for concurrent use. Without it the process is
// always ready.
func WithReady(f func() error) Option { return func(o *options) { o.ready = f } }

// WithConfig serves f's result on /config as JSON: a view of the rules and
// version in use. Admin shows it as it is; f must leave out secrets
// (tokens, token hashes, credentials in upstream URLs). It is called on
// every /config request and must be safe for concurrent use.
func WithConfig(f func() any) Option { return func(o *options) { o.config = f } }

// WithHandler serves h on pattern (http.ServeMux syntax, such as
// "GET /rules/{id}"), behind the token like every endpoint but /healthz.
// New fails if pattern conflicts with another endpoint.
func WithHandler(pattern string, h http.Handler) Option {
	return func(o *options) { o.handlers = append(o.handlers, extra{pattern, h}) }
}

// WithLogger sets the logger. Default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Throttle limits token guessing per source address. With a token set,
// every request that needs it asks Allow first; a refused request is
// answered 429 with Retry-After, its token unchecked. A missing or wrong
// token is reported to Failed, the right one to Succeeded. The throttle
// logs and counts what it refuses. Its methods must be safe for concurrent
// use.
type Throttle interface {
	Allow(src netip.Addr) (retryAfter time.Duration, ok bool)
	Failed(src netip.Addr)
	Succeeded(src netip.Addr)
}

// WithThrottle throttles failed token checks with t (the gateway passes
// one built from the auth_throttle settings). Without it, every request
// is checked.
func WithThrottle(t Throttle) Option { return func(o *options) { o.throttle = t } }

// Server is the admin listener. Create it with New; Start binds and serves,
// Shutdown stops. Its methods are safe for concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	handler  http.Handler
	token    atomic.Pointer[[sha256.Size]byte] // hash of the token; nil when none is set
	throttle Throttle                          // nil: none

	mu       sync.Mutex
	ln       net.Listener
	srv      *http.Server
	served   chan struct{} // closed when Serve returns
	inflight sync.WaitGroup
	started  bool
	closed   bool // set by Shutdown: no handler may start any more
}

// New checks cfg and builds the admin endpoints; it binds nothing. With
// cfg.Listen empty it returns a Server whose Start and Shutdown do nothing.
func New(cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{cfg: cfg, log: o.log, throttle: o.throttle}
	if cfg.Token != "" {
		h := sha256.Sum256([]byte(cfg.Token))
		s.token.Store(&h)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	ready := o.ready
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				writeText(w, http.StatusServiceUnavailable, err.Error())
				return
			}
		}
		writeText(w, http.StatusOK, "ready")
	})
	if o.metrics != nil {
		mux.Handle("GET /metrics", o.metrics)
	}
	if o.config != nil {
		mux.Handle("GET /config", configHandler(o.config))
	}
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	ui := uiHandler()
	mux.Handle("GET /ui/", ui)
	mux.Handle("GET /ui", ui)
	for _, e := range o.handlers {
		if err := handle(mux, e.pattern, e.h); err != nil {
			return nil, err
		}
	}
	s.handler = s.guard(mux)
	return s, nil
}

// handle is mux.Handle, with its panics on bad or conflicting patterns
// turned into errors.
func handle(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	if h == nil {
		return fmt.Errorf("admin: handler for %q is nil", pattern)
	}
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("admin: handler for %q: %v", pattern, v)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

func configHandler(view func() any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(view()); err != nil {
			writeText(w, http.StatusInternalServerError, "cannot encode the configuration: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(buf.Bytes())
	})
}

func writeText(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body + "\n"))
}

// SetToken changes the token, at once, for the requests that follow (a
// reloaded configuration). An empty token turns the check off, which is
// refused (ErrNonLoopback) for a listener that is not loopback-only.
func (s *Server) SetToken(token string) error {
	c := s.cfg
	c.Token = token
	if err := c.Validate(); err != nil {
		return err
	}
	if token == "" {
		s.mu.Lock()
		ln := s.ln
		s.mu.Unlock()
		if ln != nil {
			if ta, ok := ln.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
				return fmt.Errorf("admin: listening on %s: %w", ln.Addr(), ErrNonLoopback)
			}
		}
		s.token.Store(nil)
		return nil
	}
	h := sha256.Sum256([]byte(token))
	s.token.Store(&h)
	return nil
}

// guard adds the headers every admin answer carries, checks the token and
// counts the requests in flight, so that Shutdown can wait for them.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Counted under the lock, so that no Add races Shutdown's Wait.
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			writeText(w, http.StatusServiceUnavailable, "shutting down")
			return
		}
		s.inflight.Add(1)
		s.mu.Unlock()
		defer s.inflight.Done()
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		if s.token.Load() != nil && r.URL.Path != "/healthz" && !uiPath(r.URL.Path) && !s.checkToken(w, r) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// checkToken answers r itself and returns false unless it carries the
// token: 401 for a missing or wrong one, 429 without a check when the
// throttle refuses its source.
func (s *Server) checkToken(w http.ResponseWriter, r *http.Request) bool {
	var src netip.Addr
	if s.throttle != nil {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			src = ap.Addr().Unmap()
		}
		if wait, ok := s.throttle.Allow(src); !ok {
			secs := int64((wait + time.Second - 1) / time.Second) // rounded up: not before
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
			writeText(w, http.StatusTooManyRequests, fmt.Sprintf("too many failed logins from this address; retry in %ds", secs))
			return false
		}
	}
	if !s.authorized(r) {
		if s.throttle != nil {
			s.throttle.Failed(src)
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="qtunnel admin"`)
		writeText(w, http.StatusUnauthorized, "missing or wrong bearer token")
		return false
	}
	if s.throttle != nil {
		s.throttle.Succeeded(src)
	}
	return true
}

// authorized reports whether r carries the token. Both sides are hashed
// first, so that the comparison takes the same time whatever the length
// of the guess.
func (s *Server) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	want := s.token.Load()
	if want == nil {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// Handler returns the admin endpoints with the token check, as served by
// Start: for serving them on a listener of your own, or in tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Enabled reports whether the server has an address to listen on.
func (s *Server) Enabled() bool { return s.cfg.Enabled() }

// Start binds the listener and serves in a goroutine until Shutdown. ctx
// bounds resolving and binding the address only. Without a token, every
// address Listen resolves to, and the bound address, must be loopback, or
// Start returns ErrNonLoopback. Start does nothing when the listener is
// disabled, and fails if called twice.
func (s *Server) Start(ctx context.Context) error {
	if !s.Enabled() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("admin: already started")
	}
	if s.cfg.Token == "" {
		if err := checkLoopback(ctx, s.cfg.Listen); err != nil {
			return err
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	if s.cfg.Token == "" {
		if ta, ok := ln.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
			_ = ln.Close()
			return fmt.Errorf("admin: listen %q bound %s: %w", s.cfg.Listen, ln.Addr(), ErrNonLoopback)
		}
	}
	wt := writeTimeout
	if s.cfg.Pprof {
		wt = pprofWriteTimeout
	}
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      wt,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.ln, s.started = ln, true
	s.served = make(chan struct{})
	srv, served := s.srv, s.served
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener failed", "err", err)
		}
	}()
	s.log.Info("admin listening", "addr", ln.Addr().String(), "token", s.cfg.Token != "", "pprof", s.cfg.Pprof)
	return nil
}

// checkLoopback resolves the host of addr and fails unless every address
// it names is loopback.
func checkLoopback(ctx context.Context, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin: listen: %q is not host:port", addr)
	}
	refuse := fmt.Errorf("admin: listen %q: %w", addr, ErrNonLoopback)
	if host == "" {
		return refuse
	}
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil {
		if !ip.IsLoopback() {
			return refuse
		}
		return nil
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return fmt.Errorf("admin: listen %q: %w", addr, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return refuse
		}
	}
	return nil
}

// Addr returns the bound address, or nil before Start or when disabled.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops the listener, lets requests in flight finish until ctx is
// done, then closes what is left, and waits for the serving goroutine and
// every handler (which end once their connections are closed; handlers
// must honour their request's context). It returns ctx's error if it had
// to force, and nil if the server was never started.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv, served := s.srv, s.served
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		_ = srv.Close()
	}
	<-served
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.inflight.Wait()
	if err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}
