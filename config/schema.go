// Package config holds the configuration of both sides in one place (S9):
// every limit, timeout and interval of the gateway is a field here, with its
// default documented on the field and applied by SetDefaults, so the zero
// value of any setting means "the default".
//
// Files are YAML. Load reports every problem it finds at once, each with
// the file, the line and the setting's path, such as
//
//	server.yaml:14: rules[2].upstream: "ftp://x": scheme must be http or https
//
// A value of the wrong kind says what was expected ("two" is not a whole
// number) and an unknown setting names the one probably meant
// (rules[0].upsteam: unknown setting; did you mean upstream?); neither
// stops the checks of the rest of the file. Relative file paths are taken
// from the directory of the file that names them.
package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/breaker"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/ratelimit"
	"github.com/qtunnel/qtunnel/transport"
)

// Server is the configuration of the server side.
type Server struct {
	// Listen is the UDP address of the tunnel (QUIC) listener. Default ":4443".
	Listen string `yaml:"listen"`
	// PublicHTTP is the TCP address of the public HTTP listener that serves
	// reverse rules (HTTP/1.1 and HTTP/2 without TLS). Default ":8080".
	PublicHTTP string `yaml:"public_http"`
	// PublicHTTPS is the TCP address of the public HTTPS listener for
	// reverse rules (HTTP/1.1 and HTTP/2 by ALPN); empty: none. It needs
	// PublicTLS.
	PublicHTTPS string `yaml:"public_https"`
	// PublicTLS holds the public HTTPS listener's certificates; the
	// certificate is picked by SNI, the rule by Host. Relative paths are
	// relative to the configuration file's directory.
	PublicTLS []CertFiles `yaml:"public_tls"`
	// TLS is the server's identity. With no files, the server uses a
	// self-signed certificate it generated, kept in StateDir (or, with no
	// state directory, made at each start), and logs its pin for clients.
	TLS ServerTLS `yaml:"tls"`
	// StateDir is the server's state: the directory where it keeps what
	// it must remember across restarts, made with mode 0700 if missing.
	// Today that is the identity it generates when tls names no files
	// (identity.key, identity.crt and identity.pin), so that its pin stays
	// the same from one start to the next. A relative path is relative to
	// the configuration file's directory. Default: $STATE_DIRECTORY when
	// set (systemd's StateDirectory=), else "state" next to the
	// configuration file; a configuration built in code, with no file,
	// has none by default, and its generated key changes at every start.
	StateDir string `yaml:"state_dir"`
	// Clients may connect with these ids and tokens.
	Clients []ClientEntry `yaml:"clients"`
	// Rules route requests; each belongs to one client.
	Rules []rules.Rule `yaml:"rules"`
	// Sync sets the rule-sync intervals the server hands to its clients.
	Sync Sync `yaml:"sync"`
	// Sessions sets how long a disconnected client's session is kept (S7).
	Sessions Sessions `yaml:"sessions"`
	Common   `yaml:",inline"`
}

// CertFiles names a PEM certificate chain and its key. Relative paths in a
// configuration file are relative to that file's directory (Load and
// Parse make them so); in a configuration built in code they are used as
// they are.
type CertFiles struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ServerTLS names the server certificate files (PEM). Relative paths are
// relative to the configuration file's directory, as for CertFiles.
type ServerTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ClientEntry is one client the server accepts. The server stores only the
// SHA-256 of the token (print it with 'tunnel hash-token').
type ClientEntry struct {
	ID          string `yaml:"id"`
	TokenSHA256 string `yaml:"token_sha256"`
	// Declare is what the client may declare on its own ('tunnel expose',
	// the client's declare setting): host names, TCP ports, forward
	// targets. Nil: nothing; the server's rules are all it gets.
	Declare *rules.Claims `yaml:"declare"`
}

// Sync holds the control-plane intervals (A4).
type Sync struct {
	// HashCheckInterval is how often a client checks its rule-set hash
	// with the server. Default 15s.
	HashCheckInterval time.Duration `yaml:"hash_check_interval"`
	// FullSyncInterval is how often a full snapshot is sent regardless.
	// Default 5m.
	FullSyncInterval time.Duration `yaml:"full_sync_interval"`
	// ConfigPollInterval is how often the server looks at its
	// configuration file for changes. Default 1s.
	ConfigPollInterval time.Duration `yaml:"config_poll_interval"`
}

