package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func TestExitCode(t *testing.T) {
	t.Parallel()
	require.Equal(t, ExitOK, ExitCode(nil))
	require.Equal(t, ExitFailure, ExitCode(errors.New("bind: address in use")))
	require.Equal(t, ExitUsage, ExitCode(Usagef("unknown flag: --%s", "x")))
	require.Equal(t, ExitUsage, ExitCode(fmt.Errorf("server: %w", Usage(errors.New("bad")))), "wrapped")
	require.NoError(t, Usage(nil))
	u := Usagef("once")
	require.Same(t, u, Usage(u), "a usage error is not wrapped twice")
	require.Equal(t, "once", u.Error())
}

func TestOneFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		flag    string
		args    []string
		want    string
		wantErr string
	}{
		{name: "positional", args: []string{"a.yaml"}, want: "a.yaml"},
		{name: "flag", flag: "a.yaml", want: "a.yaml"},
		{name: "both, the same", flag: "a.yaml", args: []string{"a.yaml"}, want: "a.yaml"},
		{name: "both, different", flag: "a.yaml", args: []string{"b.yaml"}, wantErr: "two files given (b.yaml and --config a.yaml): give one"},
		{name: "none", wantErr: "a file is required: give it as FILE or --config FILE"},
		{name: "two positional", args: []string{"a.yaml", "b.yaml"}, wantErr: `too many arguments ["a.yaml" "b.yaml"]: give one file`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := OneFile("config", tt.flag, tt.args)
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				require.Equal(t, ExitUsage, ExitCode(err))
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestOneDashLongFlags(t *testing.T) {
	t.Parallel()
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.String("config", "", "")
	fs.Int("runs", 0, "")
	fs.Bool("quick", false, "")
	tests := []struct {
		name string
		in   string
		want string
	}{
		{name: "one dash with a value", in: "server -config a.yaml", want: "server --config a.yaml"},
		{name: "one dash with =", in: "-config=a.yaml -runs=3", want: "--config=a.yaml --runs=3"},
		{name: "two dashes unchanged", in: "--config a.yaml --quick", want: "--config a.yaml --quick"},
		{name: "bool takes no value", in: "-quick a.yaml", want: "--quick a.yaml"},
		{name: "a value that looks like a flag", in: "-runs -1 -config -odd.yaml", want: "--runs -1 --config -odd.yaml"},
		{name: "two-dash flag's value kept", in: "--config -odd.yaml -quick", want: "--config -odd.yaml --quick"},
		{name: "one-letter flag", in: "-h", want: "-h"},
		{name: "help", in: "-help a", want: "--help a"},
		{name: "unknown long flag", in: "-listen :1", want: "--listen :1"},
		{name: "after --", in: "-quick -- -config x", want: "--quick -- -config x"},
		{name: "lone dash is an argument", in: "- -quick", want: "- --quick"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := strings.Fields(tt.in)
			got := OneDashLongFlags(in, fs.Lookup)
			require.Equal(t, strings.Fields(tt.want), got)
			require.Equal(t, strings.Fields(tt.in), in, "the input is not changed")
		})
	}
}

func TestGuessKind(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		data     string
		kind     Kind
		settings []string
		wantErr  string
	}{
		{name: "server", data: "listen: :4443\nclients: []\nrules: []\nlog:\n  level: info\n", kind: Server, settings: []string{"listen", "clients", "rules"}},
		{name: "public_http alone", data: "public_http: :80\n", kind: Server, settings: []string{"public_http"}},
		{name: "client", data: "id: c1\ntoken: t\nserver: host:4443\nlimits: {}\n", kind: Client, settings: []string{"id", "token", "server"}},
		{name: "nested keys do not count", data: "clients:\n  - id: a\n    server: x\n", kind: Server, settings: []string{"clients"}},
		{name: "the majority wins", data: "id: c1\nserver: h:1\nrules: []\n", kind: Client, settings: []string{"id", "server"}},
		{name: "shared settings only", data: "log:\n  level: info\nlimits: {}\n", wantErr: "it has no setting that only a server's configuration (clients, rules, public_http) or only a client's (id, server, server_pin) has"},
		{name: "a tie", data: "id: c1\nrules: []\n", wantErr: "it has as many settings of a server's configuration (rules) as of a client's (id)"},
		{name: "empty", data: "", wantErr: "not a YAML mapping of settings"},
		{name: "a list", data: "- a\n", wantErr: "not a YAML mapping of settings"},
		{name: "not YAML", data: "a: [\n", wantErr: "not YAML: yaml: line 1: did not find expected node content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			kind, settings, err := GuessKind([]byte(tt.data))
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.kind, kind)
			require.Equal(t, tt.settings, settings)
		})
	}
}

