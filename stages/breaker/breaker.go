// Package breaker is the circuit-breaker stage (S11): one circuit per
// upstream (Rule.Upstream, shared by every rule that points there; a rule
// with several upstreams has its own, see Key) that stops sending requests
// to an upstream that keeps failing, answers them 503 at once instead, and
// lets a few probe requests through after a cool-down to find out whether
// it is back.
//
// A circuit is closed (requests pass) until, within the rolling Window,
// failures reach MinRequests and make up at least FailureRatio of the
// answered requests, or ConsecutiveFailures requests in a row fail. It is
// then open for CoolDown: requests are refused with 503 and a Retry-After
// without reaching the next stage. After the cool-down the next request
// moves it to half-open, where HalfOpenProbes requests go through; when
// that many have succeeded it closes, and the first failure opens it for
// another cool-down. Every other request is refused meanwhile.
//
// A failure is an error that pipeline.Answer maps to 502, 503 or 504 (the
// gateway got no whole answer), or, unless Ignore5xx, an answer with a 5xx
// status. The user going away (context.Canceled, pipeline.UserGoneError) and
// refusals with other statuses by later stages count neither way.
//
// The stage keys on Exchange.Rule, so it must come after route, and it
// judges the upstream by what the stages after it return (an error, or an
// answer's head: a body cut later by the upstream is not counted), so it
// must come before egress. The gateway's egress chain:
//
//	observe -> encode -> decode -> limit -> route -> ratelimit -> breaker -> egress
//
// Its place is the egress side, next to the upstream; on the ingress side
// the peer's own refusals (its breaker's 503s) would count against the
// upstream too. Requests without a rule pass unjudged. The stage starts no
// goroutines and holds no timers: the cool-down ends on the first request
// after it.
package breaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/internal/clock"
)

// State is the state of one circuit.
type State uint8

const (
	// Closed lets requests through and counts their failures.
	Closed State = iota
	// Open refuses requests until the cool-down ends.
	Open
	// HalfOpen lets HalfOpenProbes requests through to test the upstream
	// and refuses the rest.
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "unknown"
}

// Config configures the breaker stage. The zero value is the default.
type Config struct {
	// Window is how far back failures are counted, in ten slices of
	// Window/10 each: a failure is forgotten between 0.9 and 1 Window
	// after it happened. It also ends a run of consecutive failures: a
	// failure more than Window after the previous one starts a new run.
	// If zero, 10s.
	Window time.Duration `yaml:"window"`
	// MinRequests is how many failures the Window must hold before
	// FailureRatio can open the circuit, so that a quiet upstream is not
	// cut off by one or two errors. If zero, 5.
	MinRequests int `yaml:"min_requests"`
	// FailureRatio is the share of the Window's answered requests that
	// must have failed (with at least MinRequests failures) to open the
	// circuit. 0 < FailureRatio <= 1; if zero, 0.5.
	FailureRatio float64 `yaml:"failure_ratio"`
	// ConsecutiveFailures opens the circuit after that many failures in
	// a row, whatever the ratio. If zero, 5.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// CoolDown is how long an open circuit refuses requests before it
	// lets probes through. If zero, 10s.
	CoolDown time.Duration `yaml:"cool_down"`
	// HalfOpenProbes is how many requests a half-open circuit lets
	// through, and how many of them must succeed to close it. If zero, 1.
	HalfOpenProbes int `yaml:"half_open_probes"`
	// Ignore5xx stops counting answers with a 5xx status as failures;
	// only the gateway's own failures to get an answer (502, 503, 504
	// errors) then count. By default (false) a 5xx answer is a failure.
	// The status is judged when the next stage returns with the
	// answer's head, before encode (outermost) delivers it; the breaker
	// leaves the answer as it is and judges only the following requests
	// by it.
	Ignore5xx bool `yaml:"ignore_5xx"`
}

// SetDefaults fills every zero setting with its default.
func (c *Config) SetDefaults() {
	if c.Window == 0 {
		c.Window = 10 * time.Second
	}
	if c.MinRequests == 0 {
		c.MinRequests = 5
	}
	if c.FailureRatio == 0 {
		c.FailureRatio = 0.5
	}
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.CoolDown == 0 {
		c.CoolDown = 10 * time.Second
	}
	if c.HalfOpenProbes == 0 {
		c.HalfOpenProbes = 1
	}
}

