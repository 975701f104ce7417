package config_test

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

var (
	hashC1 = control.HashToken("token-one").String()
	hashC2 = control.HashToken("token-two").String()
	// pin is a well-formed server pin (the base64 of 32 bytes).
	pin = func() string {
		sum := sha256.Sum256([]byte("server key"))
		return "sha256:" + base64.StdEncoding.EncodeToString(sum[:])
	}()
)

// lineNo returns the 1-based line of the only line of doc that contains
// marker, so that expected line numbers follow the YAML written in the test.
func lineNo(t *testing.T, doc, marker string) int {
	t.Helper()
	found := 0
	for i, l := range strings.Split(doc, "\n") {
		if strings.Contains(l, marker) {
			require.Zero(t, found, "marker %q is on more than one line", marker)
			found = i + 1
		}
	}
	require.NotZero(t, found, "marker %q is not in the document", marker)
	return found
}

// problems requires err to be config.Problems and returns them.
func problems(t *testing.T, err error) config.Problems {
	t.Helper()
	require.Error(t, err)
	var ps config.Problems
	require.True(t, errors.As(err, &ps), "want config.Problems, got %T: %v", err, err)
	require.NotEmpty(t, ps)
	return ps
}

// errorLines returns each problem's Error().
func errorLines(ps config.Problems) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Error()
	}
	return out
}

const minimalServer = `clients:
  - id: c1
    token_sha256: ` + "HASH1" + `
`

func serverDoc(s string) string {
	return strings.NewReplacer("HASH1", hashC1, "HASH2", hashC2).Replace(s)
}

func TestParseServerDefaults(t *testing.T) {
	t.Parallel()
	c, err := config.ParseServer("server.yaml", []byte(serverDoc(minimalServer)))
	require.NoError(t, err)

	require.Equal(t, ":4443", c.Listen)
	require.Equal(t, ":8080", c.PublicHTTP)
	require.Equal(t, []config.ClientEntry{{ID: "c1", TokenSHA256: hashC1}}, c.Clients)
	require.Empty(t, c.Rules)
	require.Equal(t, config.Sync{HashCheckInterval: 15 * time.Second, FullSyncInterval: 5 * time.Minute, ConfigPollInterval: time.Second}, c.Sync)
	require.Equal(t, config.Sessions{SweepInterval: 60 * time.Second, TTL: 300 * time.Second}, c.Sessions)

	require.Equal(t, config.Size(64<<10), c.Limits.MaxFrameSize)
	require.Equal(t, 1000, c.Limits.MaxConcurrentStreams)
	require.Equal(t, config.Size(64<<10), c.Limits.MaxHeaderBytes)
	require.Equal(t, 10*time.Second, c.Limits.ReadHeaderTimeout)
	require.Equal(t, 120*time.Second, c.Limits.IdleTimeout)
	require.Equal(t, 10*time.Second, c.Limits.HandshakeTimeout)
	require.Equal(t, 10*time.Second, c.Limits.StreamOpenTimeout)
	require.Equal(t, 10000, c.Limits.MaxInFlight)
	require.Equal(t, config.SizeLimit(10<<20), c.Limits.MaxBodySize)
	require.Equal(t, 30*time.Second, c.Limits.RequestTimeout)
	require.Equal(t, 10*time.Second, c.ShutdownGrace)
	require.Equal(t, config.Log{Level: "info", Format: "text"}, c.Log)
	require.Equal(t, int64(1000), c.QUIC.MaxStreams, "QUIC streams follow max_concurrent_streams")

	require.Equal(t, 2, c.Egress.WarmConns)
	require.Equal(t, 512, c.Egress.MaxConnsPerUpstream)
	require.Equal(t, 128, c.Egress.MaxIdlePerUpstream)
	require.Equal(t, 90*time.Second, c.Egress.IdleTimeout)
	require.Equal(t, 10*time.Second, c.Egress.DialTimeout)
	require.Equal(t, 30*time.Second, c.Egress.ResponseHeaderTimeout)
}

func TestParseServerKeepsExplicitValues(t *testing.T) {
	t.Parallel()
	doc := serverDoc(`listen: 127.0.0.1:5443
public_http: 127.0.0.1:9080
clients:
  - id: c1
    token_sha256: HASH1
sync:
  hash_check_interval: 3s
  full_sync_interval: 1m
sessions:
  sweep_interval: 5s
  ttl: 20s
limits:
  max_frame_size: 1MiB
  max_concurrent_streams: 10
  max_header_bytes: 8000
  handshake_timeout: 2s
quic:
  max_streams: 77
egress:
  warm_conns: -1
  dial_timeout: 1s
log:
  level: debug
  format: json
shutdown_grace: 30s
`)
	c, err := config.ParseServer("server.yaml", []byte(doc))
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:5443", c.Listen)
	require.Equal(t, "127.0.0.1:9080", c.PublicHTTP)
	require.Equal(t, config.Sync{HashCheckInterval: 3 * time.Second, FullSyncInterval: time.Minute, ConfigPollInterval: time.Second}, c.Sync)
	require.Equal(t, config.Sessions{SweepInterval: 5 * time.Second, TTL: 20 * time.Second}, c.Sessions)
	require.Equal(t, config.Size(1<<20), c.Limits.MaxFrameSize)
	require.Equal(t, 10, c.Limits.MaxConcurrentStreams)
	require.Equal(t, config.Size(8000), c.Limits.MaxHeaderBytes)
	require.Equal(t, 2*time.Second, c.Limits.HandshakeTimeout)
	require.Equal(t, 10*time.Second, c.Limits.StreamOpenTimeout, "unset fields still get defaults")
	require.Equal(t, int64(77), c.QUIC.MaxStreams)
	require.Equal(t, -1, c.Egress.WarmConns)
	require.Equal(t, time.Second, c.Egress.DialTimeout)
	require.Equal(t, 512, c.Egress.MaxConnsPerUpstream)
	require.Equal(t, config.Log{Level: "debug", Format: "json"}, c.Log)
	require.Equal(t, 30*time.Second, c.ShutdownGrace)
}

