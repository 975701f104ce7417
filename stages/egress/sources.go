package egress

import (
	"hash/maphash"
	"net/netip"
	"sync"
)

// sourceLimit counts the tunnel streams each source address holds towards
// each client, and refuses one more past max. Entries exist only while a
// source holds streams, so its size is bounded by the streams in flight.
// Safe for concurrent use; a nil *sourceLimit limits nothing.
type sourceLimit struct {
	max    int32
	seed   maphash.Seed
	shards [64]sourceShard
}

type sourceShard struct {
	mu sync.Mutex
	m  map[sourceKey]int32
	_  [40]byte // a shard per cache line
}

type sourceKey struct {
	client string
	addr   netip.Addr
}

func newSourceLimit(max int) *sourceLimit {
	l := &sourceLimit{max: int32(max), seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].m = make(map[sourceKey]int32)
	}
	return l
}

func (l *sourceLimit) shard(a netip.Addr) *sourceShard {
	b := a.As16()
	return &l.shards[maphash.Bytes(l.seed, b[:])%uint64(len(l.shards))]
}

// sourceOf is what counts as one source: an IPv4 address, or an IPv6 /64
// (one subscriber's or one host's usual allocation: an attacker with a /64
// has billions of addresses).
func sourceOf(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		a = p.Addr()
	}
	return a
}

// acquire takes a stream for addr towards client, unless addr's source
// holds max already. An invalid address (no IP: a Unix socket) is not
// limited.
func (l *sourceLimit) acquire(client string, addr netip.Addr) bool {
	if l == nil || !addr.IsValid() {
		return true
	}
	addr = sourceOf(addr)
	sh := l.shard(addr)
	k := sourceKey{client, addr}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := sh.m[k]
	if n >= l.max {
		return false
	}
	sh.m[k] = n + 1
	return true
}

// release gives back a stream acquire took.
func (l *sourceLimit) release(client string, addr netip.Addr) {
	if l == nil || !addr.IsValid() {
		return
	}
	addr = sourceOf(addr)
	sh := l.shard(addr)
	k := sourceKey{client, addr}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if n := sh.m[k]; n > 1 {
		sh.m[k] = n - 1
	} else {
		delete(sh.m, k)
	}
}
