package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/pipeline"
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
	require.Equal(t, code, r.code, "stderr: %s", r.stderr)
	require.Equal(t, stderr, r.stderr)
	require.Empty(t, r.stdout)
}

func runTunnel(stdin string, args ...string) result {
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// runWithoutStdin runs the command with a standard input that never
// delivers a byte, and fails the test if the command has not returned
// within a bound (a command that reads standard input would wait forever).
func runWithoutStdin(t *testing.T, args ...string) result {
	t.Helper()
	pr, pw := io.Pipe()
	defer pw.Close() // frees a reader stuck on it
	done := make(chan result, 1)
	go func() {
		var out, errOut bytes.Buffer
		code := run(args, pr, &out, &errOut)
		done <- result{code: code, stdout: out.String(), stderr: errOut.String()}
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("tunnel %s: still running after 10s: waiting on standard input?", strings.Join(args, " "))
		return result{}
	}
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

// commandFlags lists each command and every flag its help must show.
var commandFlags = map[string][]string{
	"init":         {"--server-address", "--public-http", "--client-id", "--force", "--help"},
	"server":       {"--config", "--help"},
	"client":       {"--config", "--help"},
	"expose":       {"--config", "--server", "--id", "--pin", "--token-file", "--host", "--port", "--name", "--inspect-addr", "--no-inspect", "--log-level", "--help"},
	"login":        {"--config", "--server", "--id", "--pin", "--token-file", "--help"},
	"demo":         {"--public", "--forward", "--tunnel", "--log-level", "--help"},
	"check-config": {"--config", "--help"},
	"hash-token":   {"--token-file", "--help"},
	"version":      {"--help"},
	"completion":   {"--help"},
	"help":         {"--help"},
}

// usageHint is the line that follows every usage error.
func usageHint(path string) string { return "Run '" + path + " --help' for usage.\n" }

func TestVersion(t *testing.T) {
	t.Parallel()
	want := "tunnel dev (" + runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")\n"
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		r := runWithoutStdin(t, args...)
		require.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
		require.Equal(t, want, r.stdout, args)
		require.Empty(t, r.stderr, args)
	}
	r := runTunnel("", "version", "extra")
	r.requireExit(t, 2, "tunnel version: unexpected argument \"extra\"\n"+usageHint("tunnel version"))
}

// TestHelpOfEveryCommand: each way of asking for a command's help prints
// it on standard output at once (no standard input is read), with examples
// and every flag, and exits 0.
func TestHelpOfEveryCommand(t *testing.T) {
	t.Parallel()
	for cmd, flags := range commandFlags {
		for _, ask := range [][]string{{cmd, "-h"}, {cmd, "--help"}, {cmd, "-help"}, {"help", cmd}} {
			t.Run(strings.Join(ask, " "), func(t *testing.T) {
				t.Parallel()
				r := runWithoutStdin(t, ask...)
				require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
				require.Empty(t, r.stderr)
				require.Contains(t, r.stdout, "Usage:\n  tunnel "+cmd)
				require.Regexp(t, `\nExamples:\n(  .*\n)*  tunnel `+regexp.QuoteMeta(cmd)+`\b`, r.stdout)
				for _, f := range flags {
					require.Contains(t, r.stdout, f+" ", "flag %s", f)
				}
			})
		}
	}
}

// TestEveryCommandIsCovered: the commands the root lists are the ones
// commandFlags describes, so a new command gets its help checked too.
func TestEveryCommandIsCovered(t *testing.T) {
	t.Parallel()
	var listed []string
	root := newRootCmd()
	root.InitDefaultHelpCmd() // as executing the root does
	for _, c := range root.Commands() {
		if !c.Hidden {
			listed = append(listed, c.Name())
		}
	}
	var want []string
	for c := range commandFlags {
		want = append(want, c)
	}
	require.ElementsMatch(t, want, listed, "add the new command to commandFlags")
}

func TestRootHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"-help"}} {
		r := runWithoutStdin(t, args...)
		require.Equal(t, 0, r.code, args)
		require.Empty(t, r.stderr)
		for c := range commandFlags {
			require.Regexp(t, `(?m)^  `+regexp.QuoteMeta(c)+` +\S`, r.stdout, "%v lists %s", args, c)
		}
		for _, code := range []string{"  0 ", "  1 ", "  2 ", "  130 "} {
			require.Contains(t, r.stdout, code, "exit code %q", code)
		}
		require.Contains(t, r.stdout, "source <(tunnel completion bash)")
		require.Contains(t, r.stdout, "Examples:")
	}
}