func TestParseServerRules(t *testing.T) {
	t.Parallel()
	doc := serverDoc(`clients:
  - id: c1
    token_sha256: HASH1
  - id: c2
    token_sha256: HASH2
rules:
  - id: web
    client: c1
    direction: reverse
    host: App.Example.test
    upstream: http://127.0.0.1:3000
  - id: db
    client: c2
    direction: forward
    listen: 127.0.0.1:9000
    upstream: http://127.0.0.1:4000
    upstream_http2: true
`)
	c, err := config.ParseServer("server.yaml", []byte(doc))
	require.NoError(t, err)
	require.Equal(t, []rules.Rule{
		{ID: "web", Client: "c1", Direction: rules.Reverse, Host: "App.Example.test", Upstream: "http://127.0.0.1:3000"},
		{ID: "db", Client: "c2", Direction: rules.Forward, Listen: "127.0.0.1:9000", Upstream: "http://127.0.0.1:4000", UpstreamHTTP2: true},
	}, c.Rules)
	tab, err := rules.NewTable(1, c.Rules)
	require.NoError(t, err, "a valid config yields a valid rule table")
	require.Equal(t, 2, tab.Len())
}

func TestParseServerProblems(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
		// marker is a text on the line the problem must point at.
		marker string
		// want is the problem's Error() with LINE standing for marker's line.
		want string
	}{
		{
			name:   "bad upstream scheme in rules[1]",
			doc:    badUpstreamDoc,
			marker: "ftp://x",
			want:   `server.yaml:LINE: rules[1].upstream: "ftp://x": scheme must be http or https`,
		},
		{
			name: "rule client not in clients",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
rules:
  - id: web
    client: ghost
    direction: reverse
    host: a.test
    upstream: http://127.0.0.1:3000
`,
			marker: "client: ghost",
			want:   `server.yaml:LINE: rules[0].client: client "ghost" is not in clients`,
		},
		{
			name: "reverse rules for one host and different clients: the second is reported",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
  - id: c2
    token_sha256: HASH2
rules:
  - id: first
    client: c1
    direction: reverse
    host: shared.test
    path_prefix: /a
    upstream: http://127.0.0.1:3000
  - id: second
    client: c2
    direction: reverse
    host: Shared.test
    path_prefix: /b
    upstream: http://127.0.0.1:3001
`,
			marker: "host: Shared.test",
			want:   `server.yaml:LINE: rules[1].host: host "shared.test" belongs to client "c1" (rule "first")`,
		},
		{
			name: "same host and path twice",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
rules:
  - id: first
    client: c1
    direction: reverse
    host: a.test
    upstream: http://127.0.0.1:3000
  - id: second
    client: c1
    direction: reverse
    host: a.test # second
    upstream: http://127.0.0.1:3001
`,
			marker: "# second",
			want:   `server.yaml:LINE: rules[1].host: a.test/ on the public listener is already routed by rule "first"`,
		},
		{
			name: "duplicate rule id",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
rules:
  - id: web
    client: c1
    direction: reverse
    host: a.test
    upstream: http://127.0.0.1:3000
  - id: web # again
    client: c1
    direction: reverse
    host: b.test
    upstream: http://127.0.0.1:3001
`,
			marker: "# again",
			want:   `server.yaml:LINE: rules[1].id: "web" is already used by another rule (client "c1")`,
		},
		{
			name: "bad token_sha256",
			doc: `clients:
  - id: c1
    token_sha256: abc123
`,
			marker: "abc123",
			want:   `server.yaml:LINE: clients[0].token_sha256: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')`,
		},
		{
			name: "missing token_sha256 points at the client entry",
			doc: `clients:
  - id: c1
`,
			marker: "- id: c1",
			want:   `server.yaml:LINE: clients[0].token_sha256: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')`,
		},
		{
			name: "client listed twice",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
  - id: c1 # twice
    token_sha256: HASH2
`,
			marker: "# twice",
			want:   `server.yaml:LINE: clients[1].id: client "c1" is listed twice`,
		},
		{
			name: "listen is not host:port",
			doc: `listen: localhost
clients:
  - id: c1
    token_sha256: HASH1
`,
			marker: "listen: localhost",
			want:   `server.yaml:LINE: listen: "localhost" is not host:port`,
		},
		{
			name: "cert without key",
			doc: `tls:
  cert_file: cert.pem
clients:
  - id: c1
    token_sha256: HASH1
`,
			marker: "tls:",
			want:   `server.yaml:LINE: tls: cert_file and key_file go together`,
		},
		{
			name: "negative duration",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
sessions:
  ttl: -5s
`,
			marker: "ttl: -5s",
			want:   `server.yaml:LINE: sessions.ttl: must not be negative`,
		},
		{
			name: "frame size below 1KiB",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
limits:
  max_frame_size: 512
`,
			marker: "max_frame_size",
			want:   `server.yaml:LINE: limits.max_frame_size: 512 is outside 1KiB..16MiB`,
		},
		{
			name: "frame size above 16MiB",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
limits:
  max_frame_size: 17MiB
`,
			marker: "max_frame_size",
			want:   fmt.Sprintf(`server.yaml:LINE: limits.max_frame_size: %d is outside 1KiB..16MiB`, 17<<20),
		},
		{
			name: "bad log level",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
log:
  level: loud
`,
			marker: "level: loud",
			want:   `server.yaml:LINE: log.level: "loud" is not one of debug, info, warn, error`,
		},
		{
			name: "unknown top-level key",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
colour: blue
`,
			marker: "colour",
			want:   `server.yaml:LINE: colour: unknown setting`,
		},
		{
			name: "unknown key in limits",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
limits:
  max_frame: 64KiB
`,
			marker: "max_frame:",
			want:   `server.yaml:LINE: limits.max_frame: unknown setting`,
		},
		{
			name: "unknown key in rules[1]",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
rules:
  - id: a
    client: c1
    direction: reverse
    host: a.test
    upstream: http://127.0.0.1:3000
  - id: b
    client: c1
    direction: reverse
    host: b.test
    upstreem: http://127.0.0.1:3000
`,
			marker: "upstreem",
			want:   `server.yaml:LINE: rules[1].upstreem: unknown setting; did you mean upstream?`,
		},
		{
			name: "bad size in YAML",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
limits:
  max_header_bytes: lots
`,
			marker: "lots",
			want:   `server.yaml:LINE: limits.max_header_bytes: "lots" is not a size (such as 4096, 64KiB, 10MiB)`,
		},
		{
			name: "bad duration in YAML",
			doc: `clients:
  - id: c1
    token_sha256: HASH1
shutdown_grace: soon
`,
			marker: "soon",
			want:   `server.yaml:LINE: shutdown_grace: "soon" is not a duration such as 30s or 1m`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := serverDoc(tt.doc)
			c, err := config.ParseServer("server.yaml", []byte(doc))
			require.Nil(t, c)
			ps := problems(t, err)
			want := strings.Replace(tt.want, "LINE", fmt.Sprint(lineNo(t, doc, tt.marker)), 1)
			require.Equal(t, []string{want}, errorLines(ps))
			require.Equal(t, "server.yaml", ps[0].File)
		})
	}
}

// badUpstreamDoc has a bad upstream scheme in its second rule.
const badUpstreamDoc = `clients:
  - id: c1
    token_sha256: HASH1
rules:
  - id: ok
    client: c1
    direction: reverse
    host: a.test
    upstream: http://127.0.0.1:3000
  - id: bad
    client: c1
    direction: reverse
    host: b.test
    upstream: ftp://x
`

// TestProblemLineIsTheKeysLine pins the headline case with a literal line
// number, independently of the lineNo helper.
func TestProblemLineIsTheKeysLine(t *testing.T) {
	t.Parallel()
	doc := serverDoc(badUpstreamDoc)
	_, err := config.ParseServer("server.yaml", []byte(doc))
	ps := problems(t, err)
	require.Len(t, ps, 1)
	require.Equal(t, config.Problem{
		File: "server.yaml",
		Line: 14,
		Path: "rules[1].upstream",
		Msg:  `"ftp://x": scheme must be http or https`,
	}, ps[0])
	require.EqualError(t, err, `server.yaml:14: rules[1].upstream: "ftp://x": scheme must be http or https`)
}

func TestParseServerSeveralProblems(t *testing.T) {
	t.Parallel()
	doc := serverDoc(`listen: nowhere
clients:
  - id: c1
    token_sha256: not-hex
rules:
  - id: web
    client: c1
    direction: sideways
    upstream: http://127.0.0.1:3000
  - id: api
    client: c1
    direction: reverse
    host: api.test
    upstream: ftp://x
limits:
  max_concurrent_streams: -3
log:
  format: xml
`)
	_, err := config.ParseServer("s.yaml", []byte(doc))
	ps := problems(t, err)
	line := func(m string) string { return fmt.Sprint(lineNo(t, doc, m)) }
	want := []string{
		"s.yaml:" + line("nowhere") + `: listen: "nowhere" is not host:port`,
		"s.yaml:" + line("not-hex") + ": clients[0].token_sha256: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')",
		"s.yaml:" + line("sideways") + `: rules[0].direction: "sideways" is neither "reverse" nor "forward"`,
		"s.yaml:" + line("ftp://x") + `: rules[1].upstream: "ftp://x": scheme must be http or https`,
		"s.yaml:" + line("max_concurrent_streams") + ": limits.max_concurrent_streams: must be at least 1",
		"s.yaml:" + line("xml") + `: log.format: "xml" is neither text nor json`,
	}
	require.Equal(t, want, errorLines(ps))
	require.Equal(t, strings.Join(want, "\n"), err.Error(), "Problems.Error is one problem a line")
}

func TestParseServerUnknownKeysReportedTogether(t *testing.T) {
	t.Parallel()
	doc := `limits:
  bogus: 1
  other: 2
`
	_, err := config.ParseServer("s.yaml", []byte(doc))
	ps := problems(t, err)
	require.Equal(t, config.Problems{
		{File: "s.yaml", Line: 2, Path: "limits.bogus", Msg: "unknown setting"},
		{File: "s.yaml", Line: 3, Path: "limits.other", Msg: "unknown setting"},
	}, ps)
}

// TestSizeErrorKeepsOtherDecodeProblems checks that a bad size does not hide
// the other decoding problems of the file.
func TestSizeErrorKeepsOtherDecodeProblems(t *testing.T) {
	t.Parallel()
	doc := `bogus: 1
limits:
  max_frame_size: huge
  max_header_bytes: tiny
`
	_, err := config.ParseServer("s.yaml", []byte(doc))
	ps := problems(t, err)
	require.Equal(t, []string{
		"s.yaml:1: bogus: unknown setting",
		`s.yaml:3: limits.max_frame_size: "huge" is not a size (such as 4096, 64KiB, 10MiB)`,
		`s.yaml:4: limits.max_header_bytes: "tiny" is not a size (such as 4096, 64KiB, 10MiB)`,
	}, errorLines(ps))
}

func TestParseServerSyntaxError(t *testing.T) {
	t.Parallel()
	_, err := config.ParseServer("s.yaml", []byte("clients:\n  - id: c1\n   token_sha256: [\n"))
	ps := problems(t, err)
	require.Equal(t, "s.yaml", ps[0].File)
	require.Positive(t, ps[0].Line, "yaml syntax errors carry a line: %v", err)
	require.NotContains(t, ps[0].Msg, "yaml: ", "the yaml prefix is dropped")
}

func TestEmptyFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
	}{
		{name: "no bytes", doc: ""},
		{name: "only a comment", doc: "# nothing here\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.ParseServer("s.yaml", []byte(tt.doc))
			require.Equal(t, config.Problems{{File: "s.yaml", Msg: "file is empty"}}, problems(t, err))
			require.EqualError(t, err, "s.yaml: file is empty")
			_, err = config.ParseClient("c.yaml", []byte(tt.doc))
			require.EqualError(t, err, "c.yaml: file is empty")
		})
	}
}

func TestLoadServerAndClient(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp := filepath.Join(dir, "server.yaml")
	require.NoError(t, os.WriteFile(sp, []byte(serverDoc(minimalServer)), 0o600))
	s, err := config.LoadServer(sp)
	require.NoError(t, err)
	require.Equal(t, "c1", s.Clients[0].ID)
	require.Equal(t, config.Size(64<<10), s.Limits.MaxFrameSize)

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("clients:\n  - id: c1\n    token_sha256: nope\n"), 0o600))
	_, err = config.LoadServer(bad)
	ps := problems(t, err)
	require.Equal(t, bad+":3: clients[0].token_sha256: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')", ps.Error(),
		"Load names the file by its path")

	cp := filepath.Join(dir, "client.yaml")
	require.NoError(t, os.WriteFile(cp, []byte("id: c1\ntoken: t\nserver: 127.0.0.1:4443\nserver_pin: "+pin+"\n"), 0o600))
	c, err := config.LoadClient(cp)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", c.ServerName)

	_, err = config.LoadServer(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = config.LoadClient(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, fs.ErrNotExist)
}

func TestParseClientDefaults(t *testing.T) {
	t.Parallel()
	doc := "id: c1\ntoken: secret\nserver: tunnel.example.test:4443\nserver_pin: " + pin + "\n"
	c, err := config.ParseClient("client.yaml", []byte(doc))
	require.NoError(t, err)
	require.Equal(t, "c1", c.ID)
	require.Equal(t, "tunnel.example.test", c.ServerName, "server_name defaults to the host of server")
	require.Equal(t, config.Reconnect{Base: 200 * time.Millisecond, Max: 30 * time.Second, Stable: 30 * time.Second, AttemptTimeout: 2 * time.Second}, c.Reconnect)
	require.Equal(t, config.Size(64<<10), c.Limits.MaxFrameSize)
	require.Equal(t, 10*time.Second, c.ShutdownGrace)
	require.Equal(t, 512, c.Egress.MaxConnsPerUpstream)
	require.Equal(t, 30*time.Second, c.Egress.ResponseHeaderTimeout)
	require.Equal(t, config.Log{Level: "info", Format: "text"}, c.Log)

	doc = "id: c1\ntoken: secret\nserver: tunnel.example.test:4443\nserver_name: other.test\nserver_ca_file: ca.pem\n"
	c, err = config.ParseClient("client.yaml", []byte(doc))
	require.NoError(t, err, "server_ca_file stands in for server_pin")
	require.Equal(t, "other.test", c.ServerName, "an explicit server_name is kept")
}

func TestParseClientProblems(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		doc    string
		marker string // "" when the problem has no line of its own
		want   string
	}{
		{
			name:   "missing server",
			doc:    "id: c1\ntoken: t\nserver_pin: " + pin + "\n",
			marker: "id: c1",
			want:   "c.yaml:LINE: server: missing (the server's tunnel address, host:port)",
		},
		{
			name:   "server is not host:port",
			doc:    "id: c1\ntoken: t\nserver: tunnel.test\nserver_pin: " + pin + "\n",
			marker: "server: tunnel.test",
			want:   `c.yaml:LINE: server: "tunnel.test" is not host:port`,
		},
		{
			name:   "missing pin and CA",
			doc:    "id: c1\ntoken: t\nserver: 127.0.0.1:4443\n",
			marker: "id: c1",
			want:   "c.yaml:LINE: server_pin: set server_pin (sha256:..., logged by the server) or server_ca_file",
		},
		{
			name:   "pin without prefix",
			doc:    "id: c1\ntoken: t\nserver: 127.0.0.1:4443\nserver_pin: abcdef\n",
			marker: "server_pin",
			want:   `c.yaml:LINE: server_pin: pin "abcdef": want sha256:<base64>`,
		},
		{
			name:   "pin of the wrong length",
			doc:    "id: c1\ntoken: t\nserver: 127.0.0.1:4443\nserver_pin: sha256:AAAA\n",
			marker: "server_pin",
			want:   `c.yaml:LINE: server_pin: pin "sha256:AAAA": want the base64 of a 32-byte SHA-256`,
		},
		{
			name:   "missing id",
			doc:    "token: t\nserver: 127.0.0.1:4443\nserver_pin: " + pin + "\n",
			marker: "token: t",
			want:   "c.yaml:LINE: id: missing",
		},
		{
			name:   "negative reconnect",
			doc:    "id: c1\ntoken: t\nserver: 127.0.0.1:4443\nserver_pin: " + pin + "\nreconnect:\n  max: -1s\n",
			marker: "max: -1s",
			want:   "c.yaml:LINE: reconnect.max: must not be negative",
		},
		{
			name:   "unknown key",
			doc:    "id: c1\ntoken: t\nserver: 127.0.0.1:4443\nserver_pin: " + pin + "\nrules: []\n",
			marker: "rules",
			want:   "c.yaml:LINE: rules: unknown setting; it is a server setting, for the server's file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := config.ParseClient("c.yaml", []byte(tt.doc))
			require.Nil(t, c)
			ps := problems(t, err)
			want := strings.Replace(tt.want, "LINE", fmt.Sprint(lineNo(t, tt.doc, tt.marker)), 1)
			require.Equal(t, []string{want}, errorLines(ps))
		})
	}
}

func TestParseClientSeveralProblems(t *testing.T) {
	t.Parallel()
	doc := "token: t\nserver: nope\nserver_pin: md5:x\nlog:\n  level: chatty\n"
	_, err := config.ParseClient("c.yaml", []byte(doc))
	require.Equal(t, []string{
		"c.yaml:1: id: missing",
		`c.yaml:2: server: "nope" is not host:port`,
		`c.yaml:3: server_pin: pin "md5:x": want sha256:<base64>`,
		`c.yaml:5: log.level: "chatty" is not one of debug, info, warn, error`,
	}, errorLines(problems(t, err)))
}

// TestClientTokenSources covers the environment variable, so it sets the
// environment and cannot run in parallel.
func TestClientTokenSources(t *testing.T) {
	base := "id: c1\nserver: 127.0.0.1:4443\nserver_pin: " + pin + "\n"

	t.Run("no token anywhere", func(t *testing.T) {
		t.Setenv(config.TokenEnv, "")
		_, err := config.ParseClient("c.yaml", []byte(base))
		require.Equal(t, []string{
			"c.yaml:1: token: set token, token_file, or the QTUNNEL_TOKEN environment variable",
		}, errorLines(problems(t, err)))
		_, err = (&config.Client{}).ReadToken()
		require.EqualError(t, err, "no token: set token, token_file or QTUNNEL_TOKEN")
	})

	// With QTUNNEL_TOKEN set, token beats token_file, which beats the
	// environment.
	for _, tt := range []struct {
		name, file, yaml, want string
	}{
		{name: "environment", want: "from-env"},
		{name: "token wins over file and environment", file: "from-file\n", yaml: "token: inline\n", want: "inline"},
		{name: "file wins over environment", file: "  from-file \r\n", want: "from-file"}, // surrounding whitespace is dropped
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(config.TokenEnv, "from-env")
			yaml := base + tt.yaml
			if tt.file != "" {
				file := filepath.Join(t.TempDir(), "token")
				require.NoError(t, os.WriteFile(file, []byte(tt.file), 0o600))
				yaml += "token_file: " + file + "\n"
			}
			c, err := config.ParseClient("c.yaml", []byte(yaml))
			require.NoError(t, err)
			tok, err := c.ReadToken()
			require.NoError(t, err)
			require.Equal(t, tt.want, tok)
		})
	}
}

func TestReadTokenFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	tests := []struct {
		name    string
		c       config.Client
		want    string
		wantErr string
		isErr   error
	}{
		{name: "inline", c: config.Client{Token: "abc"}, want: "abc"},
		{name: "file", c: config.Client{TokenFile: write("t1", "abc\n")}, want: "abc"},
		{name: "empty file", c: config.Client{TokenFile: write("t2", " \n\t")}, wantErr: "is empty"},
		{name: "missing file", c: config.Client{TokenFile: filepath.Join(dir, "none")}, wantErr: "token_file: ", isErr: fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := tt.c.ReadToken()
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				if tt.isErr != nil {
					require.ErrorIs(t, err, tt.isErr)
				}
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    config.Size
		wantErr bool
	}{
		{in: "0", want: 0},
		{in: "1000", want: 1000},
		{in: "4096", want: 4096},
		{in: "64KiB", want: 64 << 10},
		{in: "10MiB", want: 10 << 20},
		{in: "2GiB", want: 2 << 30},
		// Decimal units are refused (see TestDecimalSizeUnitsAreRefused).
		{in: "1KB", wantErr: true},
		{in: "3MB", wantErr: true},
		{in: "1GB", wantErr: true},
		{in: "512B", want: 512},
		{in: " 64 KiB ", want: 64 << 10},
		{in: "", wantErr: true},
		{in: "KiB", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "-1KiB", wantErr: true},
		{in: "1.5MiB", wantErr: true},
		{in: "64kib", wantErr: true},
		{in: "64TiB", wantErr: true},
		{in: "ten", wantErr: true},
		{in: "0x10", wantErr: true},
		{in: "99999999999999999999", wantErr: true},
		// Sizes are capped at 1<<62 bytes, whatever the unit.
		{in: "4611686018427387904", want: 1 << 62},
		{in: "4611686018427387905", wantErr: true},
		{in: "4294967296GiB", want: 1 << 62},
		{in: "4294967297GiB", wantErr: true},
		{in: "4611686018427387KB", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := config.ParseSize(tt.in)
			if tt.wantErr {
				require.Error(t, err)
				require.Contains(t, err.Error(), "is not a size (such as 4096, 64KiB, 10MiB)")
				require.Zero(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// TestParseSizeErrorQuotesInput checks that the error names the value as the
// user wrote it.
func TestParseSizeErrorQuotesInput(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"1.5MiB", "64XB", "-1KiB"} {
		_, err := config.ParseSize(in)
		require.EqualError(t, err, fmt.Sprintf("%q is not a size (such as 4096, 64KiB, 10MiB)", in))
	}
}

func TestSizeYAML(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		value   string
		want    config.Size
		wantErr string
	}{
		{name: "integer", value: "4096", want: 4096},
		{name: "binary unit", value: "64KiB", want: 64 << 10},
		{name: "decimal unit", value: "2KB", wantErr: `c.yaml:2: limits.max_frame_size: "2KB" is not a size (such as 4096, 64KiB, 10MiB): did you mean 2KiB? Units are powers of 1024; for 2000 bytes write 2000`},
		{name: "quoted", value: `"1MiB"`, want: 1 << 20},
		{name: "space before unit", value: "2 MiB", want: 2 << 20},
		{name: "word", value: "big", wantErr: `c.yaml:2: limits.max_frame_size: "big" is not a size (such as 4096, 64KiB, 10MiB)`},
		{name: "negative", value: "-4096", wantErr: `c.yaml:2: limits.max_frame_size: "-4096" is not a size (such as 4096, 64KiB, 10MiB)`},
		{name: "float", value: "1.5", wantErr: `c.yaml:2: limits.max_frame_size: "1.5" is not a size (such as 4096, 64KiB, 10MiB)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := serverDoc("limits:\n  max_frame_size: " + tt.value + "\nclients:\n  - id: c1\n    token_sha256: HASH1\n")
			c, err := config.ParseServer("c.yaml", []byte(doc))
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, c.Limits.MaxFrameSize)
		})
	}
}