// Validate checks a configuration (defaulted or not). Errors name the
// setting as in the config file ("cool_down: ...").
func (c *Config) Validate() error {
	var errs []error
	if c.Window < 0 {
		errs = append(errs, fmt.Errorf("window: %v must not be negative", c.Window))
	} else if c.Window > 0 && c.Window < minWindow {
		errs = append(errs, fmt.Errorf("window: %v is shorter than %v", c.Window, minWindow))
	}
	if c.MinRequests < 0 {
		errs = append(errs, fmt.Errorf("min_requests: %d must not be negative", c.MinRequests))
	}
	if !(c.FailureRatio >= 0 && c.FailureRatio <= 1) { // also catches NaN
		errs = append(errs, fmt.Errorf("failure_ratio: %v is outside 0..1", c.FailureRatio))
	}
	if c.ConsecutiveFailures < 0 {
		errs = append(errs, fmt.Errorf("consecutive_failures: %d must not be negative", c.ConsecutiveFailures))
	}
	if c.CoolDown < 0 {
		errs = append(errs, fmt.Errorf("cool_down: %v must not be negative", c.CoolDown))
	}
	if c.HalfOpenProbes < 0 {
		errs = append(errs, fmt.Errorf("half_open_probes: %d must not be negative", c.HalfOpenProbes))
	}
	return errors.Join(errs...)
}

// Option configures a Breaker beyond its Config.
type Option func(*options)

type options struct {
	clock    func() time.Time
	log      *slog.Logger
	onChange func(upstream string, from, to State)
}

// WithClock makes the breaker read the time from now instead of time.Now,
// for deterministic tests. now must be safe for concurrent use.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.clock = now }
}

// WithLogger sets the logger for state changes: one line per change, at
// warn when a circuit opens and at info otherwise. If nil or not given,
// slog.Default(). Nothing is logged per request.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.log = l }
}

// OnStateChange calls fn on every state change of a circuit, for metrics.
// fn runs on the request that caused the change, after the breaker's locks
// are released (it may call State); it must be quick and safe for
// concurrent use. Changes of one circuit are reported in order unless two
// requests change it at the same instant.
func OnStateChange(fn func(upstream string, from, to State)) Option {
	return func(o *options) { o.onChange = fn }
}

// Breaker is the circuit-breaker stage. Safe for concurrent use. It owns no
// goroutines or timers and needs no Close.
type Breaker struct {
	cfg      Config
	width    int64 // one window slice, ns
	clock    clock.Clock
	log      *slog.Logger
	onChange func(upstream string, from, to State)

	mu       sync.RWMutex
	circuits map[string]*circuit // by Key; idle closed circuits are swept

	sweep clock.Sweep // once per Window
}

// New returns a breaker stage, or an error naming every invalid setting.
func New(cfg Config, opts ...Option) (*Breaker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("breaker: %w", err)
	}
	cfg.SetDefaults()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	b := &Breaker{
		cfg:      cfg,
		width:    int64(cfg.Window / slices),
		clock:    clock.New(o.clock),
		log:      o.log,
		onChange: o.onChange,
		circuits: make(map[string]*circuit),
	}
	b.sweep.Start(cfg.Window)
	return b, nil
}

// Name implements pipeline.Namer.
func (b *Breaker) Name() string { return Name }

// Name is the stage's name in the chains' order.
const Name = "breaker"

// Key is the circuit a rule's requests count against: its upstream, shared
// by every rule with the same one. A rule with several upstreams has a
// circuit of its own, keyed by its id (the balancer already takes single
// upstreams out on connect failures; the circuit guards the rule as a
// whole). Ids cannot contain "://", so they never meet an upstream URL.
func Key(r *rules.Rule) string {
	if r.Upstream != "" {
		return r.Upstream
	}
	return r.ID
}