func TestNoArgs(t *testing.T) {
	t.Parallel()
	r := runTunnel("")
	require.Equal(t, 2, r.code)
	require.Empty(t, r.stdout)
	require.True(t, strings.HasPrefix(r.stderr, "tunnel: a command is required\n\nUsage:\n"), r.stderr)
	require.Contains(t, r.stderr, "Available Commands:")
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "word", args: []string{"frobnicate"}, want: `tunnel: unknown command "frobnicate"` + "\n"},
		{name: "near a command", args: []string{"sever"}, want: `tunnel: unknown command "sever"; did you mean "server"?` + "\n"},
		{name: "case matters", args: []string{"Server"}, want: `tunnel: unknown command "Server"; did you mean "server"?` + "\n"},
		{name: "flag first", args: []string{"-config", "x.yaml"}, want: "tunnel: unknown flag: --config\n"},
		{name: "help of nothing", args: []string{"help", "frobnicate"}, want: `tunnel help: unknown command "frobnicate"` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := "tunnel"
			if tt.args[0] == "help" {
				path = "tunnel help"
			}
			runTunnel("", tt.args...).requireExit(t, 2, tt.want+usageHint(path))
		})
	}
}

// TestFlagErrorOnce: a flag error is said once, with the command's usage
// hint, and exits 2 without starting anything.
func TestFlagErrorOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{args: []string{"server", "-listen", ":1"}, want: "unknown flag: --listen"},
		{args: []string{"client", "--bogus"}, want: "unknown flag: --bogus"},
		{args: []string{"server", "-config"}, want: "flag needs an argument: --config"},
		{args: []string{"demo", "-public"}, want: "flag needs an argument: --public"},
		{args: []string{"check-config", "-x"}, want: "unknown shorthand flag: 'x' in -x"},
		{args: []string{"hash-token", "--token"}, want: "unknown flag: --token"},
		{args: []string{"completion", "--shell", "bash"}, want: "unknown flag: --shell"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			path := "tunnel " + tt.args[0]
			runWithoutStdin(t, tt.args...).requireExit(t, 2, path+": "+tt.want+"\n"+usageHint(path))
		})
	}
}

