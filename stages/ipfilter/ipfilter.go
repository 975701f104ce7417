// Package ipfilter is the stage that admits users by source address, as
// Traefik's ipAllowList, Caddy's remote_ip matcher and nginx's allow/deny
// do: a rule lists the addresses and networks (CIDRs) it denies and, if it
// should only be open to some, the ones it allows.
//
//   - Deny wins: a source in Deny is refused, even if Allow lists it too.
//   - If Allow is not empty, the source must be in it.
//   - The zero Config admits everyone.
//
// A refused request is answered 403 ("forbidden: 203.0.113.7 is not
// allowed") and never reaches the stages after this one; on a TCP rule the
// connection is closed.
//
// The stage keys on Exchange.Source, the user's address as decode resolved
// it: the TCP peer, or, behind a proxy listed in trusted_proxies, the
// address the proxy forwarded for. Behind a proxy that is not trusted every
// user has the proxy's address, so list the proxy in trusted_proxies first.
// An exchange without a source (no decode ran) is refused by any filter
// that lists something: a filter fails closed.
//
// IPv4 and IPv6 are matched apart: an IPv4 source (including an
// IPv4-mapped IPv6 source, ::ffff:192.0.2.1, which is matched as
// 192.0.2.1) matches IPv4 entries, an IPv6 source IPv6 entries. An entry
// written as an IPv4-mapped prefix (::ffff:10.0.0.0/104) is the IPv4 prefix
// it maps (10.0.0.0/8). To admit everyone of both families, list 0.0.0.0/0
// and ::/0.
//
// The stage needs no rule and reads no request, so it works on every kind
// of rule (Module.Protocols is pipeline.AllProtocols) and anywhere after
// decode. Entries are merged into sorted ranges when the stage is built, so
// a check is a binary search: lists of many thousands of networks cost a
// few nanoseconds more than a list of one, and an admitted request
// allocates nothing.
package ipfilter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Name is the stage's name in rule stage lists, errors, spans and metrics.
const Name = "ipfilter"

// Config configures the ipfilter stage. Entries are single addresses
// ("192.0.2.7", "2001:db8::1") or networks in CIDR notation ("10.0.0.0/8",
// "2001:db8::/32"); bits set below a network's prefix length are ignored
// ("10.1.2.3/8" is 10.0.0.0/8). The zero value admits everyone.
type Config struct {
	// Allow, if not empty, lists the only sources admitted.
	Allow []string `yaml:"allow"`
	// Deny lists sources refused, whatever Allow says.
	Deny []string `yaml:"deny"`
}

