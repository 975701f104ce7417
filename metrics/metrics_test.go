package metrics_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

var (
	webRule = &rules.Rule{ID: "web", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", Upstream: "http://127.0.0.1:3000"}
	dbRule  = &rules.Rule{ID: "db", Client: "laptop", Direction: rules.Forward, Listen: "127.0.0.1:9000", Upstream: "http://10.0.0.5:5432"}
)

// scrape serves m.Handler() once and parses the text exposition.
func scrape(t *testing.T, m *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.True(t, strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain"), rec.Header().Get("Content-Type"))
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	require.NoError(t, err)
	return mfs
}

// find returns the metric of family name whose labels are exactly labels,
// or nil.
func find(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, lp := range m.GetLabel() {
			if v, ok := labels[lp.GetName()]; !ok || v != lp.GetValue() {
				continue next
			}
		}
		return m
	}
	return nil
}

// value returns the value of a counter or gauge, failing the test if the
// series is missing.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	m := find(mfs, name, labels)
	require.NotNil(t, m, "no %s%v", name, labels)
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s%v is neither a counter nor a gauge", name, labels)
	return 0
}

func req(rule, dir, side, proto, class string) map[string]string {
	return map[string]string{"rule": rule, "direction": dir, "side": side, "protocol": proto, "code_class": class}
}

func errs(side, kind string) map[string]string {
	return map[string]string{"side": side, "kind": kind}
}

// drive runs one exchange through a chain of m's stage and a stage that
// sets the rule, protocol and status the way route and encode would, or
// returns fail.
func drive(t testing.TB, c *pipeline.Chain, side pipeline.Side, rule *rules.Rule, status int, fail error) error {
	x := pipeline.Acquire(side)
	defer x.Release()
	x.Protocol = pipeline.ProtoHTTP1
	x.Rule = rule
	x.Status = status
	x.Start = x.Start.Add(-3 * time.Millisecond)
	err := c.Handle(context.Background(), x)
	if !errors.Is(err, fail) {
		t.Fatalf("chain returned %v, want %v", err, fail)
	}
	return err
}

// newChain is m's observe stage followed by a stage that returns the
// exchange's error, so that drive controls every outcome.
func newChain(t testing.TB, m *metrics.Metrics, fail func(*pipeline.Exchange) error) *pipeline.Chain {
	t.Helper()
	answer := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		if err := fail(x); err != nil {
			return err
		}
		return next.Handle(ctx, x)
	})
	c, err := pipeline.New(context.Background(), []pipeline.Stage{m.Stage(), answer})
	if err != nil {
		t.Fatal(err)
	}
	require.Equal(t, []string{"observe", "stage[1]"}, c.Names())
	return c
}

func TestStageCountsExchangesByLabelSet(t *testing.T) {
	t.Parallel()
	m := metrics.New("server")
	notFound := pipeline.Rejectf(http.StatusNotFound, "no route")
	overload := &pipeline.Reject{Status: http.StatusServiceUnavailable, Message: "at capacity", RetryAfter: time.Second}
	var next error
	c := newChain(t, m, func(*pipeline.Exchange) error { return next })

	for range 3 {
		next = nil
		drive(t, c, pipeline.Ingress, webRule, http.StatusOK, nil)
	}
	for range 2 {
		next = notFound
		drive(t, c, pipeline.Ingress, nil, 0, notFound)
	}
	next = overload
	drive(t, c, pipeline.Ingress, webRule, 0, overload)

	mfs := scrape(t, m)
	require.Equal(t, 3.0, value(t, mfs, "qtunnel_requests_total", req("web", "reverse", "ingress", "http1", "2xx")))
	require.Equal(t, 2.0, value(t, mfs, "qtunnel_requests_total", req("none", "none", "ingress", "http1", "4xx")))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_requests_total", req("web", "reverse", "ingress", "http1", "5xx")))
	require.Len(t, mfs["qtunnel_requests_total"].GetMetric(), 3, "no other label set")

	want := map[string]float64{"rejected": 2, "overload": 1}
	for _, side := range []string{"ingress", "egress"} {
		for _, kind := range []string{"rejected", "upstream", "tunnel", "timeout", "overload", "canceled", "internal"} {
			w := 0.0
			if side == "ingress" {
				w = want[kind]
			}
			require.Equal(t, w, value(t, mfs, "qtunnel_errors_total", errs(side, kind)), "%s %s", side, kind)
		}
	}
	require.Equal(t, 0.0, value(t, mfs, "qtunnel_requests_in_flight", map[string]string{"side": "ingress"}))
	require.Equal(t, 0.0, value(t, mfs, "qtunnel_requests_in_flight", map[string]string{"side": "egress"}))

	h := find(mfs, "qtunnel_request_duration_seconds", map[string]string{"rule": "web", "direction": "reverse", "side": "ingress", "protocol": "http1"})
	require.NotNil(t, h)
	require.Equal(t, uint64(4), h.GetHistogram().GetSampleCount())
	require.GreaterOrEqual(t, h.GetHistogram().GetSampleSum(), 4*0.003, "durations run from x.Start")
	require.Len(t, h.GetHistogram().GetBucket(), len(metrics.DurationBuckets)+1, "and +Inf")
	h = find(mfs, "qtunnel_request_duration_seconds", map[string]string{"rule": "none", "direction": "none", "side": "ingress", "protocol": "http1"})
	require.NotNil(t, h)
	require.Equal(t, uint64(2), h.GetHistogram().GetSampleCount())
}

