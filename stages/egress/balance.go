package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/rules"
)

// Load balancing and upstream health (S10).
//
// Every HTTP rule has a group: the members of its upstreams, in the rule's
// order, and a policy (rules.RoundRobin or rules.LeastRequests). A member is
// one upstream's Target as seen with one set of health-check settings;
// rules that share the upstream and the settings share the member, its
// health and its checker. The connections (the Target) are shared by every
// rule that points at the upstream, whatever its settings, and so is the
// count of requests in flight that least_requests compares.
//
// A member is out of rotation while its health checks say it is down
// (UnhealthyThreshold failures in a row; back after HealthyThreshold good
// checks) or while it is ejected: UnhealthyThreshold connection failures in
// a row (3 without a health check) eject it until its next good check, or
// for PoolConfig.EjectTime when the rule has no health check. Only failures
// to connect count: an upstream that answers, even 5xx, is reachable, and
// the breaker stage judges its answers.
//
// When every member of a group is out of rotation the balancer picks one
// anyway (fail open): a health check can be wrong (a broken /healthz, a
// check path the upstream does not serve), and trying costs one failed
// request where refusing would fail every one of them.

// memberKey names one upstream as seen by one set of health-check settings.
type memberKey struct {
	target targetKey
	hc     rules.HealthCheck // with defaults; zero without active checks
	active bool
}

// memberKeyOf is the key of upstream, one of r's upstreams, under r's
// health-check settings.
func memberKeyOf(r *rules.Rule, upstream string) memberKey {
	k := memberKey{target: keyOf(r, upstream)}
	if r.HealthCheck != nil {
		k.hc, k.active = r.HealthCheck.WithDefaults(), true
	}
	return k
}

// ejectedUntilCheck in member.ejected: until the next good health check.
const ejectedUntilCheck = math.MaxInt64

// member is one upstream of one or more groups, with its health. Its
// fields are set at creation; the state is atomic. Safe for concurrent use.
type member struct {
	t         *Target
	upstream  string // redacted, for logs
	active    bool
	hc        rules.HealthCheck // with defaults, when active
	checkURL  string
	threshold int32 // connection failures in a row that eject
	ejectFor  time.Duration
	log       *slog.Logger

	down      atomic.Bool  // the health checks' verdict
	connFails atomic.Int32 // connection failures in a row
	// ejected is when a passive ejection ends, in Unix nanoseconds: 0 when
	// not ejected, ejectedUntilCheck until the next good check.
	ejected atomic.Int64

	cancel context.CancelFunc // stops the checker; nil without one
	done   chan struct{}      // closed when the checker has returned
}

func (p *Pool) newMember(k memberKey, t *Target) *member {
	m := &member{t: t, upstream: t.base.Redacted(), active: k.active, hc: k.hc,
		threshold: rules.DefaultUnhealthyThreshold, ejectFor: p.cfg.EjectTime, log: p.cfg.Logger}
	if !k.active {
		return m
	}
	m.threshold = int32(min(k.hc.UnhealthyThreshold, math.MaxInt32))
	u := *t.base
	u.Path, u.RawPath, u.RawQuery, u.ForceQuery = "", "", "", false
	if ref, err := url.ParseRequestURI(k.hc.Path); err == nil {
		u.Path, u.RawPath, u.RawQuery = ref.Path, ref.RawPath, ref.RawQuery
	} else {
		u.Path = k.hc.Path // validation refuses such paths; the checks will fail and say so
	}
	m.checkURL = u.String()
	var ctx context.Context
	ctx, m.cancel = context.WithCancel(context.Background())
	m.done = make(chan struct{})
	go m.check(ctx)
	return m
}

// stopMembers stops the checkers of ms and waits for them to return.
func stopMembers(ms []*member) {
	for _, m := range ms {
		if m.cancel != nil {
			m.cancel()
		}
	}
	for _, m := range ms {
		if m.done != nil {
			<-m.done
		}
	}
}

// available reports whether m is in rotation; an ejection that has run
// its time ends here.
func (m *member) available() bool {
	if m.down.Load() {
		return false
	}
	e := m.ejected.Load()
	if e == 0 {
		return true
	}
	if e == ejectedUntilCheck || time.Now().UnixNano() < e {
		return false
	}
	if m.ejected.CompareAndSwap(e, 0) {
		m.log.Info("upstream back in rotation after its ejection", "upstream", m.upstream)
	}
	return true
}

// ejectedNow reports whether a passive ejection holds m out, without
// ending one.
func (m *member) ejectedNow() bool {
	e := m.ejected.Load()
	return e != 0 && (e == ejectedUntilCheck || time.Now().UnixNano() < e)
}

