package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/inspect"
	"github.com/qtunnel/qtunnel/transport"
)

// Problem is one invalid setting: Path names it as in the file
// ("rules[2].upstream"); Line is filled by Load.
type Problem struct {
	File string
	Line int
	Path string
	Msg  string
}

func (p Problem) Error() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	if loc != "" {
		loc += ": "
	}
	if p.Path == "" {
		return loc + p.Msg
	}
	return loc + p.Path + ": " + p.Msg
}

// Problems is every problem of one configuration.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

type checker struct{ ps Problems }

func (c *checker) add(path, format string, args ...any) {
	c.ps = append(c.ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) err() error {
	if len(c.ps) == 0 {
		return nil
	}
	return c.ps
}

func (c *checker) hostPort(path, v string) {
	if _, _, err := net.SplitHostPort(v); err != nil {
		c.add(path, "%q is not host:port", v)
	}
}

func (c *checker) positive(path string, d time.Duration) {
	if d < 0 {
		c.add(path, "must not be negative")
	}
}

func (c *Common) check(k *checker) {
	if c.Limits.MaxFrameSize < 1024 || c.Limits.MaxFrameSize > 16<<20 {
		k.add("limits.max_frame_size", "%d is outside 1KiB..16MiB", c.Limits.MaxFrameSize)
	}
	if c.Limits.MaxConcurrentStreams < 1 {
		k.add("limits.max_concurrent_streams", "must be at least 1")
	}
	if c.Limits.MaxHeaderBytes < 1024 {
		k.add("limits.max_header_bytes", "must be at least 1KiB")
	}
	k.positive("limits.read_header_timeout", c.Limits.ReadHeaderTimeout)
	k.positive("limits.idle_timeout", c.Limits.IdleTimeout)
	k.positive("limits.handshake_timeout", c.Limits.HandshakeTimeout)
	k.positive("limits.stream_open_timeout", c.Limits.StreamOpenTimeout)
	if c.Limits.MaxInFlight < 1 {
		k.add("limits.max_in_flight", "must be at least 1")
	}
	if c.Limits.RequestTimeout < 0 {
		k.add("limits.request_timeout", "must not be negative")
	} else if c.Limits.RequestTimeout < time.Millisecond {
		k.add("limits.request_timeout", "%v is shorter than 1ms", c.Limits.RequestTimeout)
	}
	if c.Limits.MaxStreamsPerSource < -1 {
		k.add("limits.max_streams_per_source", "must be at least 1, or -1 for no limit")
	}
	if c.Limits.MaxStreamsPerConnection < 1 {
		k.add("limits.max_streams_per_connection", "must be at least 1")
	}
	if c.Limits.RequestBuffer < 0 || c.Limits.RequestBuffer > c.Limits.MaxFrameSize {
		k.add("limits.request_buffer", "%d is outside 0..max_frame_size (%d)", c.Limits.RequestBuffer, c.Limits.MaxFrameSize)
	}
	k.positive("limits.body_timeout", c.Limits.BodyTimeout)
	k.positive("limits.min_rate_grace", c.Limits.MinRateGrace)
	k.positive("limits.send_timeout", c.Limits.SendTimeout)
	k.positive("limits.stream_idle_timeout", c.Limits.StreamIdleTimeout)
	if c.Limits.H2MaxResets < 1 {
		k.add("limits.h2_max_resets", "must be at least 1")
	}
	if c.Limits.SNIHostMismatch != SNIReject && c.Limits.SNIHostMismatch != SNIAllow {
		k.add("limits.sni_host_mismatch", "%q is neither %s nor %s", c.Limits.SNIHostMismatch, SNIReject, SNIAllow)
	}
	for i, p := range c.TrustedProxies {
		if _, err := ParsePrefix(p); err != nil {
			k.add(fmt.Sprintf("trusted_proxies[%d]", i), "%v", err)
		}
	}
	if c.AuthThrottle.MaxFailures < 1 {
		k.add("auth_throttle.max_failures", "must be at least 1")
	}
	k.positive("auth_throttle.window", c.AuthThrottle.Window)
	k.positive("auth_throttle.max_backoff", c.AuthThrottle.MaxBackoff)
	k.positive("shutdown_grace", c.ShutdownGrace)
	if c.Runtime.MaxProcs < 0 {
		k.add("runtime.max_procs", "must not be negative")
	}
	if c.Runtime.GCPercent < 0 {
		k.add("runtime.gc_percent", "must not be negative")
	}
	if c.Runtime.MemoryLimit < 0 {
		k.add("runtime.memory_limit", "must not be negative")
	}
	k.positive("quic.idle_timeout", c.QUIC.IdleTimeout)
	k.positive("quic.keep_alive", c.QUIC.KeepAlive)
	k.positive("quic.handshake_timeout", c.QUIC.HandshakeTimeout)
	k.positive("egress.idle_timeout", c.Egress.IdleTimeout)
	k.positive("egress.dial_timeout", c.Egress.DialTimeout)
	k.positive("egress.eject_time", c.Egress.EjectTime)
	k.positive("egress.response_header_timeout", c.Egress.ResponseHeaderTimeout)
	if c.Egress.MaxConnsPerUpstream < 0 {
		k.add("egress.max_conns_per_upstream", "must not be negative")
	}
	if c.Egress.MaxIdlePerUpstream < 0 {
		k.add("egress.max_idle_per_upstream", "must not be negative")
	}
	switch c.Tracing.Exporter {
	case "", "otlp-grpc", "otlp-http":
	default:
		k.add("tracing.exporter", "%q is not one of \"\", otlp-grpc, otlp-http", c.Tracing.Exporter)
	}
	if r := c.Tracing.SampleRatio; r != nil && !(*r >= 0 && *r <= 1) { // also catches NaN (.nan)
		k.add("tracing.sample_ratio", "%v is outside 0..1", *r)
	}
	if err := c.Admin.Validate(); err != nil {
		k.add("admin", "%v", err)
	}
	if err := c.RateLimit.Validate(); err != nil {
		k.add("rate_limit", "%v", err)
	}
	if err := c.Breaker.Validate(); err != nil {
		k.add("breaker", "%v", err)
	}
	if _, err := ParseLevel(c.Log.Level); err != nil {
		k.add("log.level", "%v", err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		k.add("log.format", "%q is neither text nor json", c.Log.Format)
	}
}

// Validate checks a defaulted server configuration and returns Problems.
func (c *Server) Validate() error {
	var k checker
	k.hostPort("listen", c.Listen)
	k.hostPort("public_http", c.PublicHTTP)
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		k.add("tls", "cert_file and key_file go together")
	}
	if c.PublicHTTPS != "" {
		k.hostPort("public_https", c.PublicHTTPS)
		if len(c.PublicTLS) == 0 {
			k.add("public_tls", "public_https needs at least one certificate")
		}
	}
	checkCerts(&k, "public_tls", c.PublicTLS)
	k.positive("sync.hash_check_interval", c.Sync.HashCheckInterval)
	k.positive("sync.full_sync_interval", c.Sync.FullSyncInterval)
	k.positive("sync.config_poll_interval", c.Sync.ConfigPollInterval) // a negative one made the file watcher's NewTicker panic
	k.positive("sessions.sweep_interval", c.Sessions.SweepInterval)
	k.positive("sessions.ttl", c.Sessions.TTL)
	clients := map[string]bool{}
	for i, cl := range c.Clients {
		p := fmt.Sprintf("clients[%d]", i)
		if cl.ID == "" {
			k.add(p+".id", "missing")
		} else if clients[cl.ID] {
			k.add(p+".id", "client %q is listed twice", cl.ID)
		}
		clients[cl.ID] = true
		if _, err := control.ParseTokenHash(cl.TokenSHA256); err != nil {
			k.add(p+".token_sha256", "%v", err)
		}
		if err := cl.Declare.Validate(); err != nil {
			k.add(p+".declare", "%v", err)
		}
	}
	bad := map[int]bool{}
	for i := range c.Rules {
		r := c.Rules[i]
		r.Normalize()
		if err := r.Validate(i); err != nil {
			var fe *rules.FieldError
			if errors.As(err, &fe) {
				k.add(fmt.Sprintf("rules[%d].%s", i, fe.Field), "%s", fe.Msg)
			} else {
				k.add(fmt.Sprintf("rules[%d]", i), "%v", err)
			}
			bad[i] = true
			continue
		}
		if !clients[r.Client] {
			k.add(fmt.Sprintf("rules[%d].client", i), "client %q is not in clients", r.Client)
		}
	}
	if len(bad) == 0 {
		// Conflicts between rules show once every rule is valid alone.
		if _, err := rules.NewTable(1, c.Rules); err != nil {
			var fe *rules.FieldError
			if errors.As(err, &fe) {
				k.add(fmt.Sprintf("rules[%d].%s", fe.Index, fe.Field), "%s", fe.Msg)
			} else {
				k.add("rules", "%v", err)
			}
		}
	}
	c.Common.check(&k)
	return k.err()
}

// Validate checks a defaulted client configuration and returns Problems.
func (c *Client) Validate() error {
	var k checker
	if c.ID == "" {
		k.add("id", "missing")
	}
	if c.Token == "" && c.TokenFile == "" && os.Getenv(TokenEnv) == "" {
		k.add("token", "set token, token_file, or the %s environment variable", TokenEnv)
	}
	if c.Server == "" {
		k.add("server", "missing (the server's tunnel address, host:port)")
	} else {
		k.hostPort("server", c.Server)
	}
	if c.ServerCAFile == "" && c.ServerPin == "" {
		k.add("server_pin", "set server_pin (sha256:..., logged by the server) or server_ca_file")
	}
	if c.ServerPin != "" {
		if _, err := transport.ParsePin(c.ServerPin); err != nil {
			k.add("server_pin", "%v", err)
		}
	}
	checkCerts(&k, "forward_tls", c.ForwardTLS)
	seen := map[string]bool{}
	for i := range c.Declare {
		r := c.Declare[i]
		if err := r.ValidateClaim(i); err != nil {
			var fe *rules.FieldError
			if errors.As(err, &fe) {
				k.add(fmt.Sprintf("declare[%d].%s", i, fe.Field), "%s", fe.Msg)
			} else {
				k.add(fmt.Sprintf("declare[%d]", i), "%v", err)
			}
		} else if seen[r.ID] {
			k.add(fmt.Sprintf("declare[%d].id", i), "%q is declared twice", r.ID)
		}
		seen[r.ID] = true
	}
	if c.Inspect.Entries < 0 {
		k.add("inspect.entries", "%d is negative", c.Inspect.Entries)
	}
	if c.Inspect.BodyCapture < 0 || c.Inspect.BodyCapture > inspect.MaxBodyCapture {
		k.add("inspect.body_capture", "%d bytes is not between 0 and 1MiB", c.Inspect.BodyCapture)
	}
	k.positive("reconnect.base", c.Reconnect.Base)
	k.positive("reconnect.max", c.Reconnect.Max)
	k.positive("reconnect.stable", c.Reconnect.Stable)
	k.positive("reconnect.attempt_timeout", c.Reconnect.AttemptTimeout)
	c.Common.check(&k)
	return k.err()
}

func checkCerts(k *checker, path string, cs []CertFiles) {
	for i, c := range cs {
		if c.CertFile == "" || c.KeyFile == "" {
			k.add(fmt.Sprintf("%s[%d]", path, i), "cert_file and key_file are both required")
		}
	}
}