func TestSizeString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   config.Size
		want string
	}{
		{0, "0"},
		{1, "1"},
		{1000, "1000"},
		{1 << 10, "1KiB"},
		{64 << 10, "64KiB"},
		{1536, "1536"},
		{3 << 20, "3MiB"},
		{1 << 30, "1GiB"},
		{5 << 30, "5GiB"},
		{1<<30 + 1<<20, "1025MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, tt.in.String())
			back, err := config.ParseSize(tt.in.String())
			require.NoError(t, err)
			require.Equal(t, tt.in, back, "String round-trips through ParseSize")
		})
	}
}

func TestParseLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    slog.Level
		wantErr bool
	}{
		{in: "debug", want: slog.LevelDebug},
		{in: "info", want: slog.LevelInfo},
		{in: "warn", want: slog.LevelWarn},
		{in: "error", want: slog.LevelError},
		{in: "WARN", want: slog.LevelWarn},
		{in: "", wantErr: true},
		{in: "verbose", wantErr: true},
		{in: "trace", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := config.ParseLevel(tt.in)
			if tt.wantErr {
				require.EqualError(t, err, fmt.Sprintf("%q is not one of debug, info, warn, error", tt.in))
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestProblemError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		p    config.Problem
		want string
	}{
		{name: "everything", p: config.Problem{File: "f.yaml", Line: 3, Path: "a.b", Msg: "bad"}, want: "f.yaml:3: a.b: bad"},
		{name: "no line", p: config.Problem{File: "f.yaml", Path: "a.b", Msg: "bad"}, want: "f.yaml: a.b: bad"},
		{name: "no path", p: config.Problem{File: "f.yaml", Line: 3, Msg: "bad"}, want: "f.yaml:3: bad"},
		{name: "no file", p: config.Problem{Path: "a.b", Msg: "bad"}, want: "a.b: bad"},
		{name: "only message", p: config.Problem{Msg: "bad"}, want: "bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, tt.p.Error())
		})
	}
}

