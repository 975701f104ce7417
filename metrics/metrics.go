// Package metrics holds the Prometheus metrics of one gateway process (a
// server or a client): the requests through both of its chains, its tunnel
// connections, its control plane and its egress pools.
//
// Every label set is bounded by configuration, never by traffic: rule ids,
// client ids, the direction ("reverse", "forward"), the side ("ingress",
// "egress"), the protocol, a status class ("2xx") and small fixed sets of
// kinds and reasons. Hosts, paths, addresses and upstream URLs are never
// labels: a scanner must not be able to grow the series count.
//
// A Metrics owns its own *prometheus.Registry; nothing is registered
// globally, so two sides in one process (tests, the demo) do not collide.
package metrics

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

// Namespace prefixes every metric of this package ("qtunnel_requests_total").
const Namespace = "qtunnel"

// NoRule is the rule label of an exchange that matched no rule (a 404, or a
// request refused before routing).
const NoRule = "none"

// DurationBuckets are the buckets of qtunnel_request_duration_seconds, in
// seconds: 100µs to 30s, about three per decade.
var DurationBuckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5,
	10, 30,
}

// ApplyBuckets are the buckets of qtunnel_config_apply_duration_seconds:
// 1ms to 10s. Applying a rule set is rare and much slower than a request.
var ApplyBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}

// ErrorKind says why an exchange failed; it is the kind label of
// qtunnel_errors_total, and pipeline.Classify gives it.
type ErrorKind = pipeline.Kind

// Error kinds: pipeline's, for CountError.
const (
	KindRejected = pipeline.KindRejected
	KindUpstream = pipeline.KindUpstream
	KindTunnel   = pipeline.KindTunnel
	KindTimeout  = pipeline.KindTimeout
	KindOverload = pipeline.KindOverload
	KindCanceled = pipeline.KindCanceled
	KindInternal = pipeline.KindInternal
	numKinds     = pipeline.NumKinds
)

// BreakerState is the state of a circuit breaker, the value of
// qtunnel_breaker_state.
type BreakerState int

// Breaker states, in order of severity.
const (
	BreakerClosed   BreakerState = 0
	BreakerHalfOpen BreakerState = 1
	BreakerOpen     BreakerState = 2
)

// numSides covers pipeline.Side values 0 (unknown), Ingress and Egress.
const numSides = 3

// Metrics is every metric of one gateway process. Create it with New; it is
// safe for concurrent use. A nil *Metrics records nothing, so that a side
// built without metrics needs no checks.
type Metrics struct {
	reg  *prometheus.Registry
	role string

	requests     *prometheus.CounterVec   // rule, direction, side, protocol, code_class
	duration     *prometheus.HistogramVec // rule, direction, side, protocol
	inflight     *prometheus.GaugeVec     // side
	errors       *prometheus.CounterVec   // side, kind
	bytesIn      *prometheus.CounterVec   // rule, direction, side
	bytesOut     *prometheus.CounterVec   // rule, direction, side
	stageRejects *prometheus.CounterVec   // stage, reason
	breaker      *prometheus.GaugeVec     // upstream_rule
	applies      *prometheus.CounterVec   // result

	tunnelConns   prometheus.Gauge
	streamsActive prometheus.Gauge
	configVersion prometheus.Gauge
	applyDuration prometheus.Histogram
	reconnects    prometheus.Counter
	updatesSent   *prometheus.CounterVec // kind: delta, snapshot
	sessions      prometheus.Gauge

	// Children resolved up front or once, so that the hot path looks no
	// labels up.
	sides      [numSides]atomic.Pointer[sideSeries]
	appliesOK  prometheus.Counter
	appliesBad prometheus.Counter

	// reqCache maps reqKey to *reqSeries; bytesCache maps byteKey to
	// *byteSeries. Both only grow with label sets that exist anyway in the
	// vectors above; ForgetRule prunes them.
	reqCache   sync.Map
	bytesCache sync.Map

	conns connCollector
	pools poolCollector
	auth  authSeries
	abuse abuseSeries
}

// sideSeries are the children of one side label value.
type sideSeries struct {
	inflight prometheus.Gauge
	errors   [numKinds]prometheus.Counter
}