func TestStageCodeClass(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int // x.Status when the chain returns
		err    error
		class  string
		kind   string // "" for no error
	}{
		{name: "status wins without error", status: http.StatusNoContent, class: "2xx"},
		{name: "redirect", status: http.StatusFound, class: "3xx"},
		{name: "switching protocols", status: http.StatusSwitchingProtocols, class: "1xx"},
		{name: "no answer and no error", status: 0, class: "other"},
		{name: "reject before the answer", err: pipeline.Rejectf(http.StatusTooManyRequests, "slow down"), class: "4xx", kind: "rejected"},
		{name: "far side error frame", err: &codec.Error{Status: http.StatusBadGateway, Message: "upstream unreachable"}, class: "5xx", kind: "upstream"},
		{name: "deadline gives 504", err: context.DeadlineExceeded, class: "5xx", kind: "timeout"},
		{name: "unknown error gives 502", err: errors.New("stream reset"), class: "5xx", kind: "tunnel"},
		{name: "failure after the head keeps its status", status: http.StatusOK, err: errors.New("body cut"), class: "2xx", kind: "tunnel"},
		{name: "user went away", err: context.Canceled, class: "5xx", kind: "canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := metrics.New("client")
			c := newChain(t, m, func(*pipeline.Exchange) error { return tt.err })
			drive(t, c, pipeline.Egress, dbRule, tt.status, tt.err)
			mfs := scrape(t, m)
			require.Equal(t, 1.0, value(t, mfs, "qtunnel_requests_total", req("db", "forward", "egress", "http1", tt.class)))
			total := 0.0
			for _, mt := range mfs["qtunnel_errors_total"].GetMetric() {
				total += mt.GetCounter().GetValue()
			}
			if tt.kind == "" {
				require.Zero(t, total)
				return
			}
			require.Equal(t, 1.0, total)
			require.Equal(t, 1.0, value(t, mfs, "qtunnel_errors_total", errs("egress", tt.kind)))
		})
	}
}

func TestStageCountsInFlightWhileTheChainRuns(t *testing.T) {
	t.Parallel()
	m := metrics.New("server")
	var during float64
	c := newChain(t, m, func(*pipeline.Exchange) error {
		during = value(t, scrape(t, m), "qtunnel_requests_in_flight", map[string]string{"side": "egress"})
		return nil
	})
	drive(t, c, pipeline.Egress, dbRule, http.StatusOK, nil)
	require.Equal(t, 1.0, during)
	require.Equal(t, 0.0, value(t, scrape(t, m), "qtunnel_requests_in_flight", map[string]string{"side": "egress"}))
}

func TestErrorKindNames(t *testing.T) {
	t.Parallel()
	var got []string
	for k := metrics.KindRejected; k <= metrics.KindInternal; k++ {
		got = append(got, k.String())
	}
	require.Equal(t, []string{"rejected", "upstream", "tunnel", "timeout", "overload", "canceled", "internal"}, got)
}

