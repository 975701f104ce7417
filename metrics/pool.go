package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// PoolStats is what an egress pool reports of one rule's upstream
// connections (see egress.Pool.Stats): how many are idle and how many in
// use now, and how many were dialled since the upstream's pool was made.
// Rules that share an upstream share its connections and each reports all
// of them.
type PoolStats struct {
	Rule         string
	Idle, Active int
	Dials        uint64
}

// SetPoolStats installs the function that lists the egress pool's rules;
// it is called once per scrape, so it must be cheap and safe for concurrent
// use. Until it is set (or with nil) no pool metrics are exported. A rule
// the function no longer lists has no series from the next scrape on.
func (m *Metrics) SetPoolStats(f func() []PoolStats) {
	if m == nil {
		return
	}
	if f == nil {
		m.pools.stats.Store(nil)
		return
	}
	m.pools.stats.Store(&f)
}

// poolCollector turns PoolStats into metrics at scrape time, labelled by
// rule id: the rule set bounds them.
type poolCollector struct {
	stats atomic.Pointer[func() []PoolStats]

	idle, active, dials *prometheus.Desc
}

func (c *poolCollector) init() {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "egress_pool", name), help, []string{"rule"}, nil)
	}
	c.idle = desc("idle", "Idle connections to the upstreams of a rule.")
	c.active = desc("active", "Connections to the upstreams of a rule in use.")
	c.dials = desc("dials_total", "Connections dialled to the upstreams of a rule.")
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.idle
	ch <- c.active
	ch <- c.dials
}

// Collect implements prometheus.Collector. A rule listed twice (a rule
// that changed between a TCP and an HTTP upstream, until the pool lets the
// old one go) is reported once, its counts summed.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.stats.Load()
	if f == nil {
		return
	}
	merged := mergeBy((*f)(), func(s *PoolStats) string { return s.Rule }, func(m *PoolStats, s PoolStats) {
		m.Idle += s.Idle
		m.Active += s.Active
		m.Dials += s.Dials
	})
	for _, s := range merged {
		send(ch, c.idle, prometheus.GaugeValue, float64(s.Idle), s.Rule)
		send(ch, c.active, prometheus.GaugeValue, float64(s.Active), s.Rule)
		send(ch, c.dials, prometheus.CounterValue, float64(s.Dials), s.Rule)
	}
}

var _ prometheus.Collector = (*poolCollector)(nil)