// TestConfigFileAsArgument: server and client take their file as FILE or
// with --config (one dash or two). Each case fails on the file's content,
// so nothing listens.
func TestConfigFileAsArgument(t *testing.T) {
	t.Parallel()
	badServer := writeFile(t, "server.yaml", "clients:\n  - id: c1\n    token_sha256: nope\n")
	badClient := writeFile(t, "client.yaml", "id: c1\ntoken: tok\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	serverProblems := badServer + ":3: clients[0].token_sha256: want 64 hex digits (the SHA-256 of the token; see 'tunnel hash-token')\n"
	clientProblems := badClient + ":1: server: missing (the server's tunnel address, host:port)\n" +
		badClient + ":1: server_pin: set server_pin (sha256:..., logged by the server) or server_ca_file\n"
	tests := []struct {
		args []string
		code int
		want string
	}{
		{args: []string{"server", badServer}, code: 1, want: serverProblems},
		{args: []string{"server", "-config", badServer}, code: 1, want: serverProblems},
		{args: []string{"server", "--config", badServer}, code: 1, want: serverProblems},
		{args: []string{"server", "--config=" + badServer, badServer}, code: 1, want: serverProblems},
		{args: []string{"client", badClient}, code: 1, want: clientProblems},
		{args: []string{"client", "-config=" + badClient}, code: 1, want: clientProblems},
		{args: []string{"server", missing}, code: 1, want: "tunnel: open " + missing + ": no such file or directory\n"},
		{args: []string{"server"}, code: 2, want: "tunnel server: a file is required: give it as FILE or --config FILE\n" + usageHint("tunnel server")},
		{args: []string{"client", "-config", ""}, code: 2, want: "tunnel client: a file is required: give it as FILE or --config FILE\n" + usageHint("tunnel client")},
		{args: []string{"server", "-config", badServer, badClient}, code: 2, want: "tunnel server: two files given (" + badClient + " and --config " + badServer + "): give one\n" + usageHint("tunnel server")},
		{args: []string{"client", badClient, badServer}, code: 2, want: `tunnel client: too many arguments ["` + badClient + `" "` + badServer + `"]: give one file` + "\n" + usageHint("tunnel client")},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			runWithoutStdin(t, tt.args...).requireExit(t, tt.code, tt.want)
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
			for _, args := range [][]string{
				{"check-config", tt.kind, file},
				{"check-config", tt.kind, "--config", file},
				{"check-config", tt.kind, "-config=" + file},
			} {
				r := runTunnel("", args...)
				require.Equal(t, 0, r.code, "%v: stderr: %s", args, r.stderr)
				require.Equal(t, file+": ok ("+tt.summary+")\n", r.stdout)
				require.Empty(t, r.stderr)
			}
		})
	}
}