func TestConnStatsCollectorReportsWhatTheFuncReturns(t *testing.T) {
	t.Parallel()
	m := metrics.New("server")
	require.NotContains(t, scrape(t, m), "qtunnel_quic_smoothed_rtt_seconds", "no func, no series")

	m.SetConnStats(func() []metrics.ConnStats {
		return []metrics.ConnStats{
			{ClientID: "laptop", SmoothedRTT: 12500 * time.Microsecond, PacketsLost: 3, BytesSent: 1000, BytesReceived: 2000, CongestionWindow: 65536},
			{ClientID: "desktop", SmoothedRTT: time.Millisecond, PacketsLost: 0, BytesSent: 10, BytesReceived: 20, CongestionWindow: 32000},
			// A reconnect racing the old connection's close.
			{ClientID: "laptop", SmoothedRTT: 2 * time.Millisecond, PacketsLost: 1, BytesSent: 5, BytesReceived: 7, CongestionWindow: 14000},
		}
	})
	mfs := scrape(t, m)
	laptop := map[string]string{"client": "laptop"}
	desktop := map[string]string{"client": "desktop"}
	for _, c := range []struct {
		labels                              map[string]string
		rtt, lost, sent, received, cwndSize float64
	}{
		{laptop, 0.002, 4, 1005, 2007, 14000},
		{desktop, 0.001, 0, 10, 20, 32000},
	} {
		requireValues(t, mfs, c.labels, []familyValue{
			{"qtunnel_quic_smoothed_rtt_seconds", c.rtt},
			{"qtunnel_quic_packets_lost", c.lost},
			{"qtunnel_quic_bytes_sent_total", c.sent},
			{"qtunnel_quic_bytes_received_total", c.received},
			{"qtunnel_quic_congestion_window_bytes", c.cwndSize},
		})
	}
	require.Equal(t, dto.MetricType_COUNTER, mfs["qtunnel_quic_bytes_sent_total"].GetType())
	require.Equal(t, dto.MetricType_GAUGE, mfs["qtunnel_quic_packets_lost"].GetType())
	require.Len(t, mfs["qtunnel_quic_smoothed_rtt_seconds"].GetMetric(), 2)

	m.SetConnStats(func() []metrics.ConnStats { return nil })
	require.NotContains(t, scrape(t, m), "qtunnel_quic_smoothed_rtt_seconds", "no connections, no series")
}

func TestPoolStatsCollectorReportsWhatTheFuncReturns(t *testing.T) {
	t.Parallel()
	m := metrics.New("client")
	require.NotContains(t, scrape(t, m), "qtunnel_egress_pool_idle", "no function, no series")
	var stats []metrics.PoolStats
	m.SetPoolStats(func() []metrics.PoolStats { return stats })
	stats = []metrics.PoolStats{
		{Rule: "web", Idle: 3, Active: 1, Dials: 9},
		{Rule: "db", Active: 2, Dials: 5},
		{Rule: "web", Idle: 1, Active: 1, Dials: 2}, // listed twice: summed
	}
	mfs := scrape(t, m)
	web, db := map[string]string{"rule": "web"}, map[string]string{"rule": "db"}
	for _, c := range []struct {
		labels              map[string]string
		idle, active, dials float64
	}{
		{web, 4, 2, 11},
		{db, 0, 2, 5},
	} {
		requireValues(t, mfs, c.labels, []familyValue{
			{"qtunnel_egress_pool_idle", c.idle},
			{"qtunnel_egress_pool_active", c.active},
			{"qtunnel_egress_pool_dials_total", c.dials},
		})
	}
	require.Equal(t, dto.MetricType_COUNTER, mfs["qtunnel_egress_pool_dials_total"].GetType())
	require.Equal(t, dto.MetricType_GAUGE, mfs["qtunnel_egress_pool_active"].GetType())
	require.Len(t, mfs["qtunnel_egress_pool_idle"].GetMetric(), 2)

	stats = stats[1:2] // web is gone from the pool
	require.Nil(t, find(scrape(t, m), "qtunnel_egress_pool_idle", web))
	m.SetPoolStats(nil)
	require.NotContains(t, scrape(t, m), "qtunnel_egress_pool_dials_total")
}

func TestSideMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New("client")
	x := pipeline.Acquire(pipeline.Egress)
	x.Rule = webRule
	m.AddBytes(x, 100, 2500)
	m.AddBytes(x, 1, 0)
	x.Release()
	m.StageReject("ratelimit", "rate_limited")
	m.StageReject("ratelimit", "rate_limited")
	m.SetBreakerState("web", metrics.BreakerOpen)
	m.SetPoolStats(func() []metrics.PoolStats { return []metrics.PoolStats{{Rule: "web", Idle: 3, Active: 2, Dials: 1}} })
	m.ConnOpened()
	m.ConnOpened()
	m.ConnClosed()
	m.StreamOpened()
	m.SetSessions(4)
	m.Reconnected()
	m.ConfigApplied(7, 20*time.Millisecond, nil)
	m.ConfigApplied(8, 5*time.Millisecond, errors.New("bad rule"))
	m.CountError(pipeline.Egress, metrics.KindInternal)

	mfs := scrape(t, m)
	web := map[string]string{"rule": "web", "direction": "reverse", "side": "egress"}
	require.Equal(t, 101.0, value(t, mfs, "qtunnel_bytes_received_total", web))
	require.Equal(t, 2500.0, value(t, mfs, "qtunnel_bytes_sent_total", web))
	require.Equal(t, 2.0, value(t, mfs, "qtunnel_stage_rejects_total", map[string]string{"stage": "ratelimit", "reason": "rate_limited"}))
	require.Equal(t, 2.0, value(t, mfs, "qtunnel_breaker_state", map[string]string{"upstream_rule": "web"}))
	require.Equal(t, 3.0, value(t, mfs, "qtunnel_egress_pool_idle", map[string]string{"rule": "web"}))
	require.Equal(t, 2.0, value(t, mfs, "qtunnel_egress_pool_active", map[string]string{"rule": "web"}))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_egress_pool_dials_total", map[string]string{"rule": "web"}))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_tunnel_connections", nil))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_tunnel_streams_active", nil))
	require.Equal(t, 4.0, value(t, mfs, "qtunnel_sessions", nil))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_reconnects_total", nil))
	require.Equal(t, 7.0, value(t, mfs, "qtunnel_config_version", nil), "a failed apply keeps the version")
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_config_applies_total", map[string]string{"result": "ok"}))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_config_applies_total", map[string]string{"result": "failed"}))
	require.Equal(t, uint64(2), find(mfs, "qtunnel_config_apply_duration_seconds", nil).GetHistogram().GetSampleCount())
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_errors_total", errs("egress", "internal")))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_info", map[string]string{"role": "client"}))
}

func TestForgetRuleDropsItsSeries(t *testing.T) {
	t.Parallel()
	m := metrics.New("server")
	c := newChain(t, m, func(*pipeline.Exchange) error { return nil })
	drive(t, c, pipeline.Ingress, webRule, http.StatusOK, nil)
	drive(t, c, pipeline.Egress, dbRule, http.StatusOK, nil)
	x := pipeline.Acquire(pipeline.Ingress)
	x.Rule = webRule
	m.AddBytes(x, 1, 1)
	x.Release()
	m.SetBreakerState("web", metrics.BreakerHalfOpen)

	m.ForgetRule("web")
	mfs := scrape(t, m)
	for name, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				require.NotEqual(t, "web", lp.GetValue(), "%s still has a series of rule web", name)
			}
		}
	}
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_requests_total", req("db", "forward", "egress", "http1", "2xx")))

	// The rule comes back: counting starts again from zero.
	drive(t, c, pipeline.Ingress, webRule, http.StatusOK, nil)
	require.Equal(t, 1.0, value(t, scrape(t, m), "qtunnel_requests_total", req("web", "reverse", "ingress", "http1", "2xx")))
}

func TestForgetRemovedForgetsOnlyRulesGone(t *testing.T) {
	t.Parallel()
	m := metrics.New("server")
	c := newChain(t, m, func(*pipeline.Exchange) error { return nil })
	drive(t, c, pipeline.Ingress, webRule, http.StatusOK, nil)
	drive(t, c, pipeline.Egress, dbRule, http.StatusOK, nil)
	old, err := rules.NewTable(1, []rules.Rule{*webRule, *dbRule})
	require.NoError(t, err)
	changed := *dbRule
	changed.Upstream = "http://10.0.0.6:5432"
	next, err := rules.NewTable(2, []rules.Rule{changed})
	require.NoError(t, err)

	m.ForgetRemoved(old, next)
	mfs := scrape(t, m)
	require.Nil(t, find(mfs, "qtunnel_requests_total", req("web", "reverse", "ingress", "http1", "2xx")), "web was removed")
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_requests_total", req("db", "forward", "egress", "http1", "2xx")), "db was only changed")
	var nilMetrics *metrics.Metrics
	nilMetrics.ForgetRemoved(old, next)
}

func TestNilMetricsRecordsNothing(t *testing.T) {
	t.Parallel()
	var m *metrics.Metrics
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	require.NotPanics(t, func() {
		m.AddBytes(x, 1, 1)
		m.CountError(pipeline.Ingress, metrics.KindTunnel)
		m.StageReject("s", "r")
		m.SetBreakerState("r", metrics.BreakerOpen)
		m.SetPoolStats(func() []metrics.PoolStats { return nil })
		m.SetPoolStats(nil)
		m.ConnOpened()
		m.ConnClosed()
		m.StreamOpened()
		m.StreamClosed()
		m.SetSessions(1)
		m.Reconnected()
		m.ConfigApplied(1, time.Second, nil)
		m.ForgetRule("r")
		m.SetConnStats(nil)
	})
	called := false
	err := m.Stage().Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		called = true
		return nil
	}))
	require.NoError(t, err)
	require.True(t, called)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusNotFound, rec.Code)
}

