package metrics

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Code classes, the code_class label. classOther covers a status outside
// 100..599, including 0 (the chain ended without an answer, e.g. a hijacked
// connection).
var classNames = [...]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

const classOther = 0

func classOf(status int) uint8 {
	if c := status / 100; c >= 1 && c <= 5 {
		return uint8(c)
	}
	return classOther
}

// reqKey names one child of requests_total and request_duration_seconds.
// It is a small comparable value: a sync.Map lookup with it does not
// allocate (TestStageAllocatesNothingOnceWarm).
type reqKey struct {
	rule, dir string
	side      pipeline.Side
	proto     pipeline.Protocol
	class     uint8
}

type reqSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// series returns the children for k, resolving them on first use.
func (m *Metrics) series(k reqKey) *reqSeries {
	if v, ok := m.reqCache.Load(k); ok {
		return v.(*reqSeries)
	}
	side, proto := k.side.String(), k.proto.String()
	v, _ := m.reqCache.LoadOrStore(k, &reqSeries{
		requests: m.requests.WithLabelValues(k.rule, k.dir, side, proto, classNames[k.class]),
		duration: m.duration.WithLabelValues(k.rule, k.dir, side, proto),
	})
	return v.(*reqSeries)
}

// Stage returns the "observe" stage. Put it first in a chain, so that it
// sees every exchange, including those a later stage refuses, and times
// the whole chain. It counts the exchange in flight while the rest of the
// chain runs, then records:
//
//   - requests_total, by the class of x.Status, or, when the chain failed
//     before an answer was written (x.Status == 0), of the status
//     pipeline.Answer gives the error, which is what the user is sent;
//   - request_duration_seconds, from x.Start;
//   - errors_total, by pipeline.Classify(err), when the chain returned an
//     error.
//
// Rule and direction come from x.Rule, or are NoRule when no rule matched.
// Once an exchange's label set has been seen, the stage allocates nothing.
// A nil *Metrics gives a stage that only calls next.
func (m *Metrics) Stage() pipeline.Stage {
	if m == nil {
		return passThrough{}
	}
	return &observer{m: m}
}

// StageName is the observe stage's name in the chains' order.
const StageName = "observe"

type observer struct{ m *Metrics }

// Name implements pipeline.Namer.
func (*observer) Name() string { return StageName }

// Handle implements pipeline.Stage.
func (o *observer) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	ss := o.m.side(x.Side)
	ss.inflight.Inc()
	err := o.handle(ctx, x, next, ss)

	status := x.Status
	if err != nil && status == 0 {
		status = pipeline.StatusOf(err)
	}
	k := reqKey{side: x.Side, proto: x.Protocol, class: classOf(status)}
	k.rule, k.dir = ruleLabels(x.Rule)
	rs := o.m.series(k)
	rs.requests.Inc()
	if !x.Start.IsZero() {
		rs.duration.Observe(time.Since(x.Start).Seconds())
	}
	if err != nil {
		ss.errors[pipeline.Classify(err)].Inc()
		if rj, ok := err.(*pipeline.Reject); ok && rj.Stage != "" {
			o.m.StageReject(rj.Stage, statusString(rj.Status))
		}
	}
	o.m.AddBytes(x, x.BytesIn, x.BytesOut)
	return err
}

// handle runs the rest of the chain; the in-flight count goes down even if
// a stage panics.
func (o *observer) handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler, ss *sideSeries) error {
	defer ss.inflight.Dec()
	return next.Handle(ctx, x)
}

type passThrough struct{}

func (passThrough) Name() string { return StageName }

func (passThrough) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	return next.Handle(ctx, x)
}

var (
	_ pipeline.Stage = (*observer)(nil)
	_ pipeline.Namer = (*observer)(nil)
	_ pipeline.Stage = passThrough{}
	_ pipeline.Namer = passThrough{}
)

// statusStrings holds the decimal text of every HTTP status, so that
// labelling a reject by its status allocates nothing.
var statusStrings = func() (s [600]string) {
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

func statusString(status int) string {
	if status >= 0 && status < len(statusStrings) {
		return statusStrings[status]
	}
	return "other"
}
