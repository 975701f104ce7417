package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// result is what one run of the command produced.
type result struct {
	code           int
	stdout, stderr string
}

// requireExit checks that the run ended with code, saying stderr on
// standard error and nothing on standard output.
func (r result) requireExit(t *testing.T, code int, stderr string) {
	t.Helper()
	require.Equal(t, code, r.code)
	require.Equal(t, stderr, r.stderr)
	require.Empty(t, r.stdout)
}

func runTunnel(stdin string, args ...string) result {
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func hexSHA256(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

var validPin = func() string {
	sum := sha256.Sum256([]byte("server key"))
	return "sha256:" + base64.StdEncoding.EncodeToString(sum[:])
}()

var validServer = `listen: 127.0.0.1:4443
clients:
  - id: c1
    token_sha256: ` + hexSHA256("tok") + `
rules:
  - id: web
    client: c1
    direction: reverse
    host: app.example.test
    upstream: http://127.0.0.1:3000
`

var validClient = `id: c1
token: tok
server: 127.0.0.1:4443
server_pin: ` + validPin + `
`

func TestNoArgs(t *testing.T) {
	t.Parallel()
	runTunnel("").requireExit(t, 2, usage)
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
	}{
		{name: "word", args: []string{"frobnicate"}},
		{name: "flag first", args: []string{"-config", "x.yaml"}},
		{name: "case matters", args: []string{"Server"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runTunnel("", tt.args...).requireExit(t, 2, "tunnel: unknown command \""+tt.args[0]+"\"\n\n"+usage)
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"help", "-h", "--help"} {
		t.Run(arg, func(t *testing.T) {
			t.Parallel()
			r := runTunnel("", arg)
			require.Equal(t, 0, r.code)
			require.Equal(t, usage, r.stdout)
			require.Empty(t, r.stderr)
		})
	}
}

func TestCheckConfigOK(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		kind    string
		content string
		summary string
	}{
		{name: "server", kind: "server", content: validServer, summary: "1 clients, 1 rules"},
		{name: "client", kind: "client", content: validClient, summary: `client "c1", server 127.0.0.1:4443`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			file := writeFile(t, tt.kind+".yaml", tt.content)
			r := runTunnel("", "check-config", tt.kind, file)
			require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
			require.Equal(t, file+": ok ("+tt.summary+")\n", r.stdout)
			require.Empty(t, r.stderr)
		})
	}
}

func TestCheckConfigReportsEveryProblem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		kind    string
		content string
		// want are the problems as "LINE: path: reason"; the file is prefixed.
		want []string
	}{
		{
			name: "server",
			kind: "server",
			content: `listen: nowhere
clients:
  - id: c1
    token_sha256: abc
rules:
  - id: web
    client: c1
    direction: reverse
    host: app.example.test
    upstream: ftp://x
log:
  level: loud
`,
			want: []string{
				`1: listen: "nowhere" is not host:port`,
				"4: clients[0].token_sha256: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')",
				`10: rules[0].upstream: "ftp://x": scheme must be http or https`,
				`12: log.level: "loud" is not one of debug, info, warn, error`,
			},
		},
		{
			name: "client",
			kind: "client",
			content: `id: c1
token: tok
server: nowhere
server_pin: md5:abc
`,
			want: []string{
				`3: server: "nowhere" is not host:port`,
				`4: server_pin: pin "md5:abc": want sha256:<base64>`,
			},
		},
		{
			name:    "server file of the wrong kind",
			kind:    "server",
			content: validClient,
			want: []string{
				"1: field id not found in type config.Server",
				"2: field token not found in type config.Server",
				"3: field server not found in type config.Server",
				"4: field server_pin not found in type config.Server",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			file := writeFile(t, "bad.yaml", tt.content)
			var want strings.Builder
			for _, w := range tt.want {
				want.WriteString(file + ":" + w + "\n")
			}
			runTunnel("", "check-config", tt.kind, file).requireExit(t, 1, want.String())
		})
	}
}