func TestRuntimeCollectorsAreRegistered(t *testing.T) {
	t.Parallel()
	mfs := scrape(t, metrics.New("server"))
	require.Contains(t, mfs, "go_goroutines")
	if runtime.GOOS == "linux" {
		require.Contains(t, mfs, "process_resident_memory_bytes")
	}
}

func TestTwoMetricsDoNotCollide(t *testing.T) {
	t.Parallel()
	a, b := metrics.New("server"), metrics.New("client")
	a.Reconnected()
	require.Equal(t, 1.0, value(t, scrape(t, a), "qtunnel_reconnects_total", nil))
	require.Equal(t, 0.0, value(t, scrape(t, b), "qtunnel_reconnects_total", nil))
}

func TestMetricNamesFollowPrometheusConventions(t *testing.T) {
	t.Parallel()
	ours := ourFamilies(t, withEveryFamily(t))
	require.Len(t, ours, 28)
	problems, err := promlint.NewWithMetricFamilies(ours).Lint()
	require.NoError(t, err)
	require.Empty(t, problems)
}

func TestStageAllocatesNothingOnceWarm(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	m := metrics.New("server")
	reject := pipeline.Rejectf(http.StatusNotFound, "no route")
	tests := []struct {
		name string
		rule *rules.Rule
		err  error
	}{
		{"ok", webRule, nil},
		{"reject", nil, reject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newChain(t, m, func(*pipeline.Exchange) error { return tt.err })
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Rule, x.Protocol = tt.rule, pipeline.ProtoHTTP1
			ctx := context.Background()
			allocs := testing.AllocsPerRun(1000, func() {
				x.Status = 0
				if tt.err == nil {
					x.Status = http.StatusOK
				}
				_ = c.Handle(ctx, x)
			})
			require.Zero(t, allocs)
		})
	}
}

// withEveryFamily returns a Metrics in which every labelled family has a
// series, so that its registry exports every family.
func withEveryFamily(t *testing.T) *metrics.Metrics {
	t.Helper()
	m := metrics.New("server")
	c := newChain(t, m, func(*pipeline.Exchange) error { return nil })
	drive(t, c, pipeline.Ingress, webRule, http.StatusOK, nil)
	x := pipeline.Acquire(pipeline.Ingress)
	x.Rule = webRule
	m.AddBytes(x, 1, 1)
	x.Release()
	m.StageReject("s", "r")
	m.SetBreakerState("web", metrics.BreakerClosed)
	m.RuleUpdateSent(false)
	m.SetPoolStats(func() []metrics.PoolStats { return []metrics.PoolStats{{Rule: "web"}} })
	m.SetConnStats(func() []metrics.ConnStats { return []metrics.ConnStats{{ClientID: "laptop"}} })
	return m
}

// ourFamilies gathers m's registry and returns the families of this
// package (named qtunnel_...), leaving out the Go and process collectors'.
func ourFamilies(t *testing.T, m *metrics.Metrics) []*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Registry().Gather()
	require.NoError(t, err)
	var ours []*dto.MetricFamily
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), metrics.Namespace+"_") {
			ours = append(ours, mf)
		}
	}
	return ours
}

// familyValue is the value a family's series should have.
type familyValue struct {
	family string
	want   float64
}

// requireValues checks the value of the series with labels in each family
// of want.
func requireValues(t *testing.T, mfs map[string]*dto.MetricFamily, labels map[string]string, want []familyValue) {
	t.Helper()
	for _, w := range want {
		require.Equal(t, w.want, value(t, mfs, w.family, labels), "%s%v", w.family, labels)
	}
}

func TestSummary(t *testing.T) {
	m := metrics.New("server")
	r := &rules.Rule{ID: "web", Direction: rules.Reverse}
	for i, status := range []int{200, 200, 502, 0} {
		x := &pipeline.Exchange{Rule: r, Side: pipeline.Ingress, Protocol: pipeline.ProtoHTTP1, Status: status, Start: time.Now().Add(-time.Duration(i+1) * 10 * time.Millisecond)}
		require.NoError(t, m.Stage().Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })))
	}
	m.SetBreakerState("web", metrics.BreakerOpen)
	sum, err := m.Summary()
	require.NoError(t, err)
	require.Len(t, sum, 1)
	assert.Equal(t, "web", sum[0].Rule)
	assert.EqualValues(t, 4, sum[0].Requests)
	assert.EqualValues(t, 2, sum[0].Errors, "a 5xx and an exchange with no answer")
	assert.Greater(t, sum[0].P99, 30*time.Millisecond)
	assert.Equal(t, "open", sum[0].Breaker)
}
