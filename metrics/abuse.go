package metrics

import "github.com/prometheus/client_golang/prometheus"

// Abuse kinds: what a user did that the ingress listeners refused at the
// connection level. They are the kind label of qtunnel_ingress_abuse_total;
// the set is fixed.
const (
	// AbuseRapidReset: an HTTP/2 client reset more streams than allowed
	// (limits.h2_max_resets per 10 s); its connection got GOAWAY.
	AbuseRapidReset = "rapid reset"
	// AbuseContinuationFlood: an HTTP/2 header block spread over too many
	// CONTINUATION frames; the connection got GOAWAY.
	AbuseContinuationFlood = "CONTINUATION flood"
	// AbuseAmbiguousFraming: an HTTP/1 request with both Content-Length
	// and Transfer-Encoding, or Transfer-Encoding on HTTP/1.0; refused
	// with 400, its connection closed.
	AbuseAmbiguousFraming = "ambiguous framing"
)

var abuseLabels = map[string]string{
	AbuseRapidReset:        "h2_rapid_reset",
	AbuseContinuationFlood: "h2_continuation_flood",
	AbuseAmbiguousFraming:  "ambiguous_framing",
}

// abuseSeries holds one counter per abuse kind, made up front so that every
// kind is exported from the start, at zero.
type abuseSeries map[string]prometheus.Counter

func newAbuseSeries(f factory) abuseSeries {
	v := f.counterVec("ingress_abuse_total",
		"Connections ended or requests refused by the ingress listeners' connection guard, by kind: "+
			"h2_rapid_reset, h2_continuation_flood (GOAWAY), ambiguous_framing (400, connection closed).", "kind")
	s := abuseSeries{}
	for kind, label := range abuseLabels {
		s[kind] = v.WithLabelValues(label)
	}
	return s
}

// Abuse counts one refusal of kind (one of the Abuse* constants; others
// are not counted).
func (m *Metrics) Abuse(kind string) {
	if m == nil {
		return
	}
	if c, ok := m.abuse[kind]; ok {
		c.Inc()
	}
}