// TestCheckConfigGuessesTheKind: without server or client, check-config
// tells the kind from the file's settings and says which it assumed.
func TestCheckConfigGuessesTheKind(t *testing.T) {
	t.Parallel()
	server := writeFile(t, "s.yaml", validServer)
	client := writeFile(t, "c.yaml", validClient)
	badClient := writeFile(t, "bad.yaml", "id: c1\ntoken: tok\nserver: nowhere\nserver_pin: md5:abc\n")
	shared := writeFile(t, "shared.yaml", "log:\n  level: info\n")
	tie := writeFile(t, "tie.yaml", "id: c1\nrules: []\n")
	tests := []struct {
		args         []string
		code         int
		stdout       string
		stderr       string
		stderrPrefix bool
	}{
		{args: []string{"check-config", server}, stdout: server + ": ok (1 clients, 1 rules)\n", stderr: server + ": checking it as a server configuration (it sets listen, clients, rules)\n"},
		{args: []string{"check-config", "--config", client}, stdout: client + ": ok (client \"c1\", server 127.0.0.1:4443)\n", stderr: client + ": checking it as a client configuration (it sets id, token, server, server_pin)\n"},
		{args: []string{"check-config", badClient}, code: 1, stderr: badClient + ": checking it as a client configuration (it sets id, token, server, server_pin)\n" +
			badClient + `:3: server: "nowhere" is not host:port` + "\n" + badClient + `:4: server_pin: pin "md5:abc": want sha256:<base64>` + "\n"},
		{args: []string{"check-config", shared}, code: 2, stderr: "tunnel check-config: " + shared + ": cannot tell a server's configuration from a client's: it has no setting that only a server's configuration (clients, rules, public_http) or only a client's (id, server, server_pin) has; name the kind: tunnel check-config server|client FILE\n" + usageHint("tunnel check-config")},
		{args: []string{"check-config", tie}, code: 2, stderr: "tunnel check-config: " + tie + ": cannot tell a server's configuration from a client's: it has as many settings of a server's configuration (rules) as of a client's (id); name the kind: tunnel check-config server|client FILE\n" + usageHint("tunnel check-config")},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runWithoutStdin(t, tt.args...)
			require.Equal(t, tt.code, r.code, "stderr: %s", r.stderr)
			require.Equal(t, tt.stdout, r.stdout)
			require.Equal(t, tt.stderr, r.stderr)
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
				"1: id: unknown setting; it is a client setting, for the client's file",
				"2: token: unknown setting; it is a client setting, for the client's file",
				"3: server: unknown setting; it is a client setting, for the client's file",
				"4: server_pin: unknown setting; it is a client setting, for the client's file",
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
	hint := usageHint("tunnel check-config")
	const needFile = "tunnel check-config: a file is required: give it as FILE or --config FILE\n"
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{name: "no arguments", args: []string{"check-config"}, code: 2, want: needFile + hint},
		{name: "no file", args: []string{"check-config", "server"}, code: 2, want: needFile + hint},
		{name: "wrong kind", args: []string{"check-config", "proxy", "x.yaml"}, code: 2, want: "tunnel check-config: \"proxy\" is not a kind of configuration: want server or client\n" + hint},
		{name: "too many", args: []string{"check-config", "server", "a.yaml", "b.yaml"}, code: 2, want: "tunnel check-config: too many arguments [\"a.yaml\" \"b.yaml\"]: give one file\n" + hint},
		{name: "missing file", args: []string{"check-config", "server", missing}, code: 1, want: "tunnel: open " + missing + ": no such file or directory\n"},
		{name: "missing file, kind guessed", args: []string{"check-config", missing}, code: 1, want: "tunnel: open " + missing + ": no such file or directory\n"},
		{name: "empty file", args: []string{"check-config", "client", empty}, code: 1, want: empty + ": file is empty\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runTunnel("", tt.args...).requireExit(t, tt.code, tt.want)
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

// TestHashTokenFile: --token-file reads the token as a client reads its
// token_file, and standard input is not read.
func TestHashTokenFile(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "client.token", "  s3cret\n")
	for _, args := range [][]string{{"hash-token", "--token-file", file}, {"hash-token", "-token-file=" + file}} {
		r := runWithoutStdin(t, args...)
		require.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
		require.Equal(t, hexSHA256("s3cret")+"\n", r.stdout)
		require.Empty(t, r.stderr)
	}
	empty := writeFile(t, "empty.token", "\n")
	runWithoutStdin(t, "hash-token", "--token-file", empty).requireExit(t, 1, "tunnel: hash-token: "+empty+" holds no token\n")
	missing := filepath.Join(t.TempDir(), "missing")
	runWithoutStdin(t, "hash-token", "--token-file", missing).requireExit(t, 1, "tunnel: hash-token: open "+missing+": no such file or directory\n")
	runWithoutStdin(t, "hash-token", "tok").requireExit(t, 2, "tunnel hash-token: unexpected argument \"tok\": give the token on standard input or with --token-file\n"+usageHint("tunnel hash-token"))
}

func TestHashTokenErrors(t *testing.T) {
	t.Parallel()
	const want = "tunnel: hash-token: no token on standard input (pipe it in, or use --token-file FILE)\n"
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
			runTunnel(tt.stdin, "hash-token").requireExit(t, 1, want)
		})
	}

	t.Run("read error", func(t *testing.T) {
		t.Parallel()
		var out, errOut bytes.Buffer
		code := run([]string{"hash-token"}, iotest.ErrReader(iotest.ErrTimeout), &out, &errOut)
		require.Equal(t, 1, code)
		require.Equal(t, "tunnel: hash-token: "+iotest.ErrTimeout.Error()+"\n", errOut.String())
		require.Empty(t, out.String())
	})
}

