package rules

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Claims is what the server lets one client declare on its own (the
// clients[].declare setting): rules the client sends over its control
// stream instead of the server's operator writing them. Each declared rule
// is checked against the claims; a rule outside them is refused with the
// claim it breaks. The zero value lets the client declare nothing.
type Claims struct {
	// BaseDomain lets the client take any name one label under it: with
	// "dev.example.com", "app.dev.example.com". A reverse HTTP rule
	// declared without a host gets "<client>.BaseDomain" (or
	// "<client>-2.BaseDomain"... when that is taken), and one declared with
	// a host of one label gets that label under it. "localhost" is a good
	// choice on a single machine: browsers and curl resolve every
	// "*.localhost" name to the loopback address.
	BaseDomain string `yaml:"base_domain" json:"base_domain,omitempty"`
	// Hosts are other host names the client may claim for reverse HTTP
	// rules: an exact name, or "*.example.com" for any name one label under
	// example.com.
	Hosts []string `yaml:"hosts" json:"hosts,omitempty"`
	// TCPPorts are the ports of the server the client may bind for reverse
	// TCP rules: "2222" or a range "20000-20099". A reverse TCP rule
	// declared without a port gets the first free one.
	TCPPorts []string `yaml:"tcp_ports" json:"tcp_ports,omitempty"`
	// ForwardTargets are the upstreams the client's forward rules may have
	// the server reach: "HOST:PORTS", where HOST is a name, "*.example.com",
	// an IP address or a CIDR prefix ("10.0.0.0/8"), and PORTS a port, a
	// range "8000-8099" or "*". Without any, the client declares no forward
	// rules.
	ForwardTargets []string `yaml:"forward_targets" json:"forward_targets,omitempty"`
	// MaxRules bounds how many rules the client may declare at once.
	// Default 10.
	MaxRules int `yaml:"max_rules" json:"max_rules,omitempty"`
}

// DefaultMaxDeclared is Claims.MaxRules when unset.
const DefaultMaxDeclared = 10

// Any says whether the claims let the client declare anything.
func (c *Claims) Any() bool {
	return c != nil && (c.BaseDomain != "" || len(c.Hosts) > 0 || len(c.TCPPorts) > 0 || len(c.ForwardTargets) > 0)
}

// Max is MaxRules with its default.
func (c *Claims) Max() int {
	if c == nil || c.MaxRules <= 0 {
		return DefaultMaxDeclared
	}
	return c.MaxRules
}

// Validate checks the claims' own syntax; the error names the setting.
func (c *Claims) Validate() error {
	if c == nil {
		return nil
	}
	if c.BaseDomain != "" && (NormalizeHost(c.BaseDomain) != c.BaseDomain || strings.ContainsAny(c.BaseDomain, "*/ :")) {
		return fmt.Errorf("base_domain: %q is not a lower-case domain name", c.BaseDomain)
	}
	for i, h := range c.Hosts {
		name := strings.TrimPrefix(h, "*.")
		if name == "" || NormalizeHost(name) != name || strings.ContainsAny(name, "*/ :") {
			return fmt.Errorf("hosts[%d]: %q is not a lower-case host name or *.domain", i, h)
		}
	}
	for i, p := range c.TCPPorts {
		if _, _, err := parsePorts(p); err != nil {
			return fmt.Errorf("tcp_ports[%d]: %v", i, err)
		}
	}
	for i, t := range c.ForwardTargets {
		if _, err := parseTarget(t); err != nil {
			return fmt.Errorf("forward_targets[%d]: %v", i, err)
		}
	}
	if c.MaxRules < 0 {
		return fmt.Errorf("max_rules: %d is negative", c.MaxRules)
	}
	return nil
}

// ErrNotClaimable is wrapped by every refusal of CheckClaim.
var ErrNotClaimable = errors.New("outside what this client may declare")

// CheckClaim says whether the claims let their client declare r, a rule
// with its host and listen address filled in. The error says which claim
// r breaks.
func (c *Claims) CheckClaim(r *Rule) error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrNotClaimable}, args...)...)
	}
	if c == nil {
		c = &Claims{}
	}
	if len(r.Stages) > 0 {
		return refuse("stages: a declared rule cannot name stages (they run on the server with its files and settings); ask the server's operator for a rule")
	}
	switch {
	case r.Direction == Reverse && r.Protocol == ProtoTCP:
		_, port, err := net.SplitHostPort(r.Listen)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil {
			return refuse("listen %q: not host:port", r.Listen)
		}
		if !c.portAllowed(n) {
			return refuse("port %d is not in tcp_ports %q", n, c.TCPPorts)
		}
	case r.Direction == Reverse:
		if !c.HostAllowed(r.Host) {
			return refuse("host %q is not %s", r.Host, c.hostClaims())
		}
	case r.Direction == Forward:
		if r.UpstreamCAFile != "" {
			return refuse("upstream_ca_file names a file on the server; a declared rule cannot")
		}
		ups := r.Upstreams
		if r.Upstream != "" {
			ups = append([]string{r.Upstream}, ups...)
		}
		for _, u := range ups {
			host, port, err := targetOf(u, r.Protocol)
			if err != nil {
				return refuse("upstream %q: %v", u, err)
			}
			if !c.targetAllowed(host, port) {
				return refuse("upstream %q is not in forward_targets %q", u, c.ForwardTargets)
			}
		}
	}
	return nil
}

