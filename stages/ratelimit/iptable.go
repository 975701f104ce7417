package ratelimit

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// ipTable holds one token bucket per source address, bounded: each shard is
// an LRU list with a fixed capacity, and inserting into a full shard drops
// its least recently used address. Shards keep one mutex from serialising
// every request of a busy listener; with small tables one shard keeps the
// bound and the LRU order exact.
type ipTable struct {
	shards []ipShard
	seed   maphash.Seed // random per table: addresses cannot be picked to crowd one shard
	warned atomic.Bool  // "table full" was logged since the last sweep
}

type ipShard struct {
	mu         sync.Mutex
	m          map[netip.Addr]*ipEntry
	head, tail *ipEntry // head is the most recently used
	max        int
	_          [64]byte // keep shards' mutexes on separate cache lines
}

type ipEntry struct {
	addr       netip.Addr
	rl         *rate.Limiter
	last       int64 // offset of the last request
	prev, next *ipEntry
}

// shardedAbove is the table size from which it is split into 16 shards.
const shardedAbove = 4096

func (t *ipTable) init(maxIPs int) {
	n := 1
	if maxIPs >= shardedAbove {
		n = 16
	}
	t.shards = make([]ipShard, n)
	t.seed = maphash.MakeSeed()
	for i := range t.shards {
		t.shards[i].m = make(map[netip.Addr]*ipEntry)
		t.shards[i].max = maxIPs / n // the sum never exceeds maxIPs
	}
}

func (t *ipTable) shard(a netip.Addr) *ipShard {
	if len(t.shards) == 1 {
		return &t.shards[0]
	}
	b := a.As16()
	return &t.shards[maphash.Bytes(t.seed, b[:])%uint64(len(t.shards))]
}

// get returns a's bucket, making it most recently used, or creates it with
// lim, evicting the least recently used address of a full shard.
func (t *ipTable) get(a netip.Addr, off int64, lim Limit, l *Limiter) *rate.Limiter {
	s := t.shard(a)
	s.mu.Lock()
	if e := s.m[a]; e != nil {
		e.last = off
		s.moveToFront(e)
		rl := e.rl
		s.mu.Unlock()
		return rl
	}
	evicted := false
	if len(s.m) >= s.max {
		s.remove(s.tail)
		evicted = true
	}
	e := &ipEntry{addr: a, rl: rate.NewLimiter(rate.Limit(lim.Rate), lim.Burst), last: off}
	s.m[a] = e
	s.pushFront(e)
	s.mu.Unlock()
	if evicted && !t.warned.Swap(true) {
		l.log.Warn("ratelimit: the per-address table is full; forgetting the least recently seen addresses (raise max_ips if this is normal traffic)",
			"max_ips", t.cap())
	}
	return e.rl
}

// sweep forgets the addresses last seen at or before cutoff. They are at
// the tails of the lists, so the work is proportional to what is dropped.
func (t *ipTable) sweep(cutoff int64) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for s.tail != nil && s.tail.last <= cutoff {
			s.remove(s.tail)
		}
		s.mu.Unlock()
	}
	t.warned.Store(false)
}

func (t *ipTable) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

func (t *ipTable) cap() int {
	n := 0
	for i := range t.shards {
		n += t.shards[i].max
	}
	return n
}

func (s *ipShard) pushFront(e *ipEntry) {
	e.prev, e.next = nil, s.head
	if s.head != nil {
		s.head.prev = e
	}
	s.head = e
	if s.tail == nil {
		s.tail = e
	}
}

func (s *ipShard) unlink(e *ipEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (s *ipShard) moveToFront(e *ipEntry) {
	if s.head == e {
		return
	}
	s.unlink(e)
	s.pushFront(e)
}

func (s *ipShard) remove(e *ipEntry) {
	s.unlink(e)
	delete(s.m, e.addr)
}