// TestCompletion: each shell's script is printed, names the program and
// asks it for completions; the completions it gets name the commands and
// their flags.
func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		t.Run(shell, func(t *testing.T) {
			t.Parallel()
			r := runWithoutStdin(t, "completion", shell)
			require.Equal(t, 0, r.code, r.stderr)
			require.Empty(t, r.stderr)
			require.Greater(t, len(r.stdout), 1000)
			require.Contains(t, r.stdout, "tunnel")
			require.Contains(t, r.stdout, "__complete", "the script asks tunnel for the words")
		})
	}
	t.Run("commands", func(t *testing.T) {
		t.Parallel()
		r := runWithoutStdin(t, "__complete", "")
		require.Equal(t, 0, r.code, r.stderr)
		for c := range commandFlags {
			require.Regexp(t, `(?m)^`+regexp.QuoteMeta(c)+`\t`, r.stdout, "completes %s", c)
		}
		require.NotRegexp(t, `(?m)^bench\t`, r.stdout, "the harness is cmd/tunnel-bench")
	})
	t.Run("check-config kinds", func(t *testing.T) {
		t.Parallel()
		r := runWithoutStdin(t, "__complete", "check-config", "")
		require.Equal(t, 0, r.code, r.stderr)
		require.Regexp(t, `(?m)^server\t`, r.stdout)
		require.Regexp(t, `(?m)^client\t`, r.stdout)
	})
	t.Run("flags", func(t *testing.T) {
		t.Parallel()
		r := runWithoutStdin(t, "__complete", "demo", "--l")
		require.Equal(t, 0, r.code, r.stderr)
		require.Regexp(t, `(?m)^--log-level\t`, r.stdout)
	})
	t.Run("no shell", func(t *testing.T) {
		t.Parallel()
		hint := usageHint("tunnel completion")
		runTunnel("", "completion").requireExit(t, 2, "tunnel completion: name the shell: bash, zsh, fish or powershell\n"+hint)
		runTunnel("", "completion", "tcsh").requireExit(t, 2, "tunnel completion: \"tcsh\" is not a shell this can complete for: bash, zsh, fish or powershell\n"+hint)
	})
}

