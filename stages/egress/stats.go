package egress

import (
	"slices"
	"sync/atomic"
)

// tcpConns counts the upstream connections of one TCP rule. They are not
// pooled: each is dialled for one user connection and closed with it.
type tcpConns struct {
	dials atomic.Uint64
	open  atomic.Int64
}

// tcpConnsOf returns the counts of TCP rule id, making them on first use.
func (p *Pool) tcpConnsOf(id string) *tcpConns {
	p.mu.RLock()
	c := p.tcp[id]
	p.mu.RUnlock()
	if c != nil {
		return c
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c = p.tcp[id]; c == nil {
		c = new(tcpConns)
		if !p.closed {
			p.tcp[id] = c
		}
	}
	return c
}

// Stats calls f once for each rule the pool serves with the upstream
// connections of its upstreams: how many are idle and how many active now,
// and how many were dialled (successfully) since the upstream's pool was
// made. It is meant for a metrics scrape: it takes the pool's lock briefly
// and calls f after releasing it.
//
// Connections belong to an upstream, not to a rule: rules that point at
// the same upstream (with the same TLS and HTTP/2 settings) share its
// connections, and each of them reports all of them. A rule appears once a
// request or Warm has used it, and goes with Retain or Close.
//
// What is counted, for an HTTP rule's upstream:
//   - dials: every TCP connection opened to it, warm ones and health
//     checks' included;
//   - active: the smaller of the connections open and not parked by the
//     pool (warm, or idle in the lean HTTP/1.1 client) and the requests in
//     flight on the upstream. An HTTP/1.1 request holds one connection, so
//     for HTTP/1.1 this is the connections in use; an HTTP/2 connection
//     carries many requests, so there it is an upper bound. net/http's
//     Transport (HTTP/2, https://, Expect and Upgrade requests) does not
//     say which of its connections are idle: the bound stands in for it;
//   - idle: the other open connections.
//
// A TCP rule's connections are not pooled: dials counts them, active is
// those open (one per user connection), idle is 0.
func (p *Pool) Stats(f func(rule string, idle, active int, dials uint64)) {
	type row struct {
		rule         string
		idle, active int
		dials        uint64
	}
	p.mu.RLock()
	rows := make([]row, 0, len(p.groups)+len(p.tcp))
	for id, g := range p.groups {
		r := row{rule: id}
		for i, m := range g.members {
			if slices.ContainsFunc(g.members[:i], func(o *member) bool { return o.t == m.t }) {
				continue // an upstream named twice: count its connections once
			}
			idle, active := m.t.conns()
			r.idle += idle
			r.active += active
			r.dials += m.t.dials.Load()
		}
		rows = append(rows, r)
	}
	for id, c := range p.tcp {
		rows = append(rows, row{rule: id, active: int(max(c.open.Load(), 0)), dials: c.dials.Load()})
	}
	p.mu.RUnlock()
	for _, r := range rows {
		f(r.rule, r.idle, r.active, r.dials)
	}
}
