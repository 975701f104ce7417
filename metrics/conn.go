package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ConnStats is a snapshot of one tunnel (QUIC) connection, as quic-go's
// Conn.ConnectionStats reports it. ClientID names the connection's client:
// on the server, the client that connected; on a client, its own id.
type ConnStats struct {
	ClientID    string
	SmoothedRTT time.Duration
	// PacketsLost may go down: quic-go un-declares a loss when the packet
	// arrives after all.
	PacketsLost uint64
	// BytesSent and BytesReceived count QUIC payload bytes, including
	// retransmissions, since the connection started.
	BytesSent, BytesReceived uint64
	// CongestionWindow is the local sender's window, in bytes.
	CongestionWindow uint64
}

// SetConnStats installs the function that lists the live tunnel
// connections; it is called once per scrape, so it must be cheap and safe
// for concurrent use. Until it is set (or with nil) no connection metrics
// are exported. It may be called at any time, before or after serving.
func (m *Metrics) SetConnStats(f func() []ConnStats) {
	if m == nil {
		return
	}
	if f == nil {
		m.conns.stats.Store(nil)
		return
	}
	m.conns.stats.Store(&f)
}

// connCollector turns ConnStats into metrics at scrape time, labelled by
// client id: the set of configured clients bounds them.
type connCollector struct {
	stats atomic.Pointer[func() []ConnStats]

	rtt, lost, cwnd, sent, recv *prometheus.Desc
}

func (c *connCollector) init() {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "quic", name), help, []string{"client"}, nil)
	}
	c.rtt = desc("smoothed_rtt_seconds", "Smoothed round-trip time of the client's tunnel connection, in seconds.")
	// A gauge, not a counter: quic-go's count of lost packets can go down.
	c.lost = desc("packets_lost", "Packets of the client's tunnel connection declared lost, since it started.")
	c.cwnd = desc("congestion_window_bytes", "Congestion window of the client's tunnel connection, in bytes.")
	c.sent = desc("bytes_sent_total", "Bytes sent on the client's tunnel connection (QUIC payload, with retransmissions).")
	c.recv = desc("bytes_received_total", "Bytes received on the client's tunnel connection (QUIC payload).")
}

// Describe implements prometheus.Collector.
func (c *connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.rtt
	ch <- c.lost
	ch <- c.cwnd
	ch <- c.sent
	ch <- c.recv
}

// Collect implements prometheus.Collector. A client with more than one
// connection at once (a reconnect racing the old connection's close) is
// reported once: its counts summed, its RTT and window from the last one
// listed, since a scrape must not hold two series with the same labels.
func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.stats.Load()
	if f == nil {
		return
	}
	merged := mergeBy((*f)(), func(s *ConnStats) string { return s.ClientID }, func(m *ConnStats, s ConnStats) {
		m.SmoothedRTT, m.CongestionWindow = s.SmoothedRTT, s.CongestionWindow
		m.PacketsLost += s.PacketsLost
		m.BytesSent += s.BytesSent
		m.BytesReceived += s.BytesReceived
	})
	for _, s := range merged {
		send(ch, c.rtt, prometheus.GaugeValue, s.SmoothedRTT.Seconds(), s.ClientID)
		send(ch, c.lost, prometheus.GaugeValue, float64(s.PacketsLost), s.ClientID)
		send(ch, c.cwnd, prometheus.GaugeValue, float64(s.CongestionWindow), s.ClientID)
		send(ch, c.sent, prometheus.CounterValue, float64(s.BytesSent), s.ClientID)
		send(ch, c.recv, prometheus.CounterValue, float64(s.BytesReceived), s.ClientID)
	}
}

// mergeBy returns list with the entries of the same key merged, by merge,
// into the first of them, in the order of their first appearance.
func mergeBy[T any](list []T, key func(*T) string, merge func(into *T, s T)) []T {
	merged := make([]T, 0, len(list))
	index := make(map[string]int, len(list))
	for _, s := range list {
		k := key(&s)
		if i, seen := index[k]; seen {
			merge(&merged[i], s)
			continue
		}
		index[k] = len(merged)
		merged = append(merged, s)
	}
	return merged
}

// send reports a bad label value (not UTF-8) as a scrape error rather than
// panicking, as MustNewConstMetric would, in the registry's goroutine.
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, label string) {
	m, err := prometheus.NewConstMetric(d, t, v, label)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

var _ prometheus.Collector = (*connCollector)(nil)
