package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/edgeguard"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

// errListenersClosed refuses new rules once the listeners shut down.
var errListenersClosed = errors.New("listeners are shutting down")

// ingressListener is a listener whose connections enter the ingress chain.
type ingressListener interface {
	addr() net.Addr
	serve()
	// stop stops accepting and waits, until ctx is done, for the requests
	// (or TCP connections) in flight; then it closes what is left.
	stop(ctx context.Context) error
	// wait waits for everything the listener started, however long; call
	// it once what its requests depend on (the tunnel) is closed.
	wait()
	// abandon closes a listener that never served.
	abandon()
}

// ingressConfig is what every ingress listener of one side shares (the
// side assembles it: side.go).
type ingressConfig struct {
	chain  pipeline.Handler // the side's ingress chain
	lim    config.Limits    // the side's limits, as it started
	tracer trace.Tracer     // nil: no request spans
	log    *slog.Logger
	access *atomic.Bool // log.access: each request's record at info (changes live)
	// abuse is told of each connection ended for abuse (HTTP/2 rapid reset,
	// CONTINUATION flood) and each request refused for its framing; nil:
	// nobody is.
	abuse func(kind string, remote net.Addr)
	// metrics counts a stage's panic on a TCP connection (net/http
	// recovers those of HTTP requests itself); nil: not counted.
	metrics *metrics.Metrics
}

// abuseReporter is the ingressConfig.abuse of a side: it counts the abuse in
// m and logs it on log at debug, so that an attacker cannot flood the logs
// (qtunnel_ingress_abuse_total shows it).
func abuseReporter(m *metrics.Metrics, log *slog.Logger) func(kind string, remote net.Addr) {
	return func(kind string, remote net.Addr) {
		m.Abuse(kind)
		log.Debug("connection refused for abuse", "kind", kind, "remote", remote.String())
	}
}

// httpListener serves HTTP/1.1 and HTTP/2 (h2c, or h2 by ALPN over TLS).
// Its connections are guarded (internal/edgeguard): the listener
// terminates TLS itself, so that the guard sees plain bytes either way.
type httpListener struct {
	ln      net.Listener
	srv     *http.Server
	handler *ingressHandler
	done    chan struct{}
}

func newHTTPListener(ln net.Listener, key string, certs []tls.Certificate, ic *ingressConfig) *httpListener {
	h := &ingressHandler{chain: ic.chain, listener: key, log: ic.log, access: ic.access, tracer: ic.tracer, abuse: ic.abuse}
	gcfg := edgeguard.Config{
		MaxHeaderBytes: int(ic.lim.MaxHeaderBytes),
		H2MaxResets:    ic.lim.H2MaxResets,
		SendTimeout:    ic.lim.SendTimeout,
		OnAbuse:        ic.abuse,
	}
	if certs == nil {
		ln = withReadAhead(ln) // over TLS, the TLS layer reads ahead
	} else {
		// Certificates are picked by SNI; the rule by Host, as on plain HTTP.
		gcfg.TLS = edgeguard.TLSConfig(certs)
	}
	return &httpListener{ln: edgeguard.NewListener(ln, gcfg), handler: h, srv: newIngressServer(h, ic.lim, ic.log), done: make(chan struct{})}
}

func (l *httpListener) addr() net.Addr { return l.ln.Addr() }

func (l *httpListener) abandon() { _ = l.ln.Close() }

func (l *httpListener) serve() {
	defer close(l.done)
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.handler.log.Error("listener failed", "listen", l.ln.Addr().String(), "err", err)
	}
}

func (l *httpListener) stop(ctx context.Context) error {
	err := l.srv.Shutdown(ctx)
	if err != nil {
		_ = l.srv.Close()
	}
	<-l.done
	waitCtx(ctx, &l.handler.inflight)
	return err
}

// wait waits for handlers that outlived stop: upgraded connections, which
// net/http no longer tracks, end when the tunnel under them closes.
func (l *httpListener) wait() { l.handler.inflight.Wait() }