// New returns the metrics of one gateway process. role is "server" or
// "client"; it is exported as qtunnel_info{role="..."} 1 (the per-exchange
// side label, ingress or egress, comes from each exchange, since one process
// runs both chains). The registry also holds the Go runtime and process
// collectors.
func New(role string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), role: role}
	f := factory{m.reg}

	info := f.gaugeVec("info", "Always 1; role says whether this process is a tunnel server or client.", "role")
	info.WithLabelValues(role).Set(1)

	m.requests = f.counterVec("requests_total",
		"Exchanges finished, by rule, rule direction, side, protocol and status class of the answer.",
		"rule", "direction", "side", "protocol", "code_class")
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "request_duration_seconds",
		Help:    "Time from accepting an exchange to the end of its chain (the answer fully written), in seconds.",
		Buckets: DurationBuckets,
	}, []string{"rule", "direction", "side", "protocol"})
	m.reg.MustRegister(m.duration)
	m.inflight = f.gaugeVec("requests_in_flight", "Exchanges in a chain right now.", "side")
	m.errors = f.counterVec("errors_total", "Exchanges that ended with an error, by side and kind.", "side", "kind")
	m.bytesIn = f.counterVec("bytes_received_total",
		"Body bytes received from the requester (the user on the ingress side, the tunnel on the egress side).",
		"rule", "direction", "side")
	m.bytesOut = f.counterVec("bytes_sent_total",
		"Body bytes sent back towards the requester.", "rule", "direction", "side")
	m.stageRejects = f.counterVec("stage_rejects_total", "Exchanges a stage refused, by stage and reason.", "stage", "reason")
	m.breaker = f.gaugeVec("breaker_state", "Circuit breaker state of a rule's upstream: 0 closed, 1 half-open, 2 open.", "upstream_rule")
	m.applies = f.counterVec("config_applies_total", "Rule set applications, by result (ok or failed).", "result")
	m.appliesOK = m.applies.WithLabelValues("ok")
	m.appliesBad = m.applies.WithLabelValues("failed")

	m.tunnelConns = f.gauge("tunnel_connections", "Tunnel (QUIC) connections that completed the handshake and are up.")
	m.streamsActive = f.gauge("tunnel_streams_active", "Request streams open on tunnel connections.")
	m.configVersion = f.gauge("config_version", "Version of the rule set in use.")
	m.applyDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "config_apply_duration_seconds",
		Help:    "Time to build, validate and swap in a rule set, in seconds.",
		Buckets: ApplyBuckets,
	})
	m.reg.MustRegister(m.applyDuration)
	m.reconnects = f.counter("reconnects_total", "Connections to the server after the first (client side).")
	m.updatesSent = f.counterVec("rule_updates_sent_total",
		"Rule updates the server sent to its clients, by kind: delta (a client's changes) or snapshot (its whole rule set).", "kind")
	m.sessions = f.gauge("sessions", "Client sessions the server holds, connected or within their TTL.")
	m.auth.init(f)
	m.abuse = newAbuseSeries(f)

	for _, s := range []pipeline.Side{pipeline.Ingress, pipeline.Egress} {
		m.sides[s].Store(m.newSideSeries(s))
	}

	m.conns.init()
	m.reg.MustRegister(&m.conns)
	m.pools.init()
	m.reg.MustRegister(&m.pools)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

type factory struct{ reg *prometheus.Registry }

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (m *Metrics) newSideSeries(s pipeline.Side) *sideSeries {
	name := s.String()
	ss := &sideSeries{inflight: m.inflight.WithLabelValues(name)}
	for k := range ss.errors {
		ss.errors[k] = m.errors.WithLabelValues(name, ErrorKind(k).String())
	}
	return ss
}

// side returns the children of s. Ingress and egress are made by New (so
// that their series exist, at zero, from the start); any other value is
// made on first use.
func (m *Metrics) side(s pipeline.Side) *sideSeries {
	i := int(s)
	if i >= numSides {
		i = 0
	}
	if ss := m.sides[i].Load(); ss != nil {
		return ss
	}
	m.sides[i].CompareAndSwap(nil, m.newSideSeries(pipeline.Side(i)))
	return m.sides[i].Load()
}

// Registry returns the registry that holds every metric of m, to add
// collectors of your own or to gather in tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves m's registry in the Prometheus exposition formats, for
// /metrics. A nil *Metrics serves 404.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:          m.reg, // counts its own scrape errors
		EnableOpenMetrics: true,
	})
}

// ruleLabels returns the rule and direction labels of r.
func ruleLabels(r *rules.Rule) (id, dir string) {
	if r == nil {
		return NoRule, NoRule
	}
	return r.ID, string(r.Direction)
}

type byteKey struct {
	rule, dir string
	side      pipeline.Side
}

type byteSeries struct{ in, out prometheus.Counter }

// AddBytes adds body bytes of x's exchange: received from the requester
// (the user on the ingress side, the tunnel stream on the egress side) and
// sent back towards it. Call it once per exchange, when the bodies are
// done, with the exchange's Rule set. It does not allocate once the
// exchange's label set has been seen.
func (m *Metrics) AddBytes(x *pipeline.Exchange, received, sent int64) {
	if m == nil || (received <= 0 && sent <= 0) {
		return
	}
	rule, dir := ruleLabels(x.Rule)
	k := byteKey{rule: rule, dir: dir, side: x.Side}
	v, ok := m.bytesCache.Load(k)
	if !ok {
		side := x.Side.String()
		v, _ = m.bytesCache.LoadOrStore(k, &byteSeries{
			in:  m.bytesIn.WithLabelValues(rule, dir, side),
			out: m.bytesOut.WithLabelValues(rule, dir, side),
		})
	}
	bs := v.(*byteSeries)
	if received > 0 {
		bs.in.Add(float64(received))
	}
	if sent > 0 {
		bs.out.Add(float64(sent))
	}
}