func TestProblemsError(t *testing.T) {
	t.Parallel()
	ps := config.Problems{
		{File: "f.yaml", Line: 1, Path: "a", Msg: "x"},
		{File: "f.yaml", Line: 2, Path: "b", Msg: "y"},
	}
	require.Equal(t, "f.yaml:1: a: x\nf.yaml:2: b: y", ps.Error())
	require.Empty(t, config.Problems{}.Error())

	var err error = ps
	var got config.Problems
	require.True(t, errors.As(fmt.Errorf("wrapped: %w", err), &got))
	require.Equal(t, ps, got)
}

func TestValidateWithoutLoad(t *testing.T) {
	t.Parallel()
	// Validate works on structs built in code; problems then have a path
	// but no file or line.
	s := config.Server{Clients: []config.ClientEntry{{ID: "c1", TokenSHA256: hashC1}}}
	s.SetDefaults()
	require.NoError(t, s.Validate())

	s.Listen = "bad"
	err := s.Validate()
	require.Equal(t, config.Problems{{Path: "listen", Msg: `"bad" is not host:port`}}, problems(t, err))

	var c config.Client
	c.SetDefaults()
	c.ID, c.Token, c.Server, c.ServerPin = "c1", "t", "127.0.0.1:1", pin
	require.NoError(t, c.Validate())
}