// Validate reports every entry that is not an address or a CIDR, naming it
// as in the config file (`allow[2]: "10.0.0.0/33" is not a CIDR`).
func (c Config) Validate() error {
	var errs []error
	for _, l := range []struct {
		name    string
		entries []string
	}{{"allow", c.Allow}, {"deny", c.Deny}} {
		for i, e := range l.entries {
			if _, err := parseEntry(e); err != nil {
				errs = append(errs, fmt.Errorf("%s[%d]: %w", l.name, i, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ErrDenied is the cause (Reject.Err) of a refusal by Deny, and
// ErrNotAllowed of a refusal by Allow; ErrNoSource is the cause when the
// exchange carried no source address. They are for logs; the user sees
// only the Reject's message.
var (
	ErrDenied     = errors.New("ipfilter: source is in the deny list")
	ErrNotAllowed = errors.New("ipfilter: source is not in the allow list")
	ErrNoSource   = errors.New("ipfilter: the exchange has no source address")
)

// Stage is the ipfilter stage. It is immutable once built, so it is safe
// for concurrent use.
type Stage struct {
	allow, deny addrSet
	hasAllow    bool // Allow is not empty
	open        bool // no entries at all: admit everything, even no source
}

// New validates c and returns the stage. The error names every invalid
// entry.
func New(c Config) (*Stage, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	s := &Stage{
		allow:    buildSet(c.Allow),
		deny:     buildSet(c.Deny),
		hasAllow: len(c.Allow) > 0,
		open:     len(c.Allow) == 0 && len(c.Deny) == 0,
	}
	return s, nil
}

// Module lets configuration name the stage ("ipfilter"), on rules of every
// kind.
var Module = pipeline.NewModule(Name, pipeline.AllProtocols, New)

// Name implements pipeline.Namer.
func (s *Stage) Name() string { return Name }

// Handle implements pipeline.Stage: it calls next if x.Source is admitted,
// and returns a 403 *pipeline.Reject otherwise.
func (s *Stage) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if s.open {
		return next.Handle(ctx, x)
	}
	if !x.Source.IsValid() {
		return &pipeline.Reject{Status: http.StatusForbidden, Message: "forbidden: unknown source address", Err: ErrNoSource}
	}
	a := x.Source.Unmap().WithZone("")
	if s.deny.contains(a) {
		return refuse(a, ErrDenied)
	}
	if s.hasAllow && !s.allow.contains(a) {
		return refuse(a, ErrNotAllowed)
	}
	return next.Handle(ctx, x)
}

// Allowed reports whether the stage admits a, as Handle would.
func (s *Stage) Allowed(a netip.Addr) bool {
	if s.open {
		return true
	}
	if !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	return !s.deny.contains(a) && (!s.hasAllow || s.allow.contains(a))
}

func refuse(a netip.Addr, cause error) error {
	return &pipeline.Reject{
		Status:  http.StatusForbidden,
		Message: "forbidden: " + a.String() + " is not allowed",
		Err:     cause,
	}
}

// parseEntry parses an address or CIDR into a masked prefix, IPv4-mapped
// prefixes turned into IPv4 ones.
func parseEntry(e string) (netip.Prefix, error) {
	if e == "" {
		return netip.Prefix{}, errors.New("empty entry: want an IP address or a CIDR")
	}
	if strings.Contains(e, "/") {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", e)
		}
		p = p.Masked()
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(e)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or a CIDR", e)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q has a zone: zones cannot be matched", e)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// u128 is an IPv6 address as a number.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

// next returns a+1 and whether it did not overflow.
func (a u128) next() (u128, bool) {
	lo := a.lo + 1
	hi := a.hi
	if lo == 0 {
		hi++
		if hi == 0 {
			return u128{}, false
		}
	}
	return u128{hi, lo}, true
}

func u128Of(a netip.Addr) u128 {
	b := a.As16()
	var v u128
	for i := range 8 {
		v.hi = v.hi<<8 | uint64(b[i])
		v.lo = v.lo<<8 | uint64(b[8+i])
	}
	return v
}

func u32Of(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

type span4 struct{ lo, hi uint32 }
type span6 struct{ lo, hi u128 }

// addrSet is a set of addresses as sorted, disjoint, non-adjacent ranges.
type addrSet struct {
	v4 []span4
	v6 []span6
}

// buildSet merges entries, which must be valid, into a set.
func buildSet(entries []string) addrSet {
	var s addrSet
	for _, e := range entries {
		p, err := parseEntry(e)
		if err != nil {
			panic("ipfilter: buildSet on an unvalidated entry: " + err.Error())
		}
		if p.Addr().Is4() {
			lo := u32Of(p.Addr())
			s.v4 = append(s.v4, span4{lo, lo | ^uint32(0)>>p.Bits()})
			continue
		}
		lo := u128Of(p.Addr())
		hi := lo
		if b := p.Bits(); b < 64 {
			hi.hi |= ^uint64(0) >> b
			hi.lo = ^uint64(0)
		} else if b < 128 {
			hi.lo |= ^uint64(0) >> (b - 64)
		}
		s.v6 = append(s.v6, span6{lo, hi})
	}
	s.v4 = merge4(s.v4)
	s.v6 = merge6(s.v6)
	return s
}

func merge4(in []span4) []span4 {
	if len(in) == 0 {
		return nil
	}
	slices.SortFunc(in, func(a, b span4) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	out := in[:1]
	for _, r := range in[1:] {
		last := &out[len(out)-1]
		if last.hi == ^uint32(0) || r.lo <= last.hi+1 { // overlapping or adjacent
			last.hi = max(last.hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

func merge6(in []span6) []span6 {
	if len(in) == 0 {
		return nil
	}
	slices.SortFunc(in, func(a, b span6) int {
		switch {
		case a.lo.less(b.lo):
			return -1
		case b.lo.less(a.lo):
			return 1
		}
		return 0
	})
	out := in[:1]
	for _, r := range in[1:] {
		last := &out[len(out)-1]
		after, ok := last.hi.next()
		if !ok || !after.less(r.lo) { // overlapping or adjacent
			if last.hi.less(r.hi) {
				last.hi = r.hi
			}
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

// contains reports whether a (unmapped, without zone) is in the set.
func (s *addrSet) contains(a netip.Addr) bool {
	if a.Is4() {
		v := u32Of(a)
		// The first range starting after v; v is in the one before it.
		i, j := 0, len(s.v4)
		for i < j {
			h := int(uint(i+j) >> 1)
			if s.v4[h].lo <= v {
				i = h + 1
			} else {
				j = h
			}
		}
		return i > 0 && v <= s.v4[i-1].hi
	}
	v := u128Of(a)
	i, j := 0, len(s.v6)
	for i < j {
		h := int(uint(i+j) >> 1)
		if !v.less(s.v6[h].lo) {
			i = h + 1
		} else {
			j = h
		}
	}
	return i > 0 && !s.v6[i-1].hi.less(v)
}
