package ipfilter_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/internal/stagetest"
	"github.com/qtunnel/qtunnel/stages/ipfilter"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

var pass = pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return nil })

func newFilter(t testing.TB, c ipfilter.Config) *ipfilter.Stage {
	t.Helper()
	s, err := ipfilter.New(c)
	require.NoError(t, err)
	require.Equal(t, ipfilter.Name, s.Name())
	return s
}

// run sends an HTTP exchange from src ("" for none) through s and says
// whether the next stage was reached.
func run(s *ipfilter.Stage, src string) (reached bool, err error) {
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
	if src != "" {
		x.Source = netip.MustParseAddr(src)
	}
	err = s.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		reached = true
		return nil
	}))
	return reached, err
}

// check asserts that each source is admitted or refused with a proper 403.
func check(t *testing.T, s *ipfilter.Stage, admitted bool, sources ...string) {
	t.Helper()
	for _, src := range sources {
		reached, err := run(s, src)
		if admitted {
			assert.NoError(t, err, src)
			assert.True(t, reached, src)
			if src != "" {
				assert.True(t, s.Allowed(netip.MustParseAddr(src)), src)
			}
			continue
		}
		assert.False(t, reached, "%s must not reach the next stage", src)
		var rj *pipeline.Reject
		if assert.ErrorAs(t, err, &rj, src) {
			assert.Equal(t, http.StatusForbidden, rj.Status, src)
			assert.NotContains(t, rj.Message, "\n")
		}
		if src != "" {
			assert.False(t, s.Allowed(netip.MustParseAddr(src)), src)
		}
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     ipfilter.Config
		wantErr string
	}{
		{"zero value", ipfilter.Config{}, ""},
		{"addresses and CIDRs of both families", ipfilter.Config{
			Allow: []string{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "::1", "::ffff:10.0.0.0/104", "0.0.0.0/0", "::/0"},
			Deny:  []string{"10.1.2.3/8", "198.51.100.0/24"},
		}, ""},
		{"prefix too long", ipfilter.Config{Allow: []string{"10.0.0.0/8", "10.0.0.0/33"}}, `allow[1]: "10.0.0.0/33" is not a CIDR`},
		{"IPv6 prefix too long", ipfilter.Config{Deny: []string{"2001:db8::/129"}}, `deny[0]: "2001:db8::/129" is not a CIDR`},
		{"host name", ipfilter.Config{Deny: []string{"localhost"}}, `deny[0]: "localhost" is not an IP address or a CIDR`},
		{"empty entry", ipfilter.Config{Allow: []string{""}}, "allow[0]: empty entry"},
		{"zone", ipfilter.Config{Allow: []string{"fe80::1%eth0"}}, `allow[0]: "fe80::1%eth0" has a zone`},
		{"zone in a CIDR", ipfilter.Config{Allow: []string{"fe80::%eth0/64"}}, `allow[0]: "fe80::%eth0/64" is not a CIDR`},
		{"spaces", ipfilter.Config{Allow: []string{" 10.0.0.1"}}, `allow[0]: " 10.0.0.1" is not an IP address`},
		{"address with a port", ipfilter.Config{Allow: []string{"10.0.0.1:80"}}, `allow[0]: "10.0.0.1:80" is not an IP address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := ipfilter.New(tt.cfg)
			stagetest.CheckNew(t, ipfilter.Name, s, err, tt.wantErr)
			if tt.wantErr == "" {
				require.NoError(t, tt.cfg.Validate())
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	err := ipfilter.Config{
		Allow: []string{"10.0.0.0/8", "10.0.0.0/33", "bad"},
		Deny:  []string{"1.2.3.4", "::1/200"},
	}.Validate()
	require.Error(t, err)
	require.Equal(t, `allow[1]: "10.0.0.0/33" is not a CIDR`+"\n"+
		`allow[2]: "bad" is not an IP address or a CIDR`+"\n"+
		`deny[1]: "::1/200" is not a CIDR`, err.Error())
}

func TestZeroConfigAdmitsEveryone(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{})
	check(t, s, true, "192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1", "")
	require.True(t, s.Allowed(netip.Addr{}))
}

func TestAllowList(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Allow: []string{"10.0.0.0/8", "192.0.2.7", "2001:db8:1::/48", "::1"}})
	check(t, s, true, "10.0.0.0", "10.255.255.255", "10.1.2.3", "192.0.2.7", "2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff", "::1")
	check(t, s, false, "9.255.255.255", "11.0.0.0", "192.0.2.6", "192.0.2.8", "2001:db8:2::", "2001:db8::ffff", "::2", "127.0.0.1")
}

func TestDenyList(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Deny: []string{"198.51.100.0/24", "2001:db8:bad::/48", "203.0.113.9"}})
	check(t, s, false, "198.51.100.0", "198.51.100.255", "2001:db8:bad::1", "203.0.113.9")
	check(t, s, true, "198.51.101.0", "198.51.99.255", "2001:db8:bad0::1", "203.0.113.8", "10.0.0.1", "::1")
}

func TestDenyWins(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{
		Allow: []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.1"},
		Deny:  []string{"10.66.0.0/16", "2001:db8::66", "192.0.2.1"},
	})
	check(t, s, true, "10.65.255.255", "10.67.0.0", "2001:db8::65")
	check(t, s, false, "10.66.0.1", "2001:db8::66", "192.0.2.1", "172.16.0.1")
}

func TestCauses(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Allow: []string{"10.0.0.0/8"}, Deny: []string{"10.0.0.1"}})
	_, err := run(s, "10.0.0.1")
	require.ErrorIs(t, err, ipfilter.ErrDenied)
	require.EqualError(t, err, "403 forbidden: 10.0.0.1 is not allowed: "+ipfilter.ErrDenied.Error())
	_, err = run(s, "192.0.2.1")
	require.ErrorIs(t, err, ipfilter.ErrNotAllowed)
	status, msg, retry := pipeline.Answer(err)
	require.Equal(t, http.StatusForbidden, status)
	require.Equal(t, "forbidden: 192.0.2.1 is not allowed", msg)
	require.Zero(t, retry)
}

// An IPv4-mapped IPv6 source is its IPv4 address: it matches IPv4 entries
// and is named as IPv4 in the refusal. Mapped entries are IPv4 entries.
func TestIPv4MappedSources(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Allow: []string{"10.0.0.0/8", "::ffff:192.0.2.0/120"}, Deny: []string{"::ffff:10.9.9.9"}})
	check(t, s, true, "::ffff:10.1.2.3", "10.1.2.3", "192.0.2.200", "::ffff:192.0.2.200")
	check(t, s, false, "::ffff:11.0.0.1", "10.9.9.9", "::ffff:10.9.9.9", "::a01:203")
	_, err := run(s, "::ffff:11.0.0.1")
	_, msg, _ := pipeline.Answer(err)
	require.Equal(t, "forbidden: 11.0.0.1 is not allowed", msg)
}

// The families are apart: ::/0 does not admit IPv4 users, 0.0.0.0/0 does
// not admit IPv6 users.
func TestFamiliesAreApart(t *testing.T) {
	t.Parallel()
	v4 := newFilter(t, ipfilter.Config{Allow: []string{"0.0.0.0/0"}})
	check(t, v4, true, "0.0.0.0", "255.255.255.255", "::ffff:1.2.3.4")
	check(t, v4, false, "::", "2001:db8::1", "::1")
	v6 := newFilter(t, ipfilter.Config{Allow: []string{"::/0"}})
	check(t, v6, true, "::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
	check(t, v6, false, "0.0.0.0", "10.0.0.1", "::ffff:10.0.0.1")
	both := newFilter(t, ipfilter.Config{Deny: []string{"0.0.0.0/0", "::/0"}})
	check(t, both, false, "1.2.3.4", "2001:db8::1", "255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
}

func TestZonesAreIgnoredOnSources(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Allow: []string{"fe80::/10"}})
	check(t, s, true, "fe80::1%eth0", "fe80::1")
	check(t, s, false, "fe00::1%eth0")
}

// An exchange with no source fails closed when the filter lists anything.
func TestNoSource(t *testing.T) {
	t.Parallel()
	for _, c := range []ipfilter.Config{{Allow: []string{"0.0.0.0/0", "::/0"}}, {Deny: []string{"192.0.2.1"}}} {
		s := newFilter(t, c)
		reached, err := run(s, "")
		require.False(t, reached)
		require.ErrorIs(t, err, ipfilter.ErrNoSource)
		status, msg, _ := pipeline.Answer(err)
		require.Equal(t, http.StatusForbidden, status)
		require.Equal(t, "forbidden: unknown source address", msg)
		require.False(t, s.Allowed(netip.Addr{}))
	}
}

// A TCP rule's exchange has a source but no request: the stage does not
// need one.
func TestTCPExchange(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Allow: []string{"192.0.2.0/24"}})
	for src, want := range map[string]bool{"192.0.2.9": true, "203.0.113.1": false} {
		x := pipeline.Acquire(pipeline.Ingress)
		x.Protocol = pipeline.ProtoTCP
		x.Source = netip.MustParseAddr(src)
		require.Nil(t, x.Request)
		err := s.Handle(context.Background(), x, pass)
		x.Release()
		if want {
			require.NoError(t, err, src)
		} else {
			require.Error(t, err, src)
		}
	}
}

// The next stage's error comes back as it is.
func TestNextError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	s := newFilter(t, ipfilter.Config{Allow: []string{"192.0.2.0/24"}})
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Source = netip.MustParseAddr("192.0.2.1")
	err := s.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return boom }))
	require.Same(t, boom, err)
}

// Overlapping, nested, adjacent and duplicate entries merge without
// changing what matches; the merged set agrees with a plain scan of the
// prefixes on random addresses near and far from their edges.
func TestMatchesLikeAScan(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	randAddr := func(v6 bool) netip.Addr {
		if v6 {
			var b [16]byte
			for i := range b {
				b[i] = byte(rng.UintN(256))
			}
			if rng.UintN(2) == 0 {
				b[0], b[1], b[2] = 0x20, 0x01, 0x0d // crowd a small space
			}
			return netip.AddrFrom16(b)
		}
		var b [4]byte
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		b[0] &= 0x0f // crowd a small space
		return netip.AddrFrom4(b)
	}
	for round := range 20 {
		var entries []string
		var prefixes []netip.Prefix
		for range 1 + rng.IntN(200) {
			v6 := rng.UintN(2) == 0
			a := randAddr(v6)
			bits := rng.IntN(a.BitLen() + 1)
			if !v6 {
				bits = max(bits, 4)
			}
			p := netip.PrefixFrom(a, bits)
			entries = append(entries, p.String())
			prefixes = append(prefixes, p.Masked())
		}
		s := newFilter(t, ipfilter.Config{Allow: entries})
		probe := func(a netip.Addr) {
			want := false
			for _, p := range prefixes {
				want = want || p.Contains(a)
			}
			require.Equal(t, want, s.Allowed(a), "round %d: %s in %v", round, a, entries)
		}
		for _, p := range prefixes {
			probe(p.Addr())
			probe(p.Addr().Prev())
			last := lastAddr(p)
			probe(last)
			probe(last.Next())
		}
		for range 2000 {
			probe(randAddr(rng.UintN(2) == 0))
		}
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func TestEdgesOfTheAddressSpace(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Allow: []string{
		"0.0.0.0", "255.255.255.255", "255.255.255.0/24", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff::/16",
	}})
	check(t, s, true, "0.0.0.0", "255.255.255.255", "255.255.255.1", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff::1")
	check(t, s, false, "0.0.0.1", "255.255.254.255", "::2", "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
}

func TestModule(t *testing.T) {
	t.Parallel()
	require.Equal(t, ipfilter.Name, ipfilter.Module.Name)
	require.Equal(t, pipeline.AllProtocols, ipfilter.Module.Protocols)
	require.True(t, ipfilter.Module.Protocols.Has(pipeline.ProtoTCP))

	t.Run("decode fills the config", func(t *testing.T) {
		st, err := ipfilter.Module.New(func(v any) error {
			c, ok := v.(*ipfilter.Config)
			require.True(t, ok, "decode gets a *Config, not %T", v)
			c.Deny = []string{"192.0.2.1"}
			return nil
		})
		require.NoError(t, err)
		s, ok := st.(*ipfilter.Stage)
		require.True(t, ok)
		check(t, s, false, "192.0.2.1")
		check(t, s, true, "192.0.2.2")
	})
	t.Run("no settings: the zero config", func(t *testing.T) {
		st, err := ipfilter.Module.New(func(any) error { return nil })
		require.NoError(t, err)
		check(t, st.(*ipfilter.Stage), true, "192.0.2.1", "")
	})
	t.Run("decode fails", func(t *testing.T) {
		bad := errors.New(`line 3: field "alow" not found`)
		st, err := ipfilter.Module.New(func(any) error { return bad })
		require.ErrorIs(t, err, bad)
		require.EqualError(t, err, `ipfilter: line 3: field "alow" not found`)
		require.Nil(t, st, "no typed nil in the interface")
	})
	t.Run("invalid config", func(t *testing.T) {
		st, err := ipfilter.Module.New(func(v any) error {
			v.(*ipfilter.Config).Allow = []string{"10.0.0.0/33"}
			return nil
		})
		require.ErrorContains(t, err, `ipfilter: allow[0]: "10.0.0.0/33" is not a CIDR`)
		require.Nil(t, st, "no typed nil in the interface")
	})
	t.Run("through a registry", func(t *testing.T) {
		var r pipeline.Registry
		require.NoError(t, r.Register(ipfilter.Module))
		st, err := r.Build(ipfilter.Name, nil)
		require.NoError(t, err)
		require.Equal(t, ipfilter.Name, st.(pipeline.Namer).Name())
	})
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	s := newFilter(t, ipfilter.Config{Allow: []string{"10.0.0.0/8", "2001:db8::/32"}, Deny: []string{"10.0.0.0/24"}})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 500 {
				src := fmt.Sprintf("10.%d.%d.%d", i%3, g, i%256)
				want := i%3 != 0 || g != 0
				if i%2 == 1 { // 2001:db8:: is admitted, 2001:db9:: is not
					src, want = fmt.Sprintf("2001:db%d::%x", 8+i%4/2, i), i%4 == 1
				}
				reached, err := run(s, src)
				if reached != want || (err == nil) != want {
					t.Errorf("%s: reached %v, err %v; want admitted %v", src, reached, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestAdmittedPathDoesNotAllocate(t *testing.T) {
	s := newFilter(t, ipfilter.Config{Allow: []string{"10.0.0.0/8", "2001:db8::/32"}, Deny: []string{"10.66.0.0/16"}})
	ctx := context.Background()
	for _, src := range []string{"10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1"} {
		x := pipeline.Acquire(pipeline.Ingress)
		x.Source = netip.MustParseAddr(src)
		allocs := testing.AllocsPerRun(1000, func() {
			if err := s.Handle(ctx, x, pass); err != nil {
				panic(err)
			}
		})
		x.Release()
		require.Zero(t, allocs, src)
	}
}

// benchFilter is a filter with a realistic block list: 1000 IPv4 networks
// and 1000 IPv6 ones, and an allow list of a few.
func benchFilter(b *testing.B) *ipfilter.Stage {
	var deny []string
	for i := range 1000 {
		deny = append(deny, fmt.Sprintf("%d.%d.0.0/16", 100+i/256, i%256), fmt.Sprintf("2001:db8:%x::/48", i))
	}
	s, err := ipfilter.New(ipfilter.Config{Allow: []string{"10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"}, Deny: deny})
	require.NoError(b, err)
	return s
}

// BenchmarkAdmitted is the fast path: the source is checked against both
// lists and admitted.
func BenchmarkAdmitted(b *testing.B) {
	for _, src := range []string{"10.1.2.3", "2001:db8:ffff::1"} {
		b.Run(src, func(b *testing.B) {
			s := benchFilter(b)
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Source = netip.MustParseAddr(src)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Handle(ctx, x, pass); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAdmittedParallel(b *testing.B) {
	s := benchFilter(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Source = netip.MustParseAddr("10.1.2.3")
		for pb.Next() {
			if err := s.Handle(ctx, x, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRefused is the 403 path, which builds the message.
func BenchmarkRefused(b *testing.B) {
	s := benchFilter(b)
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Source = netip.MustParseAddr("100.7.1.1")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if s.Handle(ctx, x, pass) == nil {
			b.Fatal("admitted")
		}
	}
}