// TestRequestLimits covers limits.max_in_flight, max_body_size and
// request_timeout: their values, "unlimited" for the body size, and a
// Problem with the setting's line for each bad value.
func TestRequestLimits(t *testing.T) {
	t.Parallel()
	parse := func(t *testing.T, limits string) (*config.Server, error) {
		t.Helper()
		return config.ParseServer("s.yaml", []byte(serverDoc(minimalServer+"limits:\n"+limits)))
	}
	t.Run("explicit values", func(t *testing.T) {
		t.Parallel()
		c, err := parse(t, "  max_in_flight: 100\n  max_body_size: 1MiB\n  request_timeout: 2s\n")
		require.NoError(t, err)
		require.Equal(t, 100, c.Limits.MaxInFlight)
		require.Equal(t, config.SizeLimit(1<<20), c.Limits.MaxBodySize)
		require.Equal(t, int64(1<<20), c.Limits.MaxBodySize.Bytes())
		require.Equal(t, 2*time.Second, c.Limits.RequestTimeout)
	})
	for _, v := range []string{"unlimited", "Unlimited", "-1", "-4096"} {
		t.Run("body size "+v, func(t *testing.T) {
			t.Parallel()
			c, err := parse(t, "  max_body_size: "+v+"\n")
			require.NoError(t, err)
			require.Equal(t, config.Unlimited, c.Limits.MaxBodySize)
			require.Zero(t, c.Limits.MaxBodySize.Bytes(), "the stage takes 0 as no limit")
			require.Equal(t, "unlimited", c.Limits.MaxBodySize.String())
		})
	}
	t.Run("body size 0 is the default", func(t *testing.T) {
		t.Parallel()
		c, err := parse(t, "  max_body_size: 0\n")
		require.NoError(t, err)
		require.Equal(t, config.SizeLimit(10<<20), c.Limits.MaxBodySize)
		require.Equal(t, "10MiB", c.Limits.MaxBodySize.String())
	})
	bad := []struct {
		name, limits, marker, want string
	}{
		{"negative in-flight", "  max_in_flight: -5\n", "max_in_flight",
			"limits.max_in_flight: must be at least 1"},
		{"negative timeout", "  request_timeout: -1s\n", "request_timeout",
			"limits.request_timeout: must not be negative"},
		{"timeout below 1ms", "  request_timeout: 500us\n", "request_timeout",
			"limits.request_timeout: 500µs is shorter than 1ms"},
		{"body size word", "  max_body_size: huge\n", "max_body_size",
			`limits.max_body_size: "huge" is neither a size (such as 4096, 64KiB, 10MiB) nor unlimited`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := serverDoc(minimalServer + "limits:\n" + tt.limits)
			_, err := config.ParseServer("s.yaml", []byte(doc))
			ps := problems(t, err)
			require.Equal(t, []string{fmt.Sprintf("s.yaml:%d: %s", lineNo(t, doc, tt.marker), tt.want)}, errorLines(ps))
		})
	}
}

