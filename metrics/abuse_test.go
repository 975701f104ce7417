package metrics_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/metrics"
)

func TestAbuseCountersByKind(t *testing.T) {
	t.Parallel()
	m := metrics.New("server")
	kinds := map[string]string{
		metrics.AbuseRapidReset:        "h2_rapid_reset",
		metrics.AbuseContinuationFlood: "h2_continuation_flood",
		metrics.AbuseAmbiguousFraming:  "ambiguous_framing",
	}
	mfs := scrape(t, m)
	for _, label := range kinds {
		require.Zero(t, value(t, mfs, "qtunnel_ingress_abuse_total", map[string]string{"kind": label}), "exported at zero: %s", label)
	}
	m.Abuse(metrics.AbuseRapidReset)
	m.Abuse(metrics.AbuseRapidReset)
	m.Abuse(metrics.AbuseAmbiguousFraming)
	m.Abuse("something else") // outside the set: not counted, no new series
	mfs = scrape(t, m)
	require.Equal(t, 2.0, value(t, mfs, "qtunnel_ingress_abuse_total", map[string]string{"kind": "h2_rapid_reset"}))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_ingress_abuse_total", map[string]string{"kind": "ambiguous_framing"}))
	require.Equal(t, 0.0, value(t, mfs, "qtunnel_ingress_abuse_total", map[string]string{"kind": "h2_continuation_flood"}))
	require.Len(t, mfs["qtunnel_ingress_abuse_total"].GetMetric(), 3)
	var nilM *metrics.Metrics
	nilM.Abuse(metrics.AbuseRapidReset) // a nil *Metrics counts nothing
}
