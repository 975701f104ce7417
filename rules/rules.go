// Package rules is the routing model shared by both sides of the tunnel: a
// Rule says which requests cross and where they go; a Table is an immutable,
// indexed, hashed set of rules that can be swapped in atomically.
//
// The server owns the rules and sends each client its own; the client never
// changes them. Rules travel as JSON (Encode/Decode); the hash of a set is the
// SHA-256 of its canonical encoding, so both sides compute the same value.
package rules

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Direction says which side accepts a rule's requests.
type Direction string

const (
	// Reverse: the server's public listener accepts, the client reaches the
	// upstream (the ngrok/cloudflared/frp case).
	Reverse Direction = "reverse"
	// Forward: a listener on the client accepts, the server reaches the
	// upstream.
	Forward Direction = "forward"
)

// Protocols a rule can carry.
const (
	// ProtoHTTP carries HTTP/1.1, HTTP/2, gRPC and WebSocket. The default.
	ProtoHTTP = "http"
	// ProtoTCP carries raw TCP: a listener port mapped to host:port.
	ProtoTCP = "tcp"
)

// Rule is one route through the tunnel. The zero value is invalid; see Validate.
type Rule struct {
	// ID names the rule; unique across the server. Letters, digits, '.', '_', '-'.
	ID string `json:"id" yaml:"id"`
	// Client is the id of the client the rule belongs to.
	Client string `json:"client" yaml:"client"`
	// Direction is "reverse" or "forward".
	Direction Direction `json:"direction" yaml:"direction"`
	// Protocol is "http" (the default: HTTP/1.1, HTTP/2, gRPC, WebSocket)
	// or "tcp" (raw bytes from a listener port to host:port).
	Protocol string `json:"protocol,omitempty" yaml:"protocol"`
	// Host matches the request's Host (case-insensitive, port and trailing dot
	// ignored). Required for reverse rules; optional for forward rules, where
	// empty matches any host.
	Host string `json:"host,omitempty" yaml:"host"`
	// PathPrefix matches the request path on segment boundaries: "/api"
	// matches "/api" and "/api/x" but not "/apix". Empty means "/".
	PathPrefix string `json:"path_prefix,omitempty" yaml:"path_prefix"`
	// Listen is the address a rule's own listener binds: for forward rules
	// on the client (required), for reverse TCP rules on the server
	// (required). Reverse HTTP rules use the server's public listeners.
	Listen string `json:"listen,omitempty" yaml:"listen"`
	// ListenTLS makes a forward HTTP rule's listener speak TLS (with HTTP/2
	// by ALPN), with the certificate of the client's forward_tls setting.
	ListenTLS bool `json:"listen_tls,omitempty" yaml:"listen_tls"`
	// Upstream is where the egress side sends requests: for HTTP rules a
	// URL, http:// or https://, host and port, and an optional base path;
	// for TCP rules host:port (or tcp://host:port). A rule sets either
	// Upstream or Upstreams.
	Upstream string `json:"upstream" yaml:"upstream"`
	// Upstreams, instead of Upstream, spreads an HTTP rule's requests over
	// several upstreams (S10): each entry a URL as for Upstream, all with
	// the same scheme, none twice, at most MaxUpstreams. The TLS settings
	// below apply to every entry.
	Upstreams []string `json:"upstreams,omitempty" yaml:"upstreams"`
	// LoadBalance picks the upstream of each request among the healthy
	// Upstreams: "round_robin" (the default when empty) takes them in turn,
	// "least_requests" the one with the fewest requests in flight (ties in
	// turn). When every upstream is unhealthy, one is tried anyway (fail
	// open) rather than refusing every request.
	LoadBalance string `json:"load_balance,omitempty" yaml:"load_balance"`
	// HealthCheck, if set, has the egress side probe each upstream of the
	// rule and take those failing out of rotation (with a single upstream
	// the checks only log its state: it is tried anyway). Nil: no active
	// checks; upstreams are still ejected for a while after repeated
	// connection failures. HTTP rules only.
	HealthCheck *HealthCheck `json:"health_check,omitempty" yaml:"health_check"`
	// Retries is how many times a failed request is tried again, on the
	// next upstream the balancer picks, and only when that is safe: the
	// connection failed (nothing was sent), or the method is idempotent,
	// the request has no body and no answer came. Never after the upstream
	// answered. 0 (the default): no retries; at most MaxRetries. HTTP
	// rules only.
	Retries int `json:"retries,omitempty" yaml:"retries"`
	// UpstreamCAFile holds PEM CA certificates that must sign an https://
	// upstream's certificate. Default: the system's roots. It is read on
	// the side that calls the upstream (the client for reverse rules), as
	// written: a relative path is relative to that process's working
	// directory, not to the server's configuration file, so prefer an
	// absolute path.
	UpstreamCAFile string `json:"upstream_ca_file,omitempty" yaml:"upstream_ca_file"`
	// UpstreamServerName is the name checked in an https:// upstream's
	// certificate (and sent as SNI). Default: the upstream URL's host.
	UpstreamServerName string `json:"upstream_server_name,omitempty" yaml:"upstream_server_name"`
	// UpstreamTLSInsecureSkipVerify accepts ANY certificate from an
	// https:// upstream: anyone on the path can read and change the
	// traffic. For tests and for upstreams on the same host only; the
	// egress side logs a warning for every rule that sets it.
	UpstreamTLSInsecureSkipVerify bool `json:"upstream_tls_insecure_skip_verify,omitempty" yaml:"upstream_tls_insecure_skip_verify"`
	// UpstreamHTTP2 speaks HTTP/2 to the upstream: h2c for http:// upstreams,
	// h2 (ALPN) for https://.
	UpstreamHTTP2 bool `json:"upstream_http2,omitempty" yaml:"upstream_http2"`
	// HostHeader, if set, replaces the Host header sent upstream. By default
	// the client's Host is kept (and also sent as X-Forwarded-Host).
	HostHeader string `json:"host_header,omitempty" yaml:"host_header"`
	// Stages are the rule's own stages (authentication, IP filter, header
	// rules...), run in this order on the side where the rule's requests
	// arrive from users: the server for reverse rules, the client for
	// forward rules. They run after route and the rate limit, before the
	// request limit and egress. Each names a stage module that side knows.
	Stages []StageRef `json:"stages,omitempty" yaml:"stages"`
}

