package config

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Every default of a configuration, in one place. A setting left out (its
// zero value) takes the default below: Server.SetDefaults,
// Client.SetDefaults and Common.SetDefaults, in this file, fill them in,
// and nothing else in this package does (Validate checks a defaulted
// configuration; it defaults nothing). The egress, rate_limit and breaker
// sections are filled by their own packages' SetDefaults, which
// Common.SetDefaults calls. TestDefaultsTable holds this table to what
// SetDefaults does.
//
//	Server only (Server.SetDefaults):
//	listen                             :4443
//	public_http                        :8080
//	state_dir                          -       $STATE_DIRECTORY, else "state" next to the file (StateDirectory)
//	sync.hash_check_interval           15s
//	sync.full_sync_interval            5m
//	sync.config_poll_interval          1s
//	sessions.sweep_interval            60s
//	sessions.ttl                       300s
//
//	Client only (Client.SetDefaults):
//	server_name                        -       the host of server
//	reconnect.base                     200ms
//	reconnect.max                      30s
//	reconnect.stable                   30s
//	reconnect.attempt_timeout          2s
//
//	Both sides (Common.SetDefaults):
//	limits.max_frame_size              64KiB
//	limits.max_concurrent_streams      1000
//	limits.max_header_bytes            64KiB
//	limits.read_header_timeout         10s
//	limits.idle_timeout                120s
//	limits.handshake_timeout           10s
//	limits.stream_open_timeout         10s
//	limits.max_in_flight               10000
//	limits.max_body_size               10MiB
//	limits.request_timeout             30s
//	limits.max_streams_per_source      100
//	limits.max_streams_per_connection  100
//	limits.request_buffer              64KiB   at most limits.max_frame_size
//	limits.body_timeout                30s
//	limits.min_body_rate               1KiB
//	limits.min_rate_grace              10s
//	limits.send_timeout                30s
//	limits.stream_idle_timeout         5m
//	limits.h2_max_resets               200
//	limits.sni_host_mismatch           reject
//	auth_throttle.max_failures         5
//	auth_throttle.window               1m
//	auth_throttle.max_backoff          15m
//	shutdown_grace                     10s
//	log.level                          info
//	log.format                         text
//	quic.max_streams                   1000    follows limits.max_concurrent_streams
//	tracing.sample_ratio               1
//
//	Both sides, from their own packages (called by Common.SetDefaults):
//	egress.warm_conns                  2       egress.PoolConfig.SetDefaults
//	egress.max_conns_per_upstream      512
//	egress.max_idle_per_upstream       128
//	egress.idle_timeout                90s
//	egress.dial_timeout                10s
//	egress.response_header_timeout     30s
//	egress.eject_time                  10s
//	rate_limit.max_ips                 100000  ratelimit.Config.SetDefaults
//	rate_limit.ip_idle                 10m
//	rate_limit.ipv6_prefix             64
//	breaker.window                     10s     breaker.Config.SetDefaults
//	breaker.min_requests               5
//	breaker.failure_ratio              0.5
//	breaker.consecutive_failures       5
//	breaker.cool_down                  10s
//	breaker.half_open_probes           1
//
// Not defaulted here:
//   - quic's other settings take transport.Config's own defaults, applied
//     where the QUIC configuration is made (transport.Config.QUIC);
//   - tracing.service_name is qtunnel-server or qtunnel-client, chosen by
//     the command that starts the side (cmd/tunnel/app);
//   - every other setting has no default: empty or zero means none or off
//     (public_https, tls: a generated identity, admin, rate limits,
//     trusted_proxies, runtime, tracing.exporter, log.access...).

func setDuration(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

func setString(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

// SetDefaults fills every zero setting with its default.
func (c *Common) SetDefaults() {
	if c.Limits.MaxFrameSize == 0 {
		c.Limits.MaxFrameSize = 64 << 10
	}
	if c.Limits.MaxConcurrentStreams == 0 {
		c.Limits.MaxConcurrentStreams = 1000
	}
	if c.Limits.MaxHeaderBytes == 0 {
		c.Limits.MaxHeaderBytes = 64 << 10
	}
	setDuration(&c.Limits.ReadHeaderTimeout, 10*time.Second)
	setDuration(&c.Limits.IdleTimeout, 120*time.Second)
	setDuration(&c.Limits.HandshakeTimeout, 10*time.Second)
	setDuration(&c.Limits.StreamOpenTimeout, 10*time.Second)
	if c.Limits.MaxInFlight == 0 {
		c.Limits.MaxInFlight = 10000
	}
	if c.Limits.MaxBodySize == 0 {
		c.Limits.MaxBodySize = 10 << 20
	}
	setDuration(&c.Limits.RequestTimeout, 30*time.Second)
	if c.Limits.MaxStreamsPerSource == 0 {
		c.Limits.MaxStreamsPerSource = 100
	}
	if c.Limits.MaxStreamsPerConnection == 0 {
		c.Limits.MaxStreamsPerConnection = 100
	}
	if c.Limits.RequestBuffer == 0 {
		c.Limits.RequestBuffer = min(64<<10, c.Limits.MaxFrameSize)
	}
	setDuration(&c.Limits.BodyTimeout, 30*time.Second)
	if c.Limits.MinBodyRate == 0 {
		c.Limits.MinBodyRate = 1 << 10
	}
	setDuration(&c.Limits.MinRateGrace, 10*time.Second)
	setDuration(&c.Limits.SendTimeout, 30*time.Second)
	setDuration(&c.Limits.StreamIdleTimeout, 5*time.Minute)
	if c.Limits.H2MaxResets == 0 {
		c.Limits.H2MaxResets = 200
	}
	setString(&c.Limits.SNIHostMismatch, SNIReject)
	if c.AuthThrottle.MaxFailures == 0 {
		c.AuthThrottle.MaxFailures = 5
	}
	setDuration(&c.AuthThrottle.Window, time.Minute)
	setDuration(&c.AuthThrottle.MaxBackoff, 15*time.Minute)
	setDuration(&c.ShutdownGrace, 10*time.Second)
	setString(&c.Log.Level, "info")
	setString(&c.Log.Format, "text")
	if c.QUIC.MaxStreams == 0 {
		c.QUIC.MaxStreams = int64(c.Limits.MaxConcurrentStreams)
	}
	logger := c.Egress.Logger
	c.Egress.SetDefaults()
	c.Egress.Logger = logger // chosen by the side that runs the pool
	c.RateLimit.SetDefaults()
	c.Breaker.SetDefaults()
	if c.Tracing.SampleRatio == nil {
		one := 1.0
		c.Tracing.SampleRatio = &one
	}
}

// SetDefaults fills every zero setting with its default.
func (c *Server) SetDefaults() {
	setString(&c.Listen, ":4443")
	setString(&c.PublicHTTP, ":8080")
	setDuration(&c.Sync.HashCheckInterval, 15*time.Second)
	setDuration(&c.Sync.FullSyncInterval, 5*time.Minute)
	setDuration(&c.Sync.ConfigPollInterval, time.Second)
	setDuration(&c.Sessions.SweepInterval, 60*time.Second)
	setDuration(&c.Sessions.TTL, 300*time.Second)
	c.Common.SetDefaults()
}

// SetDefaults fills every zero setting with its default.
func (c *Client) SetDefaults() {
	if c.ServerName == "" {
		if h, _, err := net.SplitHostPort(c.Server); err == nil {
			c.ServerName = h
		}
	}
	setDuration(&c.Reconnect.Base, 200*time.Millisecond)
	setDuration(&c.Reconnect.Max, 30*time.Second)
	setDuration(&c.Reconnect.Stable, 30*time.Second)
	setDuration(&c.Reconnect.AttemptTimeout, 2*time.Second)
	c.Common.SetDefaults()
}

// StateDirEnv is the environment variable systemd sets for a unit with
// StateDirectory=: the default state_dir when it is set.
const StateDirEnv = "STATE_DIRECTORY"

// DefaultStateDirName is the state directory's name next to the
// configuration file, when neither state_dir nor $STATE_DIRECTORY says
// otherwise.
const DefaultStateDirName = "state"

// StateDirectory returns the state directory of a server started from
// configFile ("" for a configuration built in code), or "" for none:
// state_dir if set (relative to configFile's directory when relative and
// there is a file), else the first path of $STATE_DIRECTORY (systemd
// lists one per StateDirectory= entry, separated by colons), else "state"
// next to configFile.
func (c *Server) StateDirectory(configFile string) string {
	if c.StateDir != "" {
		if configFile != "" && !filepath.IsAbs(c.StateDir) {
			return filepath.Join(filepath.Dir(configFile), c.StateDir)
		}
		return c.StateDir
	}
	if env, _, _ := strings.Cut(os.Getenv(StateDirEnv), ":"); env != "" {
		return env
	}
	if configFile != "" {
		return filepath.Join(filepath.Dir(configFile), DefaultStateDirName)
	}
	return ""
}