// Handle implements pipeline.Stage.
func (b *Breaker) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Rule == nil {
		return next.Handle(ctx, x)
	}
	off := b.clock.Offset()
	if b.sweep.Due(off) {
		b.forgetIdle(off)
	}
	c := b.acquire(Key(x.Rule))
	gen, probe, ref, tr := c.admit(b, off)
	b.report(tr)
	if ref.refused() {
		c.inflight.Add(-1)
		return ref.reject(b, x.Rule.ID, off)
	}
	err := next.Handle(ctx, x)
	tr = c.done(b, gen, probe, b.judge(ctx, x, err), b.clock.Offset())
	c.inflight.Add(-1)
	b.report(tr)
	return err
}

// State returns the state of the circuit of upstream, a Key ("closed",
// "open", "half-open"), for metrics and tests. An upstream never seen, or whose
// circuit was idle and forgotten, is closed. An open circuit whose
// cool-down is over stays open until the next request moves it to
// half-open.
func (b *Breaker) State(upstream string) string {
	b.mu.RLock()
	c := b.circuits[upstream]
	b.mu.RUnlock()
	if c == nil {
		return Closed.String()
	}
	return stateOf(c.sg.Load()).String()
}

// outcome is what a request says about its upstream.
type outcome uint8

const (
	neutral outcome = iota // says nothing: cancelled, or refused before the upstream
	success
	failure
)

// judge classifies a finished request. The user going away (a cancelled
// context, or encode failing to write to the user) says nothing about the
// upstream. An error that pipeline.Answer maps to 502, 503 or 504 is a
// failure: the gateway could not get a whole answer. Another error (a 4xx
// refusal by a later stage) is neutral unless an answer had arrived, which
// is then judged by its status.
func (b *Breaker) judge(ctx context.Context, x *pipeline.Exchange, err error) outcome {
	if err != nil {
		if pipeline.Classify(err) == pipeline.KindCanceled || errors.Is(ctx.Err(), context.Canceled) {
			return neutral // the user went away: nothing said of the upstream
		}
		switch pipeline.StatusOf(err) {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return failure
		}
		if x.Response == nil {
			return neutral
		}
	}
	if !b.cfg.Ignore5xx {
		status := x.Status
		if x.Response != nil {
			status = x.Response.StatusCode
		}
		if status >= 500 {
			return failure
		}
	}
	return success
}

// acquire returns upstream's circuit, creating it if needed, with one more
// request in flight. The count moves under the map's read lock so that the
// sweep, which holds the write lock, never drops a circuit in use.
func (b *Breaker) acquire(upstream string) *circuit {
	b.mu.RLock()
	c := b.circuits[upstream]
	if c != nil {
		c.inflight.Add(1)
		b.mu.RUnlock()
		return c
	}
	b.mu.RUnlock()
	b.mu.Lock()
	if c = b.circuits[upstream]; c == nil {
		c = &circuit{upstream: strings.Clone(upstream)}
		b.circuits[c.upstream] = c
	}
	c.inflight.Add(1)
	b.mu.Unlock()
	return c
}

// forgetIdle forgets circuits nobody used for a whole window; it runs at
// most once per window, on the request that finds the sweep due. A
// forgotten circuit comes back as a fresh closed one, so a circuit goes
// only when that loses nothing that matters: no request in flight, and
// either closed with no result (so no failure, and no run of consecutive
// failures) within the window, or open with its cool-down over for a
// window (nobody is asking for that upstream any more).
func (b *Breaker) forgetIdle(off int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, c := range b.circuits {
		if c.inflight.Load() == 0 && c.idle(b, off) {
			delete(b.circuits, k)
		}
	}
}

// transition is a state change to report once the locks are released.
type transition struct {
	upstream string
	from, to State
	why      string
}

func (b *Breaker) report(tr *transition) {
	if tr == nil {
		return
	}
	if tr.to == Open && tr.from == Closed {
		b.log.Warn("circuit breaker opened: refusing requests to the upstream",
			"upstream", tr.upstream, "reason", tr.why, "cool_down", b.cfg.CoolDown)
	} else {
		b.log.Info("circuit breaker "+tr.to.String(),
			"upstream", tr.upstream, "from", tr.from.String(), "reason", tr.why)
	}
	if b.onChange != nil {
		b.onChange(tr.upstream, tr.from, tr.to)
	}
}

var _ pipeline.Stage = (*Breaker)(nil)
