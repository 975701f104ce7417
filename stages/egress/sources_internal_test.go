package egress

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSourceLimit(t *testing.T) {
	t.Parallel()
	l := newSourceLimit(2)
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	require.True(t, l.acquire("c1", a))
	require.True(t, l.acquire("c1", a))
	require.False(t, l.acquire("c1", a), "a third stream for the same source and client")
	require.True(t, l.acquire("c1", b), "another source is counted apart")
	require.True(t, l.acquire("c2", a), "another client (tenant) is counted apart")
	require.True(t, l.acquire("c1", netip.MustParseAddr("::ffff:192.0.2.2")), "an IPv4-mapped address is the IPv4 address")
	require.False(t, l.acquire("c1", b))
	l.release("c1", a)
	require.True(t, l.acquire("c1", a), "a released stream is free again")

	// An IPv6 /64 is one source.
	v6a, v6b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff::9")
	require.True(t, l.acquire("c1", v6a))
	require.True(t, l.acquire("c1", v6b))
	require.False(t, l.acquire("c1", netip.MustParseAddr("2001:db8:1:2::77")))
	require.True(t, l.acquire("c1", netip.MustParseAddr("2001:db8:1:3::1")), "another /64")

	require.True(t, l.acquire("c1", netip.Addr{}), "no address: not limited")
	var none *sourceLimit
	require.True(t, none.acquire("c1", a), "no limit configured")

	// Entries go once their streams do.
	for _, c := range []string{"c1", "c2"} {
		for _, x := range []netip.Addr{a, a, b, b, v6a, v6b, netip.MustParseAddr("2001:db8:1:3::1")} {
			l.release(c, x)
		}
	}
	n := 0
	for i := range l.shards {
		n += len(l.shards[i].m)
	}
	require.Zero(t, n, "no entry is left for sources that hold nothing")
}