// TestGuessKindKnowsTheSchema checks the settings read from the config
// types: the ones the command's help names, and none shared by both sides.
func TestGuessKindKnowsTheSchema(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"clients", "rules", "public_http", "public_https", "listen", "tls"} {
		require.True(t, serverOnly[k], k)
	}
	for _, k := range []string{"id", "server", "server_pin", "token", "token_file"} {
		require.True(t, clientOnly[k], k)
	}
	for _, k := range []string{"log", "limits", "admin", "quic"} {
		require.False(t, serverOnly[k] || clientOnly[k], k)
	}
}

func TestParseKind(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"server", "client"} {
		k, ok := ParseKind(s)
		require.True(t, ok)
		require.Equal(t, Kind(s), k)
	}
	for _, s := range []string{"", "Server", "proxy", "server.yaml"} {
		_, ok := ParseKind(s)
		require.False(t, ok, s)
	}
}

func TestReadTokenLine(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"tok\n": "tok", "tok": "tok", "  s3cret token \r\n": "s3cret token", "first\nsecond\n": "first"} {
		got, err := ReadTokenLine(strings.NewReader(in))
		require.NoError(t, err, "%q", in)
		require.Equal(t, want, got, "%q", in)
	}
	for _, in := range []string{"", "\n", "  \t\n"} {
		_, err := ReadTokenLine(strings.NewReader(in))
		require.ErrorIs(t, err, ErrNoToken, "%q", in)
	}
	_, err := ReadTokenLine(iotest.ErrReader(iotest.ErrTimeout))
	require.ErrorIs(t, err, iotest.ErrTimeout)
}

func TestReadTokenFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	got, err := ReadTokenFile(write("t", "  tok\n"))
	require.NoError(t, err)
	require.Equal(t, "tok", got)
	// The whole file, as the client's token_file: two lines are one token.
	got, err = ReadTokenFile(write("two", "a\nb\n"))
	require.NoError(t, err)
	require.Equal(t, "a\nb", got)
	empty := write("empty", " \n")
	_, err = ReadTokenFile(empty)
	require.EqualError(t, err, empty+" holds no token")
	_, err = ReadTokenFile(filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestShutdownContext sends the process real signals; the handler is
// installed first, so they do not end the test binary. Not parallel: the
// signals reach every handler of the process.
func TestShutdownContext(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	t.Run("first signal cancels, second forces", func(t *testing.T) {
		forced := make(chan struct{})
		ctx, stop := ShutdownContext(context.Background(), log, func() { close(forced) })
		defer stop()
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGINT))
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("SIGINT did not cancel the context")
		}
		select {
		case <-forced:
			t.Fatal("one signal forced the exit")
		default:
		}
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
		select {
		case <-forced:
		case <-time.After(10 * time.Second):
			t.Fatal("a second signal did not force the exit")
		}
	})

	t.Run("stop without a signal", func(t *testing.T) {
		ctx, stop := ShutdownContext(context.Background(), log, func() { t.Error("forced without a signal") })
		stop()
		<-ctx.Done()
	})

	t.Run("the parent's cancel", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		ctx, stop := ShutdownContext(parent, log, func() { t.Error("forced without a signal") })
		defer stop()
		cancel()
		<-ctx.Done()
	})
}

func TestOnHangup(t *testing.T) {
	called := make(chan struct{}, 1)
	stop := OnHangup(func() { called <- struct{}{} })
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("SIGHUP did not call fn")
	}
	stop()
}