// tcpListener feeds raw TCP connections of a TCP rule to the ingress chain.
type tcpListener struct {
	ln      net.Listener
	key     string
	chain   pipeline.Handler
	log     *slog.Logger
	access  *atomic.Bool // log.access: each connection's record at info
	metrics *metrics.Metrics
	ctx     context.Context
	stopC   context.CancelFunc

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup // accept loop and connections
}

func newTCPListener(ln net.Listener, key string, ic *ingressConfig) *tcpListener {
	l := &tcpListener{ln: ln, key: key, chain: ic.chain, log: ic.log, access: ic.access, metrics: ic.metrics, conns: map[net.Conn]struct{}{}}
	l.ctx, l.stopC = context.WithCancel(context.Background())
	return l
}

func (l *tcpListener) addr() net.Addr { return l.ln.Addr() }

func (l *tcpListener) abandon() {
	_ = l.ln.Close()
	l.stopC()
}

// serve accepts until the listener closes. Accept errors other than a
// closed listener (out of file descriptors, say) are retried with a growing
// pause, so the loop never spins.
func (l *tcpListener) serve() {
	l.wg.Add(1)
	defer l.wg.Done()
	pause := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.log.Warn("accept failed; retrying", "listen", l.key, "in", pause, "err", err)
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				t.Stop()
				return
			}
			pause = min(2*pause, time.Second)
			continue
		}
		pause = 5 * time.Millisecond
		l.mu.Lock()
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Go(func() { l.handle(c) })
	}
}

func (l *tcpListener) handle(c net.Conn) {
	defer func() {
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
	}()
	defer func() {
		// A stage that panics (a bug, or a stage of yours that expected
		// an HTTP request) ends its connection, not the process: net/http
		// does as much for HTTP requests. The exchange is left to the
		// garbage collector, in whatever state the panic left it.
		if v := recover(); v != nil {
			_ = c.Close()
			l.metrics.CountError(pipeline.Ingress, metrics.KindInternal)
			l.log.Error("a stage panicked on a TCP connection; the connection is closed", "listen", l.key,
				"remote", c.RemoteAddr().String(), "panic", v, "stack", string(debug.Stack()))
		}
	}()
	x := pipeline.Acquire(pipeline.Ingress)
	x.Downstream, x.Listener = c, l.key
	err := l.chain.Handle(l.ctx, x)
	if level, msg := requestRecord(l.access.Load(), "tcp connection"); l.log.Enabled(l.ctx, level) {
		l.log.LogAttrs(l.ctx, level, msg, slog.String("request_id", x.ID),
			slog.String("listen", l.key), slog.String("remote", c.RemoteAddr().String()), slog.String("rule", ruleID(x)),
			slog.Int64("bytes_in", x.BytesIn), slog.Int64("bytes_out", x.BytesOut),
			slog.Duration("took", timeSince(x)), errAttr(err))
	}
	x.Release()
	_ = c.Close()
}

func (l *tcpListener) stop(ctx context.Context) error {
	_ = l.ln.Close()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	// Grace is over: cut what is left.
	l.stopC()
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	<-done
	return ctx.Err()
}

func (l *tcpListener) wait() { l.wg.Wait() }