// TestBinaryLinksNoLoadGenerator: the gateway binary does not link the
// benchmark harness or its load generator (vegeta and the HdrHistogram and
// t-digest it records latencies in), directly or through any package it
// imports; the harness is a command of its own, cmd/tunnel-bench.
func TestBinaryLinksNoLoadGenerator(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("the go command is not on PATH, and this test asks it for the binary's imports: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	list := exec.CommandContext(ctx, "go", "list", "-deps", "..")
	list.Stderr = &stderr
	out, err := list.Output()
	require.NoError(t, err, "go list -deps ./cmd/tunnel: %s", stderr.String())
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/qtunnel/qtunnel/gateway", "go list -deps lists the binary's imports")
	forbidden := []string{"vegeta", "hdrhistogram", "tdigest", "github.com/qtunnel/qtunnel/bench"}
	var linked []string
	for _, p := range deps {
		if slices.ContainsFunc(forbidden, func(f string) bool { return strings.Contains(strings.ToLower(p), f) }) {
			linked = append(linked, p)
		}
	}
	require.Empty(t, linked, "cmd/tunnel links the load harness or its load generator, which belong to cmd/tunnel-bench only; "+
		"go list -deps -f '{{.ImportPath}}: {{.Imports}}' ./cmd/tunnel shows which import brings them")
}

// TestBuiltBinary builds the binary as make build does and runs it.
func TestBuiltBinary(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "tunnel")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/qtunnel/qtunnel/internal/version.Version=v9.8.7-test", "-o", bin, "..")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	t.Run("version is stamped", func(t *testing.T) {
		t.Parallel()
		out, err := exec.Command(bin, "version").Output()
		require.NoError(t, err)
		require.Equal(t, "tunnel v9.8.7-test ("+runtime.Version()+", "+runtime.GOOS+"/"+runtime.GOARCH+")\n", string(out))
	})

	t.Run("usage error exits 2", func(t *testing.T) {
		t.Parallel()
		err := exec.Command(bin, "server", "--listen", ":1").Run()
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit)
		require.Equal(t, 2, exit.ExitCode())
	})

	// The demo, stopped by Ctrl-C as a terminal sends it (SIGINT to the
	// process group), stops gracefully and exits 0, so that make demo
	// ends without an error.
	t.Run("demo stops gracefully on SIGINT", func(t *testing.T) {
		t.Parallel()
		cmd := exec.Command(bin, "demo",
			"-public", e2etest.FreeAddr(t, "tcp"), "-forward", e2etest.FreeAddr(t, "tcp"), "-tunnel", e2etest.FreeAddr(t, "udp"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		var stderr e2etest.SyncBuffer
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		var printed bytes.Buffer
		curls := make(chan int, 1)
		go func() {
			n := 0
			for sc := bufio.NewScanner(stdout); sc.Scan(); {
				printed.WriteString(sc.Text() + "\n")
				if strings.HasPrefix(strings.TrimSpace(sc.Text()), "curl ") {
					n++
				}
				if strings.HasPrefix(sc.Text(), "Press Ctrl-C") {
					curls <- n
				}
			}
			exited <- cmd.Wait()
		}()
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		select {
		case n := <-curls:
			require.Equal(t, 2, n, "one curl line per direction")
		case err := <-exited:
			t.Fatalf("demo exited before it was ready: %v\n%s", err, stderr.String())
		case <-time.After(60 * time.Second):
			t.Fatalf("demo not ready after 60s\n%s", stderr.String())
		}
		require.NoError(t, syscall.Kill(-cmd.Process.Pid, syscall.SIGINT))
		select {
		case err := <-exited:
			require.NoError(t, err, "exit status of the demo after SIGINT\nstderr: %s", stderr.String())
		case <-time.After(30 * time.Second):
			t.Fatalf("demo still running 30s after SIGINT\n%s", stderr.String())
		}
		require.Contains(t, printed.String(), "demo stopped\n")
		require.Equal(t, 0, cmd.ProcessState.ExitCode())
	})
}

// TestRunReportsErrors: how run turns each kind of error into a message
// and an exit code.
func TestRunReportsErrors(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	require.Equal(t, 1, report(newRootCmd(), errors.New("boom"), &buf))
	require.Equal(t, "tunnel: boom\n", buf.String())
}

// TestCheckConfigChecksRuleStages: check-config builds the stage lists of
// the rules the server runs, as a start would: an unknown stage, settings
// a stage refuses, or a stage list of the wrong shape exits 1 naming the
// rule and the entry; a good list passes. A module added with WithModules
// is known to it.
func TestCheckConfigChecksRuleStages(t *testing.T) {
	t.Parallel()
	withStages := func(list string) string { return validServer + "    stages: " + list + "\n" }
	for _, tt := range []struct{ name, stages, want string }{
		{"unknown", "[{ipfilters: {}}]", `rule "web": stages[0]: unknown stage "ipfilters" (known: [auth headers ipfilter])`},
		{"bad settings", "[{ipfilter: {allow: [10.0.0.0/33]}}]", `10.0.0.0/33`},
		{"unknown setting", "[{ipfilter: {alow: [10.0.0.0/8]}}]", `unknown setting "alow" (settings: allow, deny)`},
		{"two keys", "[{ipfilter: {}, auth: {}}]", `a map of one key`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := runTunnel("", "check-config", "server", writeFile(t, "s.yaml", withStages(tt.stages)))
			require.Equal(t, 1, r.code, "stdout: %s", r.stdout)
			require.Contains(t, r.stderr, tt.want)
			t.Logf("%s: %s", tt.name, strings.TrimSpace(r.stderr))
		})
	}
	r := runTunnel("", "check-config", "server", writeFile(t, "s.yaml", withStages("[{ipfilter: {allow: [10.0.0.0/8]}}]")))
	require.Equal(t, 0, r.code, r.stderr)

	custom := pipeline.Module{Name: "custom", New: func(func(any) error) (pipeline.Stage, error) { return pipelinetest.NoOp{}, nil }}
	var out, errOut bytes.Buffer
	code := run([]string{"check-config", "server", writeFile(t, "s.yaml", withStages("[custom]"))}, strings.NewReader(""), &out, &errOut, WithModules(custom))
	require.Equal(t, 0, code, errOut.String())
}
