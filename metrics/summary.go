package metrics

import (
	"cmp"
	"math"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// RuleSummary is one rule's traffic as the metrics count it, summed over
// sides and protocols: what a dashboard shows without a Prometheus.
type RuleSummary struct {
	Rule string `json:"rule"`
	// Requests and Errors are totals since the process started; Errors
	// are the answers of class 5xx and the exchanges that ended with no
	// answer.
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
	// P99 is the 99th percentile of request_duration_seconds, as the
	// histogram's buckets place it (the upper bound of the bucket); 0
	// with no requests.
	P99 time.Duration `json:"p99_ns"`
	// Breaker is the state of the breaker in front of the rule's
	// upstream on this side ("closed", "half-open", "open"), or empty.
	Breaker string `json:"breaker,omitempty"`
}

// String names the state as dashboards show it.
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return "unknown"
}

// Summary returns each rule's RuleSummary, sorted by rule id.
func (m *Metrics) Summary() ([]RuleSummary, error) {
	fams, err := m.reg.Gather()
	if err != nil {
		return nil, err
	}
	by := map[string]*RuleSummary{}
	of := func(rule string) *RuleSummary {
		s := by[rule]
		if s == nil {
			s = &RuleSummary{Rule: rule}
			by[rule] = s
		}
		return s
	}
	type hist struct {
		count   uint64
		buckets map[float64]uint64
	}
	hists := map[string]*hist{}
	for _, f := range fams {
		switch f.GetName() {
		case Namespace + "_requests_total":
			for _, mt := range f.GetMetric() {
				s := of(label(mt, "rule"))
				n := uint64(mt.GetCounter().GetValue())
				s.Requests += n
				if c := label(mt, "code_class"); c == "5xx" || c == "other" {
					s.Errors += n
				}
			}
		case Namespace + "_request_duration_seconds":
			for _, mt := range f.GetMetric() {
				rule := label(mt, "rule")
				h := hists[rule]
				if h == nil {
					h = &hist{buckets: map[float64]uint64{}}
					hists[rule] = h
				}
				h.count += mt.GetHistogram().GetSampleCount()
				for _, b := range mt.GetHistogram().GetBucket() {
					h.buckets[b.GetUpperBound()] += b.GetCumulativeCount()
				}
			}
		case Namespace + "_breaker_state":
			for _, mt := range f.GetMetric() {
				s := of(label(mt, "upstream_rule"))
				s.Breaker = BreakerState(mt.GetGauge().GetValue()).String()
			}
		}
	}
	for rule, h := range hists {
		if h.count == 0 {
			continue
		}
		bounds := make([]float64, 0, len(h.buckets))
		for b := range h.buckets {
			bounds = append(bounds, b)
		}
		slices.Sort(bounds)
		want := uint64(math.Ceil(0.99 * float64(h.count)))
		for _, b := range bounds {
			if h.buckets[b] >= want {
				if !math.IsInf(b, 1) {
					of(rule).P99 = time.Duration(b * float64(time.Second))
				} else if len(bounds) > 1 {
					of(rule).P99 = time.Duration(bounds[len(bounds)-2] * float64(time.Second))
				}
				break
			}
		}
	}
	out := make([]RuleSummary, 0, len(by))
	for _, s := range by {
		if s.Rule != "" {
			out = append(out, *s)
		}
	}
	slices.SortFunc(out, func(a, b RuleSummary) int { return cmp.Compare(a.Rule, b.Rule) })
	return out, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