// Load-balancing policies (Rule.LoadBalance).
const (
	// RoundRobin takes the healthy upstreams in turn. The default.
	RoundRobin = "round_robin"
	// LeastRequests takes the healthy upstream with the fewest requests in
	// flight.
	LeastRequests = "least_requests"
)

// Limits of the resilience settings.
const (
	// MaxUpstreams bounds Rule.Upstreams.
	MaxUpstreams = 64
	// MaxRetries bounds Rule.Retries.
	MaxRetries = 5
	// MinHealthInterval bounds HealthCheck.Interval from below.
	MinHealthInterval = 10 * time.Millisecond
)

// Defaults of the zero HealthCheck settings.
const (
	DefaultHealthInterval     = 5 * time.Second
	DefaultHealthTimeout      = 2 * time.Second
	DefaultHealthyThreshold   = 2
	DefaultUnhealthyThreshold = 3
)

// HealthCheck configures the active health checks of a rule's upstreams:
// a GET of Path on each upstream every Interval. An upstream is marked down
// after UnhealthyThreshold failed checks in a row and up again after
// HealthyThreshold good ones; it starts up. The zero value of each setting
// is its documented default. Rules with the same upstream and the same
// settings share one checker.
type HealthCheck struct {
	// Path is requested on the upstream's host, such as "/healthz"
	// (required; it may carry a query). It is not joined with the
	// upstream's base path.
	Path string `json:"path" yaml:"path"`
	// Interval is the time between the start of two checks. If zero, 5s;
	// at least 10ms.
	Interval Duration `json:"interval,omitempty" yaml:"interval"`
	// Timeout bounds one check. If zero, 2s.
	Timeout Duration `json:"timeout,omitempty" yaml:"timeout"`
	// HealthyThreshold is how many good checks in a row bring a down
	// upstream back. If zero, 2.
	HealthyThreshold int `json:"healthy_threshold,omitempty" yaml:"healthy_threshold"`
	// UnhealthyThreshold is how many failed checks in a row take an
	// upstream down; it is also how many connection failures in a row
	// eject an upstream between checks. If zero, 3.
	UnhealthyThreshold int `json:"unhealthy_threshold,omitempty" yaml:"unhealthy_threshold"`
	// ExpectStatus is the status a good check answers. If zero, any 2xx or
	// 3xx.
	ExpectStatus int `json:"expect_status,omitempty" yaml:"expect_status"`
}