// Sessions holds the session sweep settings (S7).
type Sessions struct {
	// SweepInterval is how often idle sessions are looked for. Default 60s.
	SweepInterval time.Duration `yaml:"sweep_interval"`
	// TTL is how long a disconnected client's session is kept. Default 300s.
	TTL time.Duration `yaml:"ttl"`
}

// Client is the configuration of the client side.
type Client struct {
	// ID is this client's id, as listed in the server's clients.
	ID string `yaml:"id"`
	// Token authenticates the client. Prefer TokenFile, or the
	// QTUNNEL_TOKEN environment variable (read by the command).
	Token string `yaml:"token"`
	// TokenFile holds the token (trailing whitespace is ignored). A
	// relative path is relative to the configuration file's directory.
	TokenFile string `yaml:"token_file"`
	// Server is the server's tunnel address, host:port (UDP).
	Server string `yaml:"server"`
	// ServerName is checked against the server certificate when ServerCA
	// is set. Default: the host of Server.
	ServerName string `yaml:"server_name"`
	// ServerCAFile holds CA certificates that sign the server's
	// certificate. A relative path is relative to the configuration file's
	// directory.
	ServerCAFile string `yaml:"server_ca_file"`
	// ServerPin is the server key's pin, "sha256:...", as the server logs
	// it. At least one of ServerCAFile and ServerPin is required.
	ServerPin string `yaml:"server_pin"`
	// Reconnect sets the backoff after losing the server (S4).
	Reconnect Reconnect `yaml:"reconnect"`
	// ForwardTLS holds the certificates of forward listeners whose rules
	// set listen_tls; the certificate is picked by SNI. Relative paths are
	// relative to the configuration file's directory.
	ForwardTLS []CertFiles `yaml:"forward_tls"`
	// Declare are rules this client claims on its own, within what the
	// server's clients[].declare lets it: each names itself with id (the
	// server makes the rule's id "<client>.<id>") and has no client. A
	// reverse HTTP rule without a host gets one under the server's
	// base_domain; a reverse TCP rule without a listen port gets a free
	// one of tcp_ports. The server answers each claim; a refused one is
	// logged with its reason, and the others serve.
	Declare []rules.Rule `yaml:"declare"`
	// Inspect is the request inspector: the last requests of each rule,
	// their header fields (secrets masked), body previews and stage
	// timings, served on the admin listener under /inspect/ and in its
	// web page (/ui/), with replay. Off by default; on for 'tunnel
	// expose'.
	Inspect Inspect `yaml:"inspect"`
	Common  `yaml:",inline"`
}

// Inspect turns the client's request inspector on and sizes it.
type Inspect struct {
	// Enabled turns it on. Default false.
	Enabled bool `yaml:"enabled"`
	// Entries is how many requests of each rule are kept. Default 100.
	Entries int `yaml:"entries"`
	// BodyCapture is how much of each body is kept, such as 4KiB (the
	// default); at most 1MiB.
	BodyCapture Size `yaml:"body_capture"`
	// Secrets are more header fields to mask, beside Authorization,
	// Proxy-Authorization, Cookie, Set-Cookie, X-Api-Key and
	// X-Auth-Token.
	Secrets []string `yaml:"secrets"`
}

// Reconnect holds the client's reconnect backoff (full jitter).
type Reconnect struct {
	// Base is the first delay's ceiling. Default 200ms.
	Base time.Duration `yaml:"base"`
	// Max caps any delay. Default 30s.
	Max time.Duration `yaml:"max"`
	// Stable is how long a connection must last for the backoff to start
	// again from Base. Default 30s.
	Stable time.Duration `yaml:"stable"`
	// AttemptTimeout abandons a connection attempt that the server has
	// not answered, so that the next attempt starts after the backoff.
	// Within one attempt QUIC resends its first packet at 0.2s, 0.6s and
	// 1.4s, so with 2s a server that comes back is reached within Max plus
	// about 0.6s; longer attempts can wait several seconds for the next
	// resend. Raise it only for links whose round trip nears a second.
	// Default 2s.
	AttemptTimeout time.Duration `yaml:"attempt_timeout"`
}