// connFailed counts a failure to connect; the threshold-th in a row ejects.
func (m *member) connFailed(err error) {
	if m.connFails.Add(1) < m.threshold {
		return
	}
	m.connFails.Store(0)
	until := int64(ejectedUntilCheck)
	if !m.active {
		until = time.Now().Add(m.ejectFor).UnixNano()
	}
	if m.ejected.Swap(until) == 0 {
		if m.active {
			m.log.Warn("upstream ejected until its next good health check after connection failures in a row",
				"upstream", m.upstream, "failures", m.threshold, "err", err)
		} else {
			m.log.Warn("upstream ejected after connection failures in a row",
				"upstream", m.upstream, "failures", m.threshold, "for", m.ejectFor, "err", err)
		}
	}
}

// connected ends a run of connection failures.
func (m *member) connected() {
	if m.connFails.Load() != 0 {
		m.connFails.Store(0)
	}
}

// check runs the health checks of m until ctx ends: one at once, then one
// every Interval (a check that runs long delays the next, never overlaps
// it).
func (m *member) check(ctx context.Context) {
	defer close(m.done)
	tick := time.NewTicker(time.Duration(m.hc.Interval))
	defer tick.Stop()
	var good, bad int
	for {
		err := m.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			good, bad = good+1, 0
			if m.ejected.Swap(0) != 0 {
				m.connFails.Store(0)
				m.log.Info("upstream back in rotation after a good health check", "upstream", m.upstream)
			}
			if good >= m.hc.HealthyThreshold && m.down.CompareAndSwap(true, false) {
				m.log.Info("upstream healthy", "upstream", m.upstream, "check", m.checkURL, "good_checks", good)
			}
		} else {
			good, bad = 0, bad+1
			if bad >= m.hc.UnhealthyThreshold && m.down.CompareAndSwap(false, true) {
				m.log.Warn("upstream unhealthy: out of rotation", "upstream", m.upstream, "check", m.checkURL,
					"failed_checks", bad, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// maxCheckBody bounds what a check reads of an answer's body, so that the
// connection can be reused.
const maxCheckBody = 64 << 10

var errCheckStatus = errors.New("unexpected status")

// probe runs one health check.
func (m *member) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(m.hc.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.checkURL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "qtunnel-health-check")
	resp, err := m.t.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxCheckBody))
	_ = resp.Body.Close()
	if !m.hc.Good(resp.StatusCode) {
		return fmt.Errorf("%w %d", errCheckStatus, resp.StatusCode)
	}
	return nil
}

// group balances one rule's requests over its upstreams. It remembers the
// settings it was built from, to tell when the rule has changed.
type group struct {
	upstream  string
	upstreams []string
	lb        string
	hc        rules.HealthCheck
	hasHC     bool
	http2     bool
	caFile    string
	sni       string
	insecure  bool

	members []*member
	least   bool
	next    atomic.Uint64
}

// matches reports whether g was built from r's current settings. It does
// not allocate.
func (g *group) matches(r *rules.Rule) bool {
	if g.upstream != r.Upstream || !slices.Equal(g.upstreams, r.Upstreams) || g.lb != r.LoadBalance ||
		g.http2 != r.UpstreamHTTP2 || g.caFile != r.UpstreamCAFile || g.sni != r.UpstreamServerName ||
		g.insecure != r.UpstreamTLSInsecureSkipVerify || g.hasHC != (r.HealthCheck != nil) {
		return false
	}
	return r.HealthCheck == nil || *r.HealthCheck == g.hc
}

// pick returns the member for the next attempt and its index. tried has
// bit i set for each member already tried for this request. It prefers, in
// order: an untried member in rotation, an untried one out of rotation
// (fail open), a tried one in rotation, any; within one tier in turn
// (round robin) or the fewest requests in flight (least requests, ties in
// turn).
func (g *group) pick(tried uint64) (int, *member) {
	n := len(g.members)
	if n == 1 {
		return 0, g.members[0]
	}
	tier := func(j int) int {
		t := 0
		if !g.members[j].available() {
			t++
		}
		if j < 64 && tried&(1<<j) != 0 {
			t += 2
		}
		return t
	}
	if !g.least {
		// Round robin: take turns, and let a member that cannot take its
		// turn (out of rotation, or already tried) pass it on by drawing
		// the next turn, rather than hand it to its neighbour, which would
		// then get twice the others' share.
		for range n {
			j := int((g.next.Add(1) - 1) % uint64(n))
			if tier(j) == 0 {
				return j, g.members[j]
			}
		}
	}
	ctr := g.next.Add(1) - 1
	start := int(ctr % uint64(n))
	best, bestTier := -1, 4
	var bestLoad int64
	for i := range n {
		j := start + i
		if j >= n {
			j -= n
		}
		t := tier(j)
		load := g.members[j].t.inflight.Load()
		if t < bestTier || (t == bestTier && load < bestLoad) {
			best, bestTier, bestLoad = j, t, load
		}
	}
	return best, g.members[best]
}

// group returns r's balancer, building it (with its targets and health
// checkers) when r is new or has changed.
func (p *Pool) group(r *rules.Rule) (*group, error) {
	p.mu.RLock()
	g := p.groups[r.ID]
	closed := p.closed
	p.mu.RUnlock()
	if g != nil && g.matches(r) {
		return g, nil
	}
	if closed {
		return nil, ErrPoolClosed
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPoolClosed
	}
	if g := p.groups[r.ID]; g != nil && g.matches(r) {
		return g, nil
	}
	g = &group{upstream: r.Upstream, upstreams: slices.Clone(r.Upstreams), lb: r.LoadBalance,
		http2: r.UpstreamHTTP2, caFile: r.UpstreamCAFile, sni: r.UpstreamServerName,
		insecure: r.UpstreamTLSInsecureSkipVerify, hasHC: r.HealthCheck != nil,
		least: r.LoadBalance == rules.LeastRequests}
	if r.HealthCheck != nil {
		g.hc = *r.HealthCheck
	}
	n := r.UpstreamCount()
	g.members = make([]*member, 0, n)
	for i := range n {
		up := r.UpstreamAt(i)
		t, err := p.target(r, up)
		if err != nil {
			return nil, err
		}
		k := memberKeyOf(r, up)
		m := p.members[k]
		if m == nil {
			m = p.newMember(k, t)
			p.members[k] = m
		}
		g.members = append(g.members, m)
	}
	p.groups[r.ID] = g
	return g, nil
}

// Retain keeps what the rules rs need and lets go of the rest: the
// balancers of rules no longer in rs (or changed), the connection counts
// of TCP rules no longer in rs, the health checkers of upstreams and
// settings no rule in rs uses, which it stops and waits for, and the
// targets of upstreams no rule in rs names, whose idle and warm
// connections it closes (requests in flight finish on theirs). Call it
// after each change of the rule set with the rules now served; it starts
// nothing. A request of the old rule set that arrives after it can bring
// an upstream back, until the next Retain.
func (p *Pool) Retain(rs []rules.Rule) {
	needT := make(map[targetKey]bool)
	needM := make(map[memberKey]bool)
	needG := make(map[string]*rules.Rule, len(rs))
	needTCP := make(map[string]bool)
	for i := range rs {
		r := &rs[i]
		if r.Protocol == rules.ProtoTCP {
			needTCP[r.ID] = true
			continue
		}
		needG[r.ID] = r
		for j := range r.UpstreamCount() {
			k := memberKeyOf(r, r.UpstreamAt(j))
			needT[k.target] = true
			needM[k] = true
		}
	}
	var stop []*member
	var drop []*Target
	p.mu.Lock()
	for id, g := range p.groups {
		if r := needG[id]; r == nil || !g.matches(r) {
			delete(p.groups, id)
		}
	}
	for k, m := range p.members {
		if !needM[k] {
			delete(p.members, k)
			stop = append(stop, m)
		}
	}
	for k, t := range p.targets {
		if !needT[k] {
			delete(p.targets, k)
			drop = append(drop, t)
		}
	}
	for id := range p.tcp {
		if !needTCP[id] {
			delete(p.tcp, id) // connections still open count on the dropped entry
		}
	}
	p.mu.Unlock()
	stopMembers(stop)
	for _, t := range drop {
		t.close()
	}
}

// UpstreamStatus is what the pool knows of one upstream of a rule.
type UpstreamStatus struct {
	// Upstream is the upstream's URL as the rule names it.
	Upstream string
	// Healthy is the verdict of the health checks; true without any.
	Healthy bool
	// Ejected is true while connection failures in a row hold the
	// upstream out of rotation.
	Ejected bool
	// InFlight counts the requests of every rule in flight on the
	// upstream.
	InFlight int64
}

// Upstreams returns the state of r's upstreams, in the rule's order, for
// the admin API, metrics and tests; nil when no request and no Warm has
// used r yet (or since Retain dropped it), or when r has changed since.
func (p *Pool) Upstreams(r *rules.Rule) []UpstreamStatus {
	p.mu.RLock()
	g := p.groups[r.ID]
	p.mu.RUnlock()
	if g == nil || !g.matches(r) {
		return nil
	}
	out := make([]UpstreamStatus, len(g.members))
	for i, m := range g.members {
		out[i] = UpstreamStatus{Upstream: r.UpstreamAt(i), Healthy: !m.down.Load(), Ejected: m.ejectedNow(),
			InFlight: m.t.inflight.Load()}
	}
	return out
}