func TestCheckConfigUsageAndFileErrors(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	empty := writeFile(t, "empty.yaml", "")
	const usageErr = "tunnel: usage: tunnel check-config server|client FILE\n"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no arguments", args: []string{"check-config"}, want: usageErr},
		{name: "no file", args: []string{"check-config", "server"}, want: usageErr},
		{name: "wrong kind", args: []string{"check-config", "proxy", "x.yaml"}, want: usageErr},
		{name: "too many", args: []string{"check-config", "server", "a.yaml", "b.yaml"}, want: usageErr},
		{name: "missing file", args: []string{"check-config", "server", missing}, want: "tunnel: open " + missing + ": no such file or directory\n"},
		{name: "empty file", args: []string{"check-config", "client", empty}, want: empty + ": file is empty\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runTunnel("", tt.args...).requireExit(t, 1, tt.want)
		})
	}
}

func TestHashToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		stdin string
		token string
	}{
		{name: "line", stdin: "tok\n", token: "tok"},
		{name: "no newline", stdin: "tok", token: "tok"},
		{name: "whitespace and CRLF", stdin: "  s3cret token \r\n", token: "s3cret token"},
		{name: "first line only", stdin: "first\nsecond\n", token: "first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := runTunnel(tt.stdin, "hash-token")
			require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
			require.Equal(t, hexSHA256(tt.token)+"\n", r.stdout)
			require.Empty(t, r.stderr)
		})
	}
}

func TestHashTokenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		stdin string
	}{
		{name: "empty", stdin: ""},
		{name: "blank line", stdin: "\n"},
		{name: "only spaces", stdin: "   \t\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runTunnel(tt.stdin, "hash-token").requireExit(t, 1, "tunnel: hash-token: give the token on stdin\n")
		})
	}

	t.Run("read error", func(t *testing.T) {
		t.Parallel()
		var out, errOut bytes.Buffer
		code := run([]string{"hash-token"}, iotest.ErrReader(iotest.ErrTimeout), &out, &errOut)
		require.Equal(t, 1, code)
		require.Equal(t, "tunnel: "+iotest.ErrTimeout.Error()+"\n", errOut.String())
		require.Empty(t, out.String())
	})
}

// TestServerAndClientNeedConfig never starts a server or client: each case
// fails before anything listens.
func TestServerAndClientNeedConfig(t *testing.T) {
	t.Parallel()
	badServer := writeFile(t, "server.yaml", "clients:\n  - id: c1\n    token_sha256: nope\n")
	badClient := writeFile(t, "client.yaml", "id: c1\ntoken: tok\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "server without -config", args: []string{"server"}, want: "tunnel: server: -config FILE is required\n"},
		{name: "client without -config", args: []string{"client"}, want: "tunnel: client: -config FILE is required\n"},
		{name: "server with empty -config", args: []string{"server", "-config", ""}, want: "tunnel: server: -config FILE is required\n"},
		{name: "server with a missing file", args: []string{"server", "-config", missing}, want: "tunnel: open " + missing + ": no such file or directory\n"},
		{
			name: "server with a bad file",
			args: []string{"server", "-config", badServer},
			want: badServer + ":3: clients[0].token_sha256: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')\n",
		},
		{
			name: "client with a bad file",
			args: []string{"client", "-config=" + badClient},
			want: badClient + ":1: server: missing (the server's tunnel address, host:port)\n" +
				badClient + ":1: server_pin: set server_pin (sha256:..., logged by the server) or server_ca_file\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runTunnel("", tt.args...).requireExit(t, 1, tt.want)
		})
	}
}

func TestServerUnknownFlag(t *testing.T) {
	t.Parallel()
	r := runTunnel("", "server", "-listen", ":1")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "tunnel: flag provided but not defined: -listen\n")
	require.Empty(t, r.stdout)
}

// TestFlagUsageGoesToStderr checks that a subcommand's flag help is written
// to the stderr given to run, like every other message.
func TestFlagUsageGoesToStderr(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"server", "client", "demo"} {
		r := runTunnel("", cmd, "-h")
		require.Contains(t, r.stderr, "Usage of "+cmd, cmd)
	}
}