// Common holds the settings both sides share.
type Common struct {
	// QUIC holds the tunnel connection settings.
	QUIC transport.Config `yaml:"quic"`
	// Limits bounds requests and work.
	Limits Limits `yaml:"limits"`
	// Egress configures the upstream connection pool.
	Egress egress.PoolConfig `yaml:"egress"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// ShutdownGrace is how long in-flight requests may take to finish after
	// SIGTERM or SIGINT (S1). Default 10s.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// Runtime tunes the Go runtime of the process.
	Runtime Runtime `yaml:"runtime"`
	// Admin is the admin listener: /metrics, /healthz, /readyz, /config,
	// /debug/pprof/. Off unless admin.listen is set; loopback only unless
	// a token is set.
	Admin admin.Config `yaml:"admin"`
	// RateLimit limits requests per rule, per client and per source IP
	// (S17); over a limit the answer is 429 with Retry-After. Off by
	// default.
	RateLimit ratelimit.Config `yaml:"rate_limit"`
	// Breaker is the circuit breaker in front of each upstream (S11).
	Breaker breaker.Config `yaml:"breaker"`
	// Tracing exports OpenTelemetry spans (S12). Off by default.
	Tracing Tracing `yaml:"tracing"`
	// TrustedProxies lists the addresses (CIDRs or single IPs) of proxies
	// in front of this side's listeners whose X-Forwarded-For,
	// X-Forwarded-Proto, X-Forwarded-Host and X-Request-Id are believed:
	// their X-Forwarded-For is appended to, and the source of a request
	// (for per-source limits, rate limits and logs) is the last address
	// in it that is not trusted. From anyone else those headers are
	// replaced, never kept. Empty by default: nobody is trusted.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// AuthThrottle slows down guessing of tunnel tokens (server) and admin
	// tokens (both sides).
	AuthThrottle AuthThrottle `yaml:"auth_throttle"`
}

// AuthThrottle limits failed logins: tunnel handshakes with a wrong token
// and admin requests with a wrong token. Failures are counted per source
// address and, for tunnel logins, per client id; past the limit further
// attempts are refused without being checked for a back-off that doubles
// with each window that goes over, and every refusal is logged once per
// window with counts.
type AuthThrottle struct {
	// MaxFailures is how many failures one source may have within Window
	// before it is refused; a client id may have four times as many, from
	// all sources together, before attempts for it are refused from
	// sources it has not logged in from. Default 5.
	MaxFailures int `yaml:"max_failures"`
	// Window is the counting window and the first back-off. Default 1m.
	Window time.Duration `yaml:"window"`
	// MaxBackoff caps the back-off. Default 15m.
	MaxBackoff time.Duration `yaml:"max_backoff"`
}

// Tracing configures OpenTelemetry tracing.
type Tracing struct {
	// Exporter is "" (no tracing), "otlp-grpc" or "otlp-http".
	Exporter string `yaml:"exporter"`
	// Endpoint is the collector, host:port. Default: the exporter's own
	// default (localhost:4317 for gRPC, localhost:4318 for HTTP), or the
	// OTEL_EXPORTER_OTLP_* environment variables.
	Endpoint string `yaml:"endpoint"`
	// Insecure sends spans without TLS.
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the share of new traces recorded, 0 to 1; requests
	// that arrive with a sampled trace context are always recorded, so 0
	// records only the traces someone upstream of the gateway started.
	// Unset: 1.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// ServiceName names this side in the traces. Default "qtunnel-server"
	// or "qtunnel-client".
	ServiceName string `yaml:"service_name"`
}

// Runtime holds Go runtime settings. Zero values leave Go's defaults (and
// the GOMAXPROCS, GOGC and GOMEMLIMIT environment variables) alone.
type Runtime struct {
	// MaxProcs caps the OS threads running Go code at once (GOMAXPROCS).
	// On a machine shared with busy neighbours (the benchmark runs four
	// busy processes on two cores) 1 per side lowers latency and CPU per
	// request; on a dedicated machine leave it at Go's default, the
	// number of cores.
	MaxProcs int `yaml:"max_procs"`
	// GCPercent sets the garbage collector's target (GOGC).
	GCPercent int `yaml:"gc_percent"`
	// MemoryLimit is a soft limit on the memory the runtime uses
	// (GOMEMLIMIT): the collector works harder as it is approached.
	MemoryLimit Size `yaml:"memory_limit"`
}

// Limits bounds what one request and the whole side may use.
type Limits struct {
	// MaxFrameSize is the largest tunnel frame payload (S9). Default 64KiB.
	// Both sides must agree.
	MaxFrameSize Size `yaml:"max_frame_size"`
	// MaxConcurrentStreams is how many tunnel streams this side serves at
	// once (worker pool size, S3); more are refused with a retryable
	// answer. Default 1000.
	MaxConcurrentStreams int `yaml:"max_concurrent_streams"`
	// MaxHeaderBytes bounds a request's header on ingress listeners: a
	// larger one is answered 431 (HTTP/1.1 allows 4KiB of slack for the
	// request line). Default 64KiB.
	MaxHeaderBytes Size `yaml:"max_header_bytes"`
	// ReadHeaderTimeout bounds reading a request's header on ingress
	// listeners (slowloris): the connection is closed when it passes. An
	// HTTP/2 connection that delivers no whole frame for this long is
	// pinged, and closed if the ping is not answered as long. Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes idle keep-alive connections on ingress listeners.
	// Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// HandshakeTimeout bounds the control-stream handshake. Default 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// StreamOpenTimeout bounds waiting for a free stream slot on a tunnel
	// connection. Default 10s.
	StreamOpenTimeout time.Duration `yaml:"stream_open_timeout"`
	// MaxInFlight bounds the requests each chain of this side handles at
	// once (S3), counted apart for the ingress chain (users' requests on
	// this side's listeners) and the egress chain (requests arriving over
	// the tunnel): one more is answered 503 with Retry-After: 1 at once,
	// never queued. WebSockets, TCP connections and gRPC streams count
	// for as long as they last. Each request in flight holds a few tens of
	// KiB of buffers, so the default bounds a side's request memory to
	// well under a GiB; on the egress side max_concurrent_streams (1000)
	// is the tighter bound unless this is set lower. Default 10000.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxBodySize bounds a user's request body on this side's ingress
	// listeners (S18). A larger Content-Length is answered 413 before
	// anything is sent through the tunnel; a body of unknown length
	// (chunked, or HTTP/2 without content-length, such as gRPC) is counted
	// as it streams, and the request fails with 413 once it passes the
	// limit (or is cut, if the answer had already started). Bodies are
	// never buffered whatever the limit. A gRPC streaming call is one
	// body for its whole life. Default 10MiB; "unlimited" (or -1) turns
	// the limit off.
	MaxBodySize SizeLimit `yaml:"max_body_size"`
	// MaxStreamsPerSource bounds the tunnel streams that the requests of
	// one source address may hold at once towards one client (tenant), on
	// this side's ingress listeners: one more is answered 429 with
	// Retry-After: 1. The source is the connection's peer, or, from a
	// trusted proxy (trusted_proxies), the address it forwarded for; an
	// IPv6 source counts by its /64. It
	// keeps one source well under a tenant's capacity
	// (max_concurrent_streams, 1000). Default 100; -1 turns it off.
	MaxStreamsPerSource int `yaml:"max_streams_per_source"`
	// MaxStreamsPerConnection bounds the concurrent requests of one
	// downstream HTTP/2 connection (its SETTINGS_MAX_CONCURRENT_STREAMS);
	// an HTTP/1.1 connection carries one at a time anyway. Default 100.
	MaxStreamsPerConnection int `yaml:"max_streams_per_connection"`
	// RequestBuffer is how much of a request body the ingress side
	// collects before it opens a tunnel stream: a body of known length up
	// to it is read whole first, a longer one until that much has
	// arrived, one of unknown length (chunked) until its first bytes do.
	// A user who is slow to send holds no tunnel stream meanwhile. gRPC
	// calls, which may wait for the answer before sending, open at once.
	// At most max_frame_size. Default 64KiB.
	RequestBuffer Size `yaml:"request_buffer"`
	// BodyTimeout is the longest wait for the next bytes of a request body
	// (nginx's client_body_timeout) until the answer starts: past it the
	// request is answered 408 and its tunnel stream freed. Default 30s.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// MinBodyRate is the lowest average rate, in bytes per second, at which
	// a request body must arrive, measured from its first byte once
	// min_rate_grace has passed and only while the gateway waits for the
	// user (not while the tunnel or the upstream pushes back), until the
	// answer starts. A slower body is answered 408. gRPC calls, whose
	// messages may be sparse, are held to body_timeout only. Default
	// 1KiB; "off" turns it off.
	MinBodyRate SizeLimit `yaml:"min_body_rate"`
	// MinRateGrace is how long a request body may take before min_body_rate
	// applies. Default 10s.
	MinRateGrace time.Duration `yaml:"min_rate_grace"`
	// SendTimeout is the longest a write of the answer to the user may make
	// no progress (nginx's send_timeout): past it the answer is cut and its
	// tunnel stream freed, so that a reader who stopped reading holds
	// nothing of the tunnel. Default 30s.
	SendTimeout time.Duration `yaml:"send_timeout"`
	// StreamIdleTimeout ends an exchange once its answer has started and no
	// byte has moved either way for this long (Envoy's
	// stream_idle_timeout): HTTP answers, server-sent events and gRPC
	// streams. Long-lived streams that may be silent longer (gRPC watches
	// without messages) need it raised. WebSockets and TCP rules are not
	// timed. Default 5m.
	StreamIdleTimeout time.Duration `yaml:"stream_idle_timeout"`
	// H2MaxResets is how many streams an HTTP/2 client may reset
	// (RST_STREAM) on one connection within 10 seconds; past it the
	// connection is closed with GOAWAY (ENHANCE_YOUR_CALM), which stops
	// rapid-reset floods. Default 200.
	H2MaxResets int `yaml:"h2_max_resets"`
	// SNIHostMismatch is what a TLS listener (public_https, listen_tls)
	// does with a request whose Host is not the name the client asked for
	// in its TLS handshake (SNI): "reject" answers 421 Misdirected Request
	// (domain fronting is refused), "allow" routes by Host. A handshake
	// without SNI (an IP address) is not checked. Default reject.
	SNIHostMismatch string `yaml:"sni_host_mismatch"`
	// RequestTimeout bounds the wait for the answer's head (S19), on both
	// chains: a request with no answer started within it is cancelled and
	// answered 504. Once the head is out, the answer may stream for as
	// long as it needs (downloads, gRPC streams, WebSockets, TCP rules are
	// not cut). Connecting to an upstream is bounded by egress.dial_timeout
	// and its head by egress.response_header_timeout as well. Default 30s;
	// it cannot be turned off, only made long.
	RequestTimeout time.Duration `yaml:"request_timeout"`
}

// Values of Limits.SNIHostMismatch.
const (
	SNIReject = "reject"
	SNIAllow  = "allow"
)

// ParsePrefix parses a trusted_proxies entry: a CIDR ("10.0.0.0/8") or a
// single address ("192.0.2.7", which is a /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// TrustedPrefixes returns TrustedProxies parsed (call it on a validated
// configuration: entries that do not parse are skipped).
func (c *Common) TrustedPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range c.TrustedProxies {
		if p, err := ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// Log configures the logger.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
	// Access turns the access log on: each finished request (or TCP
	// connection) writes one record at info with the message "access", on
	// each side it crossed: on the ingress side its method, host, path,
	// status, body bytes in and out, duration, request id, rule, protocol
	// and remote address; on the egress side its request id, client, rule,
	// method, path, status and duration. Off by default: these records are
	// then written at debug only ("request", "stream", "tcp connection").
	Access bool `yaml:"access"`
}

// ParseLevel parses a log level name.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
	}
	return l, nil
}
