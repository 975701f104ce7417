// Package authlimit throttles failed logins: tunnel handshakes and admin
// requests with a wrong token.
//
// Failures are counted per source address and, for logins that name an
// account (a tunnel client id), per account. Past the limit, further
// attempts are refused before their credentials are checked, for a
// back-off that starts at one window and doubles each time the key goes
// over again, up to a cap. An account over its limit is refused only from
// addresses it has not logged in from successfully before, so that someone
// guessing its token cannot lock the real client out.
//
// Every failure and refusal is logged, but at most once per window per
// key, as one record with the counts since the previous one; a quiet key
// logs nothing. Memory is bounded: the tables of sources and accounts have
// fixed sizes, evict their least recently used entries when full and drop
// idle entries as they go.
package authlimit

import (
	"container/list"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// IDFactor multiplies MaxFailures for an account: an account may have
// this many times as many failures within a window, from all sources
// together, as one source may.
const IDFactor = 4

// Defaults of Config's bounds.
const (
	DefaultMaxSources = 10000
	DefaultMaxIDs     = 1000
	DefaultMaxRecords = 32
)

const (
	// goodAddrs is how many addresses an account's successful logins
	// are remembered from, most recent first.
	goodAddrs = 4
	// maxSeen is how many distinct ids (for a source) or addresses (for
	// an account) a record lists; more are shown as "...".
	maxSeen = 4
	// maxIDLen truncates ids in records: they come from the attempt.
	maxIDLen = 64
	// secondChances bounds how many throttled entries an eviction passes
	// over (moving them to the front) before it evicts one anyway.
	secondChances = 8
)

// Attempt is one login attempt.
type Attempt struct {
	// Source is the address the attempt came from (an IPv4-mapped IPv6
	// address counts as the IPv4 address).
	Source netip.Addr
	// ID is the account the attempt names, as the attempt gave it, or ""
	// (admin requests name none). It is shown in records, truncated.
	ID string
	// Known says that ID names an account that exists (a configured
	// client id). Only known ids are counted per account: ids an attacker
	// invents cannot crowd real ones out of the bounded table.
	Known bool
}

// Config configures a Limiter. MaxFailures, Window and MaxBackoff are
// required; the rest have defaults.
type Config struct {
	// Kind names what the logins are for ("tunnel", "admin"); it is the
	// kind attribute of the records.
	Kind string
	// MaxFailures is how many failures one source may have within Window;
	// its next attempts are refused unchecked. An account may have
	// IDFactor times as many, from all sources together.
	MaxFailures int
	// Window is the counting window (it starts at a key's first failure)
	// and the first back-off. A record per key is logged at most once per
	// Window.
	Window time.Duration
	// MaxBackoff caps the back-off, which doubles each time a key goes
	// over again before MaxBackoff has passed since its last back-off
	// ended. If it is shorter than Window it is the back-off.
	MaxBackoff time.Duration
	// MaxSources bounds the source addresses tracked. Zero means
	// DefaultMaxSources.
	MaxSources int
	// MaxIDs bounds the accounts tracked, and separately the accounts
	// whose good addresses are remembered. Zero means DefaultMaxIDs.
	MaxIDs int
	// MaxRecords bounds the records logged for individual keys per
	// Window; the counts of further keys are summed into one record.
	// Zero means DefaultMaxRecords.
	MaxRecords int
	// Logger receives the records, at warn. Default slog.Default().
	Logger *slog.Logger
	// OnFailure and OnRefused, if set, are called once per failure and
	// per refusal (for metrics), without the Limiter's lock held.
	OnFailure, OnRefused func()
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Limiter throttles failed logins. Create it with New and Close it when
// done. Its methods are safe for concurrent use, and a nil *Limiter allows
// everything and records nothing.
//
// Failures of attempts that pass Allow at the same moment are all counted,
// so a source may have a few more than MaxFailures checked when it sends
// them concurrently.
type Limiter struct {
	cfg Config
	now func() time.Time
	log *slog.Logger

	mu        sync.Mutex
	sources   table[netip.Addr]
	ids       table[string]
	good      goodTable
	lastSweep time.Time
	// The record budget of the current window, and what did not fit.
	budgetStart time.Time
	budget      int
	overflow    overflow
	// The flush timer: one per Limiter, armed while counts wait to be
	// logged, so that the counts of a burst that ended are logged within
	// about a window without a goroutine of its own.
	timer  *time.Timer
	armed  bool
	closed bool
}

// New checks c and returns a Limiter.
func New(c Config) (*Limiter, error) {
	switch {
	case c.MaxFailures < 1:
		return nil, errors.New("authlimit: MaxFailures must be at least 1")
	case c.Window <= 0:
		return nil, errors.New("authlimit: Window must be positive")
	case c.MaxBackoff <= 0:
		return nil, errors.New("authlimit: MaxBackoff must be positive")
	case c.MaxSources < 0 || c.MaxIDs < 0 || c.MaxRecords < 0:
		return nil, errors.New("authlimit: negative bound")
	}
	if c.MaxSources == 0 {
		c.MaxSources = DefaultMaxSources
	}
	if c.MaxIDs == 0 {
		c.MaxIDs = DefaultMaxIDs
	}
	if c.MaxRecords == 0 {
		c.MaxRecords = DefaultMaxRecords
	}
	l := &Limiter{cfg: c, now: c.Now, log: c.Logger}
	if l.now == nil {
		l.now = time.Now
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.sources.init(c.MaxSources)
	l.ids.init(c.MaxIDs)
	l.good.init(c.MaxIDs)
	return l, nil
}

// Allow reports whether a may be checked. When it may not (its source, or
// its known account from a source that account never logged in from, is
// throttled), ok is false and retryAfter says how long the refusal lasts;
// the refusal is counted and logged. A nil Limiter allows everything.
func (l *Limiter) Allow(a Attempt) (retryAfter time.Duration, ok bool) {
	if l == nil {
		return 0, true
	}
	now := l.now()
	src := a.Source.Unmap()
	l.mu.Lock()
	recs := l.maybeSweep(now, nil)
	if e := l.sources.get(src); e != nil && now.Before(e.blockedUntil) {
		retryAfter = e.blockedUntil.Sub(now)
		e.pendRefused++
		e.see(idLabel(a.ID))
		recs = l.maybeLog(e, false, now, recs)
	} else if e := l.idEntry(a); e != nil && now.Before(e.blockedUntil) && !l.good.has(a.ID, src) {
		retryAfter = e.blockedUntil.Sub(now)
		e.pendRefused++
		e.see(src.String())
		recs = l.maybeLog(e, true, now, recs)
	}
	if retryAfter > 0 {
		l.arm()
	}
	l.mu.Unlock()
	l.emit(recs)
	if retryAfter > 0 {
		if l.cfg.OnRefused != nil {
			l.cfg.OnRefused()
		}
		return retryAfter, false
	}
	return 0, true
}

// Failed records that a was checked and its credentials were wrong.
func (l *Limiter) Failed(a Attempt) {
	if l == nil {
		return
	}
	now := l.now()
	src := a.Source.Unmap()
	l.mu.Lock()
	recs := l.maybeSweep(now, nil)
	e, evicted := l.sources.add(src, now)
	l.fold(evicted, false)
	if e.name == "" {
		e.name = src.String()
	}
	e.fail(now, l.cfg.MaxFailures, l.cfg.Window, l.cfg.MaxBackoff)
	e.see(idLabel(a.ID))
	recs = l.maybeLog(e, false, now, recs)
	if a.ID != "" && a.Known {
		ie, evicted := l.ids.add(a.ID, now)
		l.fold(evicted, true)
		if ie.name == "" {
			ie.name = a.ID
		}
		ie.fail(now, IDFactor*l.cfg.MaxFailures, l.cfg.Window, l.cfg.MaxBackoff)
		ie.see(src.String())
		recs = l.maybeLog(ie, true, now, recs)
	}
	l.arm()
	l.mu.Unlock()
	l.emit(recs)
	if l.cfg.OnFailure != nil {
		l.cfg.OnFailure()
	}
}

// Succeeded records that a was checked and its credentials were right: its
// source's count and back-off start afresh, and its known account
// remembers the source as a good address. Other sources and the account's
// own count are left as they are.
func (l *Limiter) Succeeded(a Attempt) {
	if l == nil {
		return
	}
	now := l.now()
	src := a.Source.Unmap()
	l.mu.Lock()
	recs := l.maybeSweep(now, nil)
	if e := l.sources.get(src); e != nil {
		e.failures, e.windowStart, e.backoff = 0, time.Time{}, 0
	}
	if a.ID != "" && a.Known {
		l.good.add(a.ID, src)
	}
	l.mu.Unlock()
	l.emit(recs)
}

// Close logs the counts that wait to be logged and stops the flush timer.
// The Limiter keeps working after Close, but logs only at its next sweep
// on use.
func (l *Limiter) Close() {
	if l == nil {
		return
	}
	now := l.now()
	l.mu.Lock()
	l.closed = true
	if l.timer != nil {
		l.timer.Stop()
	}
	l.armed = false
	var recs []record
	for el := l.sources.order.Front(); el != nil; el = el.Next() {
		recs = l.logEntry(el.Value.(*node[netip.Addr]).e, false, now, true, recs)
	}
	for el := l.ids.order.Front(); el != nil; el = el.Next() {
		recs = l.logEntry(el.Value.(*node[string]).e, true, now, true, recs)
	}
	recs = l.flushOverflow(recs)
	l.mu.Unlock()
	l.emit(recs)
}

// idEntry returns a's account entry, if a names a known account that has
// one.
func (l *Limiter) idEntry(a Attempt) *entry {
	if a.ID == "" || !a.Known {
		return nil
	}
	return l.ids.get(a.ID)
}

// idLabel is how an attempt's id is shown in a source's record.
func idLabel(id string) string {
	if len(id) > maxIDLen {
		return id[:maxIDLen] + "..."
	}
	return id
}

// entry is the state of one key: a source address or an account.
type entry struct {
	name string // as logged

	windowStart  time.Time // zero: no window running
	failures     int       // in the window
	blockedUntil time.Time
	backoff      time.Duration // the last back-off; zero once forgotten

	// What the next record reports.
	lastLog     time.Time
	pendFail    int
	pendRefused int
	engaged     bool // went over since the last record
	seen        []string
	seenMore    bool
}

// fail counts one failure against limit and starts a back-off when the
// count reaches it.
func (e *entry) fail(now time.Time, limit int, window, maxBackoff time.Duration) {
	e.pendFail++
	if now.Before(e.blockedUntil) {
		return // checked before the back-off began (concurrent attempts)
	}
	if e.windowStart.IsZero() || now.Sub(e.windowStart) >= window {
		e.windowStart, e.failures = now, 0
	}
	e.failures++
	if e.failures < limit {
		return
	}
	first := min(window, maxBackoff)
	if e.backoff > 0 && now.Sub(e.blockedUntil) < maxBackoff {
		e.backoff = max(min(2*e.backoff, maxBackoff), first)
	} else {
		e.backoff = first
	}
	e.blockedUntil = now.Add(e.backoff)
	e.windowStart, e.failures = time.Time{}, 0
	e.engaged = true
}

func (e *entry) see(s string) {
	if s == "" {
		return
	}
	for _, v := range e.seen {
		if v == s {
			return
		}
	}
	if len(e.seen) < maxSeen {
		e.seen = append(e.seen, s)
		return
	}
	e.seenMore = true
}

func (e *entry) pending() bool { return e.pendFail+e.pendRefused > 0 }

// reportable reports whether e has a record to log. An account's is due
// only once it was throttled: until then its failures are in its sources'
// records.
func (e *entry) reportable(isID bool) bool {
	if isID {
		return e.engaged || e.pendRefused > 0
	}
	return e.pending()
}

// idle reports whether e can be dropped: nothing to log, no window
// running, and its back-off over for MaxBackoff (until then a new one
// would double it).
func (e *entry) idle(now time.Time, window, maxBackoff time.Duration) bool {
	if e.pending() {
		return false
	}
	if !e.windowStart.IsZero() && now.Sub(e.windowStart) < window {
		return false
	}
	return e.backoff == 0 || now.Sub(e.blockedUntil) >= maxBackoff
}

// record is one log record, built under the lock and written after it.
type record struct{ attrs []slog.Attr }

// maybeLog appends e's record to recs if e has something to report and
// has not been logged within the window.
func (l *Limiter) maybeLog(e *entry, isID bool, now time.Time, recs []record) []record {
	return l.logEntry(e, isID, now, false, recs)
}

// logEntry appends e's record to recs if e has something to report and,
// unless force, has not been logged within the window. A key over the
// record budget has its counts summed into the overflow record instead.
func (l *Limiter) logEntry(e *entry, isID bool, now time.Time, force bool, recs []record) []record {
	if !e.reportable(isID) {
		return recs
	}
	if !force && !e.lastLog.IsZero() && now.Sub(e.lastLog) < l.cfg.Window {
		return recs
	}
	if !force {
		recs = l.rollBudget(now, recs)
	}
	if l.budget >= l.cfg.MaxRecords {
		l.overflow.add(e, isID)
		e.reset(now)
		return recs
	}
	l.budget++
	return append(recs, l.recordOf(e, isID, now))
}

func (l *Limiter) recordOf(e *entry, isID bool, now time.Time) record {
	keyAttr, seenAttr := "source", "client_ids"
	if isID {
		keyAttr, seenAttr = "client_id", "sources"
	}
	attrs := []slog.Attr{
		slog.String("kind", l.cfg.Kind),
		slog.String(keyAttr, e.name),
		slog.Int("failures", e.pendFail),
		slog.Int("refused", e.pendRefused),
	}
	if len(e.seen) > 0 {
		s := strings.Join(e.seen, ",")
		if e.seenMore {
			s += ",..."
		}
		attrs = append(attrs, slog.String(seenAttr, s))
	}
	if now.Before(e.blockedUntil) || e.engaged {
		attrs = append(attrs, slog.Duration("backoff", e.backoff))
		if now.Before(e.blockedUntil) {
			left := e.blockedUntil.Sub(now)
			attrs = append(attrs, slog.Duration("retry_in", (left+time.Second-1).Truncate(time.Second)))
		}
	}
	e.reset(now)
	return record{attrs: attrs}
}

// reset starts e's next record.
func (e *entry) reset(now time.Time) {
	e.lastLog = now
	e.pendFail, e.pendRefused = 0, 0
	e.engaged = false
	e.seen, e.seenMore = e.seen[:0], false
}

// rollBudget starts a new record budget once a window has passed since the
// current one started, logging what did not fit into the last one.
func (l *Limiter) rollBudget(now time.Time, recs []record) []record {
	if !l.budgetStart.IsZero() && now.Sub(l.budgetStart) < l.cfg.Window {
		return recs
	}
	recs = l.flushOverflow(recs)
	l.budgetStart, l.budget = now, 0
	return recs
}

// overflow sums the counts of keys whose records did not fit the budget,
// and of evicted keys.
type overflow struct {
	sources, ids      int
	failures, refused int
}

func (o *overflow) add(e *entry, isID bool) {
	if isID {
		o.ids++
	} else {
		o.sources++
	}
	o.failures += e.pendFail
	o.refused += e.pendRefused
}

func (l *Limiter) flushOverflow(recs []record) []record {
	o := l.overflow
	if o.failures+o.refused == 0 {
		return recs
	}
	l.overflow = overflow{}
	return append(recs, record{attrs: []slog.Attr{
		slog.String("kind", l.cfg.Kind),
		slog.Int("more_sources", o.sources),
		slog.Int("more_client_ids", o.ids),
		slog.Int("failures", o.failures),
		slog.Int("refused", o.refused),
	}})
}

// fold adds an evicted entry's counts to the overflow record: logging each
// eviction would let a flood of new addresses flood the log.
func (l *Limiter) fold(e *entry, isID bool) {
	if e == nil || !e.reportable(isID) {
		return
	}
	l.overflow.add(e, isID)
}

// maybeSweep logs due records and drops idle entries, at most twice per
// window (or always with force). It runs on use and from the flush timer.
func (l *Limiter) maybeSweep(now time.Time, recs []record) []record {
	if !l.lastSweep.IsZero() && now.Sub(l.lastSweep) < l.cfg.Window/2 {
		return recs
	}
	recs, _ = l.sweep(now, recs)
	return recs
}

// sweep logs every due record and drops idle entries. It reports whether
// counts still wait to be logged.
func (l *Limiter) sweep(now time.Time, recs []record) ([]record, bool) {
	l.lastSweep = now
	waiting := false
	for el := l.sources.order.Front(); el != nil; {
		next := el.Next()
		n := el.Value.(*node[netip.Addr])
		recs = l.maybeLog(n.e, false, now, recs)
		if n.e.idle(now, l.cfg.Window, l.cfg.MaxBackoff) {
			l.sources.remove(el)
		} else if n.e.pending() {
			waiting = true
		}
		el = next
	}
	for el := l.ids.order.Front(); el != nil; {
		next := el.Next()
		n := el.Value.(*node[string])
		recs = l.maybeLog(n.e, true, now, recs)
		if !n.e.reportable(true) && (n.e.windowStart.IsZero() || now.Sub(n.e.windowStart) >= l.cfg.Window) {
			// Failures of a window that ended without a throttle
			// are in the sources' records: none for the account.
			n.e.pendFail = 0
			n.e.seen, n.e.seenMore = n.e.seen[:0], false
		}
		if n.e.idle(now, l.cfg.Window, l.cfg.MaxBackoff) {
			l.ids.remove(el)
		} else if n.e.pending() {
			waiting = true
		}
		el = next
	}
	recs = l.rollBudget(now, recs)
	if l.overflow.failures+l.overflow.refused > 0 {
		waiting = true
	}
	return recs, waiting
}

// arm starts the flush timer if it is not running. Called with l.mu held.
func (l *Limiter) arm() {
	if l.armed || l.closed {
		return
	}
	l.armed = true
	if l.timer == nil {
		l.timer = time.AfterFunc(l.cfg.Window, l.flush)
		return
	}
	l.timer.Reset(l.cfg.Window)
}

// flush is the flush timer's function.
func (l *Limiter) flush() {
	now := l.now()
	l.mu.Lock()
	l.armed = false
	if l.closed {
		l.mu.Unlock()
		return
	}
	recs, waiting := l.sweep(now, nil)
	if waiting {
		l.arm()
	}
	l.mu.Unlock()
	l.emit(recs)
}

func (l *Limiter) emit(recs []record) {
	for _, r := range recs {
		l.log.LogAttrs(context.Background(), slog.LevelWarn, "failed logins", r.attrs...)
	}
}

// table is a bounded map of entries in least recently used order.
type table[K comparable] struct {
	max   int
	m     map[K]*list.Element // of *node[K]
	order list.List           // front: most recently used
}

type node[K comparable] struct {
	key K
	e   *entry
}

func (t *table[K]) init(max int) {
	t.max = max
	t.m = make(map[K]*list.Element)
	t.order.Init()
}

// get returns k's entry, marked as used, or nil.
func (t *table[K]) get(k K) *entry {
	el, ok := t.m[k]
	if !ok {
		return nil
	}
	t.order.MoveToFront(el)
	return el.Value.(*node[K]).e
}

// add returns k's entry, made if there is none; making one in a full table
// evicts the least recently used entry that is not throttled (passing
// over at most secondChances that are, which move to the front), and
// returns the evicted entry.
func (t *table[K]) add(k K, now time.Time) (e, evicted *entry) {
	if e := t.get(k); e != nil {
		return e, nil
	}
	if len(t.m) >= t.max {
		for range secondChances {
			back := t.order.Back()
			if !now.Before(back.Value.(*node[K]).e.blockedUntil) {
				break
			}
			t.order.MoveToFront(back)
		}
		back := t.order.Back()
		evicted = back.Value.(*node[K]).e
		t.remove(back)
	}
	e = &entry{}
	t.m[k] = t.order.PushFront(&node[K]{key: k, e: e})
	return e, evicted
}

func (t *table[K]) remove(el *list.Element) {
	delete(t.m, el.Value.(*node[K]).key)
	t.order.Remove(el)
}

// goodTable remembers, per account, the addresses of its latest
// successful logins; bounded, least recently successful accounts first out.
type goodTable struct {
	max   int
	m     map[string]*list.Element // of *goodNode
	order list.List
}

type goodNode struct {
	id    string
	addrs [goodAddrs]netip.Addr // most recent first; zero: empty
}

func (g *goodTable) init(max int) {
	g.max = max
	g.m = make(map[string]*list.Element)
	g.order.Init()
}

func (g *goodTable) add(id string, src netip.Addr) {
	el, ok := g.m[id]
	if !ok {
		if len(g.m) >= g.max {
			back := g.order.Back()
			delete(g.m, back.Value.(*goodNode).id)
			g.order.Remove(back)
		}
		el = g.order.PushFront(&goodNode{id: id})
		g.m[id] = el
	}
	g.order.MoveToFront(el)
	n := el.Value.(*goodNode)
	i := 0
	for i < len(n.addrs)-1 && n.addrs[i] != src && n.addrs[i].IsValid() {
		i++
	}
	copy(n.addrs[1:i+1], n.addrs[:i])
	n.addrs[0] = src
}

func (g *goodTable) has(id string, src netip.Addr) bool {
	el, ok := g.m[id]
	if !ok {
		return false
	}
	for _, a := range el.Value.(*goodNode).addrs {
		if a.IsValid() && a == src {
			return true
		}
	}
	return false
}