// WithDefaults returns h with every zero setting replaced by its default.
func (h HealthCheck) WithDefaults() HealthCheck {
	if h.Interval == 0 {
		h.Interval = Duration(DefaultHealthInterval)
	}
	if h.Timeout == 0 {
		h.Timeout = Duration(DefaultHealthTimeout)
	}
	if h.HealthyThreshold == 0 {
		h.HealthyThreshold = DefaultHealthyThreshold
	}
	if h.UnhealthyThreshold == 0 {
		h.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	return h
}

// Good reports whether status is the answer of a healthy upstream.
func (h HealthCheck) Good(status int) bool {
	if h.ExpectStatus != 0 {
		return status == h.ExpectStatus
	}
	return status >= 200 && status < 400
}

// Duration is a time.Duration that reads and writes as text such as "5s"
// or "1m30s" (time.ParseDuration), in YAML and in JSON alike. Its text is
// canonical (time.Duration.String), so a rule's hash does not depend on
// how a duration was spelled. The zero value is zero.
type Duration time.Duration

// String returns d as time.Duration.String does.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 5s or 250ms", b)
	}
	*d = Duration(v)
	return nil
}

// UpstreamCount returns how many upstreams r has: len(Upstreams), or 1
// for a rule with a single Upstream.
func (r *Rule) UpstreamCount() int {
	if len(r.Upstreams) > 0 {
		return len(r.Upstreams)
	}
	return 1
}