// hostClaims describes the host names the claims allow.
func (c *Claims) hostClaims() string {
	var parts []string
	if c.BaseDomain != "" {
		parts = append(parts, fmt.Sprintf("one label under base_domain %q", c.BaseDomain))
	}
	if len(c.Hosts) > 0 {
		parts = append(parts, fmt.Sprintf("in hosts %q", c.Hosts))
	}
	if len(parts) == 0 {
		return "claimable: this client may claim no host names (no base_domain, no hosts)"
	}
	return strings.Join(parts, " or ")
}

// HostAllowed says whether the claims cover host (normalised).
func (c *Claims) HostAllowed(host string) bool {
	if host == "" {
		return false
	}
	if c.BaseDomain != "" && oneLabelUnder(host, c.BaseDomain) {
		return true
	}
	for _, h := range c.Hosts {
		if suffix, ok := strings.CutPrefix(h, "*."); ok {
			if oneLabelUnder(host, suffix) {
				return true
			}
		} else if h == host {
			return true
		}
	}
	return false
}

// FreePort returns the first port of the claims' tcp_ports for which used
// says false, or 0.
func (c *Claims) FreePort(used func(port int) bool) int {
	for _, p := range c.TCPPorts {
		lo, hi, err := parsePorts(p)
		if err != nil {
			continue
		}
		for n := lo; n <= hi; n++ {
			if !used(n) {
				return n
			}
		}
	}
	return 0
}

func oneLabelUnder(host, domain string) bool {
	label, ok := strings.CutSuffix(host, "."+domain)
	return ok && label != "" && !strings.Contains(label, ".")
}

func (c *Claims) portAllowed(n int) bool {
	for _, p := range c.TCPPorts {
		if lo, hi, err := parsePorts(p); err == nil && lo <= n && n <= hi {
			return true
		}
	}
	return false
}

func (c *Claims) targetAllowed(host string, port int) bool {
	for _, s := range c.ForwardTargets {
		t, err := parseTarget(s)
		if err == nil && t.match(host, port) {
			return true
		}
	}
	return false
}

// parsePorts reads "N" or "LO-HI".
func parsePorts(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi = lo
	var err2 error
	if isRange {
		hi, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	if err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("%q is not a port or a range LO-HI within 1-65535", s)
	}
	return lo, hi, nil
}

type target struct {
	name   string       // exact name, or "*.suffix"
	prefix netip.Prefix // when the host is an address or CIDR
	lo, hi int
}

func parseTarget(s string) (target, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return target{}, fmt.Errorf("%q is not HOST:PORTS", s)
	}
	host, ports := strings.Trim(s[:i], "[]"), s[i+1:]
	var t target
	if ports == "*" {
		t.lo, t.hi = 1, 65535
	} else {
		var err error
		if t.lo, t.hi, err = parsePorts(ports); err != nil {
			return target{}, err
		}
	}
	if p, err := netip.ParsePrefix(host); err == nil {
		t.prefix = p.Masked()
		return t, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		t.prefix = netip.PrefixFrom(a, a.BitLen())
		return t, nil
	}
	name := strings.TrimPrefix(host, "*.")
	if name == "" || NormalizeHost(name) != name || strings.ContainsAny(name, "*/ ") {
		return target{}, fmt.Errorf("%q: the host is not a name, *.domain, an address or a CIDR prefix", s)
	}
	t.name = host
	return t, nil
}

func (t target) match(host string, port int) bool {
	if port < t.lo || port > t.hi {
		return false
	}
	if t.prefix.IsValid() {
		a, err := netip.ParseAddr(host)
		return err == nil && t.prefix.Contains(a.Unmap())
	}
	if suffix, ok := strings.CutPrefix(t.name, "*."); ok {
		return oneLabelUnder(host, suffix)
	}
	return host == t.name
}

// targetOf returns the host and port an upstream of a rule of protocol
// proto reaches.
func targetOf(upstream, proto string) (string, int, error) {
	var hostport string
	if proto == ProtoTCP {
		hostport = strings.TrimPrefix(upstream, "tcp://")
	} else {
		u, err := url.Parse(upstream)
		if err != nil {
			return "", 0, err
		}
		hostport = u.Host
		if u.Port() == "" {
			port := "80"
			if u.Scheme == "https" {
				port = "443"
			}
			hostport = net.JoinHostPort(u.Hostname(), port)
		}
	}
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %v", p, err)
	}
	return NormalizeHost(h), n, nil
}

// ValidateClaim checks r as a client declares it (config's declare, index
// i): a rule with an id and no client, whose host (reverse HTTP) and
// listen port (reverse TCP) may be left for the server to pick. Errors are
// *FieldError.
func (r *Rule) ValidateClaim(i int) error {
	if r.Client != "" {
		return &FieldError{Index: i, Field: "client", Msg: "a declared rule has no client: it is the declaring client's"}
	}
	c := *r
	c.Normalize()
	c.Client = "declaring-client"
	if c.Direction == Reverse && c.Protocol == ProtoHTTP && c.Host == "" {
		c.Host = "placeholder.invalid"
	}
	if c.Direction == Reverse && c.Protocol == ProtoTCP && c.Listen == "" {
		c.Listen = ":1"
	}
	return c.Validate(i)
}