// TestTracingSampleRatio: unset is 1; an explicit 0 stays 0 (only traces
// started upstream of the gateway are recorded); outside 0..1 is refused.
func TestTracingSampleRatio(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		yaml string
		want float64
	}{{"", 1}, {"tracing:\n  sample_ratio: 0\n", 0}, {"tracing:\n  sample_ratio: 0.25\n", 0.25}} {
		c, err := config.ParseServer("server.yaml", []byte(serverDoc(minimalServer+tc.yaml)))
		require.NoError(t, err, tc.yaml)
		require.NotNil(t, c.Tracing.SampleRatio)
		require.Equal(t, tc.want, *c.Tracing.SampleRatio, tc.yaml)
	}
	_, err := config.ParseServer("server.yaml", []byte(serverDoc(minimalServer+"tracing:\n  sample_ratio: 1.5\n")))
	require.ErrorContains(t, err, "server.yaml:5: tracing.sample_ratio: 1.5 is outside 0..1")
}

// TestHostileTrafficSettings: the settings that bound an attacker have
// their documented defaults, and a bad value names its line.
func TestHostileTrafficSettings(t *testing.T) {
	t.Parallel()
	c, err := config.ParseServer("server.yaml", []byte(serverDoc(minimalServer)))
	require.NoError(t, err)
	l := c.Limits
	require.Equal(t, 100, l.MaxStreamsPerSource)
	require.Equal(t, 100, l.MaxStreamsPerConnection)
	require.Equal(t, config.Size(64<<10), l.RequestBuffer)
	require.Equal(t, 30*time.Second, l.BodyTimeout)
	require.Equal(t, config.SizeLimit(1<<10), l.MinBodyRate)
	require.Equal(t, 10*time.Second, l.MinRateGrace)
	require.Equal(t, 30*time.Second, l.SendTimeout)
	require.Equal(t, 5*time.Minute, l.StreamIdleTimeout)
	require.Equal(t, 200, l.H2MaxResets)
	require.Equal(t, config.SNIReject, l.SNIHostMismatch)
	require.Empty(t, c.TrustedProxies)
	require.Equal(t, config.AuthThrottle{MaxFailures: 5, Window: time.Minute, MaxBackoff: 15 * time.Minute}, c.AuthThrottle)

	doc := serverDoc(minimalServer + `limits:
  min_body_rate: off
  max_streams_per_source: -1
trusted_proxies: [10.0.0.0/8, 192.0.2.7, "::1"]
`)
	c, err = config.ParseServer("server.yaml", []byte(doc))
	require.NoError(t, err)
	require.Equal(t, config.Unlimited, c.Limits.MinBodyRate)
	require.Zero(t, c.Limits.MinBodyRate.Bytes(), "off is no minimum")
	require.Equal(t, -1, c.Limits.MaxStreamsPerSource)
	require.Len(t, c.TrustedPrefixes(), 3)

	bad := []struct{ line, want string }{
		{"  max_streams_per_source: -5", "limits.max_streams_per_source: must be at least 1, or -1 for no limit"},
		{"  max_streams_per_connection: -1", "limits.max_streams_per_connection: must be at least 1"},
		{"  request_buffer: 1MiB", "limits.request_buffer: 1048576 is outside 0..max_frame_size (65536)"},
		{"  body_timeout: -1s", "limits.body_timeout: must not be negative"},
		{"  sni_host_mismatch: maybe", `limits.sni_host_mismatch: "maybe" is neither reject nor allow`},
		{"  h2_max_resets: -3", "limits.h2_max_resets: must be at least 1"},
	}
	for _, b := range bad {
		doc := serverDoc(minimalServer + "limits:\n" + b.line + "\n")
		_, err := config.ParseServer("server.yaml", []byte(doc))
		require.Contains(t, errorLines(problems(t, err)), fmt.Sprintf("server.yaml:%d: %s", lineNo(t, doc, b.line), b.want), b.line)
	}
	doc = serverDoc(minimalServer + "trusted_proxies:\n  - 10.0.0.0/33\n")
	_, err = config.ParseServer("server.yaml", []byte(doc))
	require.Contains(t, errorLines(problems(t, err)), fmt.Sprintf(`server.yaml:%d: trusted_proxies[0]: "10.0.0.0/33" is not a CIDR or an IP address`, lineNo(t, doc, "10.0.0.0/33")))
}