// UpstreamAt returns the i-th upstream of r (0 <= i < UpstreamCount):
// Upstreams[i], or Upstream for a rule with a single one.
func (r *Rule) UpstreamAt(i int) string {
	if len(r.Upstreams) > 0 {
		return r.Upstreams[i]
	}
	return r.Upstream
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// FieldError is a validation failure of one field of one rule. Field is the
// rule's key in the config file (such as "upstream"), so that the config
// loader can point at the offending line.
type FieldError struct {
	Index int // position in the list being validated
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("rule %d: %s: %s", e.Index, e.Field, e.Msg)
}

// Normalize fills defaults and canonicalises fields in place: lower-case host
// without trailing dot, path prefix with a leading slash.
func (r *Rule) Normalize() {
	if r.Protocol == "" {
		r.Protocol = ProtoHTTP
	}
	r.Host = NormalizeHost(r.Host)
	if r.PathPrefix == "" {
		r.PathPrefix = "/"
	} else if !strings.HasPrefix(r.PathPrefix, "/") {
		r.PathPrefix = "/" + r.PathPrefix
	}
	// Requests are matched by their escaped, normalised path (see
	// NormalizePath): the prefix takes the same form.
	r.PathPrefix = NormalizePath(escapedPath(r.PathPrefix))
}

// escapedPath returns p in escaped form: as it is if it is a valid escaped
// path, else with the characters a path cannot hold escaped.
func escapedPath(p string) string {
	raw, err := url.PathUnescape(p)
	if err != nil {
		raw = p
	}
	u := url.URL{Path: raw, RawPath: p}
	return u.EscapedPath()
}

// NormalizeHost lower-cases host and drops a port and trailing dots;
// internationalised names become their ASCII (punycode) form, the one
// HTTP clients send. Every trailing dot goes, including one the IDNA
// conversion makes of a full stop such as U+3002, so that a host is
// normalised once and for all: a rule's host (normalised when the table is
// built) must equal a request's Host normalised once.
func NormalizeHost(host string) string {
	host = strings.TrimRight(stripPort(host), ".")
	for i := 0; i < len(host); i++ {
		if host[i] >= 0x80 {
			if a, err := idna.Lookup.ToASCII(host); err == nil {
				return strings.TrimRight(a, ".")
			}
			break
		}
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}

func stripPort(host string) string {
	if strings.IndexByte(host, ':') >= 0 { // only then: a failed split allocates its error
		if h, _, err := net.SplitHostPort(host); err == nil {
			return h
		}
	}
	return host
}

// Validate checks one normalised rule on its own. Errors are *FieldError
// with Index i.
func (r *Rule) Validate(i int) error {
	fail := func(field, format string, args ...any) error {
		return &FieldError{Index: i, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if !idPattern.MatchString(r.ID) {
		return fail("id", "%q is not a valid id (letters, digits, '.', '_', '-'; at most 128)", r.ID)
	}
	if !idPattern.MatchString(r.Client) {
		return fail("client", "%q is not a valid client id", r.Client)
	}
	if field, v := invalidUTF8(r); field != "" {
		return fail(field, "%q is not valid UTF-8", v)
	}
	if r.Protocol != ProtoHTTP && r.Protocol != ProtoTCP {
		return fail("protocol", "%q is neither %q nor %q", r.Protocol, ProtoHTTP, ProtoTCP)
	}
	switch r.Direction {
	case Reverse:
		if r.Protocol == ProtoHTTP && r.Host == "" {
			return fail("host", "a reverse rule needs a host to match on the server's public listener")
		}
		if r.Protocol == ProtoTCP && r.Listen == "" {
			return fail("listen", "a reverse TCP rule needs a listen address on the server, such as :2222")
		}
	case Forward:
		if r.Listen == "" {
			return fail("listen", "a forward rule needs a listen address on the client, such as 127.0.0.1:9000")
		}
	default:
		return fail("direction", "%q is neither %q nor %q", r.Direction, Reverse, Forward)
	}
	if r.Listen != "" {
		if _, port, err := net.SplitHostPort(r.Listen); err != nil || port == "" {
			return fail("listen", "%q is not host:port", r.Listen)
		}
	}
	if field, msg := validateStages(r.Stages); field != "" {
		return fail(field, "%s", msg)
	}
	if r.Protocol == ProtoTCP {
		if r.Host != "" || (r.PathPrefix != "" && r.PathPrefix != "/") || r.ListenTLS || r.UpstreamHTTP2 || r.HostHeader != "" {
			return fail("protocol", "a TCP rule has no host, path_prefix, listen_tls, upstream_http2 or host_header")
		}
		switch {
		case len(r.Upstreams) > 0:
			return fail("upstreams", "a TCP rule has one upstream")
		case r.LoadBalance != "":
			return fail("load_balance", "a TCP rule has one upstream")
		case r.HealthCheck != nil:
			return fail("health_check", "health checks are for HTTP rules")
		case r.Retries != 0:
			return fail("retries", "retries are for HTTP rules")
		}
		if _, err := ParseTCPUpstream(r.Upstream); err != nil {
			return fail("upstream", "%v", err)
		}
		return nil
	}
	if r.ListenTLS && r.Direction != Forward {
		return fail("listen_tls", "only forward rules have their own listener; reverse rules use the server's public_https listener")
	}
	// A host that normalising again would change ("[a:1]:2" is "a:1",
	// which is host a, port 1) can never equal a request's Host.
	if strings.ContainsAny(r.Host, "/ ?#@") || NormalizeHost(r.Host) != r.Host {
		return fail("host", "%q is not a host name", r.Host)
	}
	if strings.ContainsAny(r.PathPrefix, "?# ") {
		return fail("path_prefix", "%q must be a plain path", r.PathPrefix)
	}
	scheme, fe := r.validateUpstreams(i)
	if fe != nil {
		return fe
	}
	if scheme != "https" && (r.UpstreamCAFile != "" || r.UpstreamServerName != "" || r.UpstreamTLSInsecureSkipVerify) {
		return fail(upstreamField(r), "upstream_ca_file, upstream_server_name and upstream_tls_insecure_skip_verify need an https:// upstream")
	}
	if strings.ContainsAny(r.HostHeader, "\r\n\x00 /") {
		return fail("host_header", "%q is not a host", r.HostHeader)
	}
	switch r.LoadBalance {
	case "", RoundRobin, LeastRequests:
	default:
		return fail("load_balance", "%q is neither %q nor %q", r.LoadBalance, RoundRobin, LeastRequests)
	}
	if r.Retries < 0 || r.Retries > MaxRetries {
		return fail("retries", "%d is not between 0 and %d", r.Retries, MaxRetries)
	}
	if r.HealthCheck != nil {
		if err := r.HealthCheck.validate(i); err != nil {
			return err
		}
	}
	return nil
}

// invalidUTF8 returns the key and value of the first text setting of r
// that is not valid UTF-8, or "". Rules travel to clients as JSON, which
// would replace the invalid bytes: the client would apply another rule
// than the one validated here.
func invalidUTF8(r *Rule) (string, string) {
	for _, f := range [...]struct{ key, v string }{
		{"host", r.Host}, {"path_prefix", r.PathPrefix}, {"listen", r.Listen},
		{"upstream", r.Upstream}, {"load_balance", r.LoadBalance},
		{"upstream_ca_file", r.UpstreamCAFile}, {"upstream_server_name", r.UpstreamServerName},
		{"host_header", r.HostHeader},
	} {
		if !utf8.ValidString(f.v) {
			return f.key, f.v
		}
	}
	for j, u := range r.Upstreams {
		if !utf8.ValidString(u) {
			return fmt.Sprintf("upstreams[%d]", j), u
		}
	}
	if r.HealthCheck != nil && !utf8.ValidString(r.HealthCheck.Path) {
		return "health_check.path", r.HealthCheck.Path
	}
	return "", ""
}

func upstreamField(r *Rule) string {
	if len(r.Upstreams) > 0 {
		return "upstreams"
	}
	return "upstream"
}

// validateUpstreams checks Upstream or Upstreams of an HTTP rule and
// returns their scheme.
func (r *Rule) validateUpstreams(i int) (string, *FieldError) {
	fail := func(field, format string, args ...any) (string, *FieldError) {
		return "", &FieldError{Index: i, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if len(r.Upstreams) == 0 {
		u, err := ParseUpstream(r.Upstream)
		if err != nil {
			return fail("upstream", "%v", err)
		}
		return u.Scheme, nil
	}
	if r.Upstream != "" {
		return fail("upstreams", "set either upstream or upstreams, not both")
	}
	if len(r.Upstreams) > MaxUpstreams {
		return fail("upstreams", "%d entries; at most %d", len(r.Upstreams), MaxUpstreams)
	}
	var scheme string
	for j, s := range r.Upstreams {
		field := fmt.Sprintf("upstreams[%d]", j)
		u, err := ParseUpstream(s)
		if err != nil {
			return fail(field, "%v", err)
		}
		if j == 0 {
			scheme = u.Scheme
		} else if u.Scheme != scheme {
			return fail(field, "%q is %s:// but upstreams[0] is %s://; all entries share one scheme", s, u.Scheme, scheme)
		}
		if k := slices.Index(r.Upstreams[:j], s); k >= 0 {
			return fail(field, "%q is already upstreams[%d]", s, k)
		}
	}
	return scheme, nil
}

func (h *HealthCheck) validate(i int) error {
	fail := func(field, format string, args ...any) error {
		return &FieldError{Index: i, Field: "health_check." + field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case h.Path == "":
		return fail("path", "missing (want a path such as /healthz)")
	case !strings.HasPrefix(h.Path, "/") || strings.ContainsAny(h.Path, "# \t\r\n\x00"):
		return fail("path", "%q is not a path such as /healthz", h.Path)
	}
	if _, err := url.ParseRequestURI(h.Path); err != nil {
		return fail("path", "%q is not a path such as /healthz", h.Path)
	}
	if h.Interval < 0 {
		return fail("interval", "must not be negative")
	}
	if h.Interval > 0 && time.Duration(h.Interval) < MinHealthInterval {
		return fail("interval", "%s is below the minimum of %s", h.Interval, MinHealthInterval)
	}
	if h.Timeout < 0 {
		return fail("timeout", "must not be negative")
	}
	if h.HealthyThreshold < 0 {
		return fail("healthy_threshold", "must not be negative")
	}
	if h.UnhealthyThreshold < 0 {
		return fail("unhealthy_threshold", "must not be negative")
	}
	if h.ExpectStatus != 0 && (h.ExpectStatus < 100 || h.ExpectStatus > 599) {
		return fail("expect_status", "%d is not an HTTP status", h.ExpectStatus)
	}
	return nil
}

// ParseTCPUpstream checks a TCP rule's upstream and returns it as host:port.
func ParseTCPUpstream(s string) (string, error) {
	addr := strings.TrimPrefix(s, "tcp://")
	if addr == "" {
		return "", errors.New("missing (want host:port, such as 127.0.0.1:5432)")
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return "", fmt.Errorf("%q is not host:port", s)
	}
	return addr, nil
}

// ParseUpstream parses and checks an upstream URL.
func ParseUpstream(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("missing (want a URL such as http://127.0.0.1:3000)")
	}
	if lower := strings.ToLower(s); !strings.Contains(s, "://") && !strings.HasPrefix(lower, "http:") && !strings.HasPrefix(lower, "https:") {
		// "127.0.0.1:3000" or "localhost:3000": url.Parse would say
		// "first path segment in URL cannot contain colon", or take
		// localhost for the scheme.
		//lint:ignore ST1005 the "..." is the rest of a URL for the user to fill in
		return nil, fmt.Errorf("%q has no scheme: write http://%s or https://...", s, s)
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%q is not a URL such as http://127.0.0.1:3000: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: scheme must be http or https", s)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: want scheme://host[:port][/base-path]", s)
	}
	return u, nil
}

// Encode returns the canonical JSON encoding of rules: sorted by id.
func Encode(rs []Rule) []byte {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b Rule) int { return strings.Compare(a.ID, b.ID) })
	if sorted == nil {
		sorted = []Rule{}
	}
	b, err := json.Marshal(sorted)
	if err != nil {
		panic("rules: encoding a Rule cannot fail: " + err.Error())
	}
	return b
}

// Decode parses rules encoded by Encode. It does not validate them.
func Decode(b []byte) ([]Rule, error) {
	var rs []Rule
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("rules: decode: %w", err)
	}
	return rs, nil
}

// Hash returns the SHA-256 of the canonical encoding of rs.
func Hash(rs []Rule) [32]byte {
	return sha256.Sum256(Encode(rs))
}