// waitCtx waits for wg until ctx is done.
func waitCtx(ctx context.Context, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// listenerSet keeps the rule-owned listeners of one side in step with the
// rule table: prepare binds the new ones before anything changes, commit
// starts them and retires the ones no rule needs any more (they drain in the
// background). Safe for concurrent use.
type listenerSet struct {
	listenerSetConfig

	mu      sync.Mutex
	live    map[rules.Listener]ingressListener
	closing bool
	stopped []ingressListener // retired or stopped, for wait
	wg      sync.WaitGroup    // serve loops and drains
}

// listenerSetConfig is what newListenerSet builds a listenerSet from.
type listenerSetConfig struct {
	ingress *ingressConfig    // what the listeners serve with
	certs   []tls.Certificate // for listen_tls rules; none: such a rule is refused
	grace   time.Duration     // how long a retired listener may drain
}

func newListenerSet(c listenerSetConfig) *listenerSet {
	return &listenerSet{listenerSetConfig: c, live: map[rules.Listener]ingressListener{}}
}

// listenError is a listener that could not be bound.
type listenError struct {
	addr string
	err  error
}

func (e *listenError) Error() string { return "listener " + e.addr + ": " + e.err.Error() }
func (e *listenError) Unwrap() error { return e.err }

// pending is a set of listeners bound by prepare and not yet serving.
type pending struct {
	want  []rules.Listener
	bound map[rules.Listener]ingressListener
}

// prepare binds every listener of want that is not live yet. If a bind
// fails it closes what it bound and returns the error: nothing changed. An
// address whose listener changes kind (HTTP, TLS, TCP) is freed first: the
// old listener stops accepting and drains in the background.
func (s *listenerSet) prepare(want []rules.Listener) (*pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, errListenersClosed
	}
	byAddr := map[string]rules.Listener{}
	for k := range s.live {
		byAddr[k.Addr] = k
	}
	p := &pending{want: want, bound: map[rules.Listener]ingressListener{}}
	for _, w := range want {
		if _, ok := s.live[w]; ok {
			continue
		}
		if old, ok := byAddr[w.Addr]; ok {
			s.retireLocked(old)
		}
		if w.TLS && len(s.certs) == 0 {
			s.closeBound(p)
			return nil, fmt.Errorf("listener %s: a listen_tls rule needs a certificate (forward_tls in the client's configuration)", w.Addr)
		}
		ln, err := net.Listen("tcp", w.Addr)
		if err != nil {
			s.closeBound(p)
			return nil, &listenError{addr: w.Addr, err: err}
		}
		p.bound[w] = s.make(w, ln)
	}
	return p, nil
}

func (s *listenerSet) make(w rules.Listener, ln net.Listener) ingressListener {
	if w.Protocol == rules.ProtoTCP {
		return newTCPListener(ln, w.Key(), s.ingress)
	}
	var certs []tls.Certificate
	if w.TLS {
		certs = s.certs
	}
	return newHTTPListener(ln, w.Key(), certs, s.ingress)
}

func (s *listenerSet) closeBound(p *pending) {
	for _, l := range p.bound {
		l.abandon()
	}
}

// commit starts the listeners p bound and retires the live ones it does
// not want.
func (s *listenerSet) commit(p *pending) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		s.closeBound(p)
		return
	}
	wanted := map[rules.Listener]bool{}
	for _, w := range p.want {
		wanted[w] = true
	}
	for k, l := range p.bound {
		s.live[k] = l
		s.wg.Go(l.serve)
	}
	for k := range s.live {
		if !wanted[k] {
			s.retireLocked(k)
		}
	}
}

// retireLocked stops k's listener in the background, within the grace period.
func (s *listenerSet) retireLocked(k rules.Listener) {
	l := s.live[k]
	delete(s.live, k)
	s.stopped = append(s.stopped, l)
	s.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.grace)
		defer cancel()
		if err := l.stop(ctx); err != nil {
			s.ingress.log.Warn("listener did not drain in time", "listen", k.Addr, "err", err)
		}
	})
}

// addr returns the bound address of the live listener on listen, or nil.
func (s *listenerSet) addr(listen string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, l := range s.live {
		if k.Addr == listen {
			return l.addr()
		}
	}
	return nil
}

// count returns the number of live listeners.
func (s *listenerSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

// shutdown stops every listener in parallel: no new connections, requests in
// flight may finish until ctx is done.
func (s *listenerSet) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	live := s.live
	s.live = map[rules.Listener]ingressListener{}
	for _, l := range live {
		s.stopped = append(s.stopped, l)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for k, l := range live {
		wg.Go(func() {
			if err := l.stop(ctx); err != nil {
				s.ingress.log.Warn("listener did not drain in time", "listen", k.Addr, "err", err)
			}
		})
	}
	wg.Wait()
}

// wait waits for every goroutine the set started and every request its
// listeners took; call it after shutdown, once the tunnel is closed.
func (s *listenerSet) wait() {
	s.wg.Wait()
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	for _, l := range stopped {
		l.wait()
	}
}

// loadCerts loads certificate files for TLS listeners.
func loadCerts(files []config.CertFiles) ([]tls.Certificate, error) {
	var out []tls.Certificate
	for _, f := range files {
		c, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", f.CertFile, err)
		}
		out = append(out, c)
	}
	return out, nil
}