// CountError counts an error outside any chain, such as a stream refused
// because every worker is busy (KindOverload) or a panic in a stage
// (KindInternal). The observe stage counts the errors its chain returns.
func (m *Metrics) CountError(side pipeline.Side, kind ErrorKind) {
	if m == nil {
		return
	}
	if kind >= numKinds {
		kind = KindInternal
	}
	m.side(side).errors[kind].Inc()
}

// StageReject counts an exchange refused by stage for reason. Both must
// come from small fixed sets (stage names, reason constants such as
// "rate_limited", "body_too_large"), never from the request.
func (m *Metrics) StageReject(stage, reason string) {
	if m == nil {
		return
	}
	m.stageRejects.WithLabelValues(stage, reason).Inc()
}

// SetBreakerState records the state of the breaker in front of rule's
// upstream. The label is the rule id: upstream URLs may hold credentials
// and are not bounded by the rule set.
func (m *Metrics) SetBreakerState(rule string, s BreakerState) {
	if m == nil {
		return
	}
	m.breaker.WithLabelValues(rule).Set(float64(s))
}

// ConnOpened counts a tunnel connection that completed its handshake;
// ConnClosed undoes it.
func (m *Metrics) ConnOpened() {
	if m != nil {
		m.tunnelConns.Inc()
	}
}

// ConnClosed counts a tunnel connection that ended; see ConnOpened.
func (m *Metrics) ConnClosed() {
	if m != nil {
		m.tunnelConns.Dec()
	}
}

// StreamOpened counts a request stream opened or accepted on a tunnel
// connection; StreamClosed undoes it.
func (m *Metrics) StreamOpened() {
	if m != nil {
		m.streamsActive.Inc()
	}
}

// StreamClosed counts a request stream that ended; see StreamOpened.
func (m *Metrics) StreamClosed() {
	if m != nil {
		m.streamsActive.Dec()
	}
}

// SetSessions records how many client sessions the server holds.
func (m *Metrics) SetSessions(n int) {
	if m != nil {
		m.sessions.Set(float64(n))
	}
}

// Reconnected counts a client connection to the server after the first.
// RuleUpdateSent counts a rule update sent to a client: a delta, or a
// snapshot when full is set.
func (m *Metrics) RuleUpdateSent(full bool) {
	if m == nil {
		return
	}
	kind := "delta"
	if full {
		kind = "snapshot"
	}
	m.updatesSent.WithLabelValues(kind).Inc()
}

func (m *Metrics) Reconnected() {
	if m != nil {
		m.reconnects.Inc()
	}
}

// ConfigApplied records one attempt to apply a rule set: how long it took
// and whether it failed. On success version becomes config_version; a
// failed attempt leaves the version in use unchanged.
func (m *Metrics) ConfigApplied(version uint64, took time.Duration, err error) {
	if m == nil {
		return
	}
	m.applyDuration.Observe(took.Seconds())
	if err != nil {
		m.appliesBad.Inc()
		return
	}
	m.appliesOK.Inc()
	m.configVersion.Set(float64(version))
}

// ForgetRule removes every series labelled with rule id, once the rule is
// gone from the rule set, so that removed rules do not linger in scrapes.
// An exchange still using the rule when it is forgotten may be lost from
// the counts.
func (m *Metrics) ForgetRule(id string) {
	if m == nil {
		return
	}
	m.reqCache.Range(func(k, _ any) bool {
		if k.(reqKey).rule == id {
			m.reqCache.Delete(k)
		}
		return true
	})
	m.bytesCache.Range(func(k, _ any) bool {
		if k.(byteKey).rule == id {
			m.bytesCache.Delete(k)
		}
		return true
	})
	byRule := prometheus.Labels{"rule": id}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.requests, m.duration, m.bytesIn, m.bytesOut,
	} {
		v.DeletePartialMatch(byRule)
	}
	m.breaker.DeletePartialMatch(prometheus.Labels{"upstream_rule": id})
}

// ForgetRemoved calls ForgetRule for every rule of old that next does not
// hold: call it once next is in force. A rule kept under the same id, even
// changed, keeps its series.
func (m *Metrics) ForgetRemoved(old, next *rules.Table) {
	if m == nil {
		return
	}
	for _, r := range old.Rules() {
		if next.ByID(r.ID) == nil {
			m.ForgetRule(r.ID)
		}
	}
}
