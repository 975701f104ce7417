// Package app is the tunnel command: every subcommand of the qtunnel
// gateway binary (server, client, demo, init, check-config, hash-token,
// version, completion), callable from a main of your own. cmd/tunnel is
//
//	func main() { os.Exit(app.Main(os.Args[1:])) }
//
// and a gateway of your own, with stages you wrote that rules name in
// their stage lists, is the same main with app.WithModules:
//
//	func main() { os.Exit(app.Main(os.Args[1:], app.WithModules(mystage.Module))) }
//
// Flags take one dash or two. Exit codes: 0 success (a graceful stop on
// SIGINT or SIGTERM included), 1 failure, 2 usage error, 130 a second
// signal forced the exit; 'tunnel help' says more.
//
// With QTUNNEL_PROFILE=PREFIX in its environment, the process writes a CPU
// profile to PREFIX.cpu.pprof and an allocation profile to
// PREFIX.allocs.pprof when it exits (the -profile flag of tunnel-bench).
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/cli"
	"github.com/qtunnel/qtunnel/internal/version"
	"github.com/qtunnel/qtunnel/pipeline"
)

// commands builds tunnel's commands, one constructor each; help lists them
// sorted by name.
//
// To add a command, write a constructor `newXxxCmd() *cobra.Command` in a
// file of its own in this package and add it to this list; nothing else
// changes. The command gets -h/--help, 'tunnel help xxx', shell completion,
// one-dash long flags and the exit codes from the root. Its constructor
// sets Use, Short, Long, Example (TestHelpOfEveryCommand requires one; list
// the command and its flags in commandFlags of main_test.go) and RunE. RunE
// reads and writes through cmd.InOrStdin, cmd.OutOrStdout and
// cmd.ErrOrStderr (never os.Stdin and friends, so that tests can run it),
// and returns cli.Usagef(...) for a mistake in the command line (exit 2)
// or any other error for a failure (exit 1; the error is printed once by
// run, prefixed "tunnel: ").
var commands = []func() *cobra.Command{
	newInitCmd,
	newServerCmd,
	newClientCmd,
	newExposeCmd,
	newLoginCmd,
	newDemoCmd,
	newCheckConfigCmd,
	newHashTokenCmd,
	newVersionCmd,
	newCompletionCmd,
}

const rootLong = `tunnel runs either side of a qtunnel, a bidirectional QUIC tunnel gateway
that carries HTTP/1.1, HTTP/2, gRPC, WebSocket and TCP between a server and
its clients, and the tools around it: a demo on loopback, a one-command
'expose' of a local port, a configuration checker and a token hasher.

Flags take one dash or two: -config FILE is --config FILE.

Exit codes:
  0    success, including a server, client or demo that SIGINT or SIGTERM
       stopped gracefully
  1    failure while running: a configuration with problems, a file that
       cannot be read, an address that cannot be bound, a client whose
       token or server pin was refused
  2    usage error: an unknown command or flag, a missing or extra argument
  130  a second SIGINT or SIGTERM during a graceful stop: exit at once

Shell completion, for this shell (see 'tunnel help completion' for the
others and for loading it in every new shell):
  source <(tunnel completion bash)`

const rootExample = `  tunnel demo
  tunnel check-config examples/server.yaml
  tunnel server server.yaml
  tunnel client --config client.yaml
  tunnel expose http 3000 --config client.yaml
  tunnel help server`

// errNoCommand is the usage error of a bare 'tunnel'.
var errNoCommand = cli.Usagef("a command is required")

// Option changes what Main runs.
type Option func(*settings)

// settings are Main's options; the commands read them from their context.
type settings struct {
	modules []pipeline.Module
}

// WithModules adds stage modules that rules may name in their stage lists
// (rules.Rule.Stages), beside the ones the gateway ships: the server and
// client commands run them, and check-config checks the lists with them.
func WithModules(ms ...pipeline.Module) Option {
	return func(s *settings) { s.modules = append(s.modules, ms...) }
}

type settingsKey struct{}

// settingsOf returns the settings Main was given, from a command's context.
func settingsOf(ctx context.Context) *settings {
	if s, ok := ctx.Value(settingsKey{}).(*settings); ok {
		return s
	}
	return &settings{}
}

// Main runs the command line args (without the program name) with the
// process's standard streams and returns the exit code, for os.Exit.
func Main(args []string, opts ...Option) int {
	stop := startProfile(os.Getenv("QTUNNEL_PROFILE"))
	code := run(args, os.Stdin, os.Stdout, os.Stderr, opts...)
	stop()
	return code
}

// startProfile starts a CPU profile written to prefix.cpu.pprof; the
// function it returns stops it and writes prefix.allocs.pprof.
func startProfile(prefix string) func() {
	if prefix == "" {
		return func() {}
	}
	cpu, err := os.Create(prefix + ".cpu.pprof")
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		cpu.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		cpu.Close()
		if f, err := os.Create(prefix + ".allocs.pprof"); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
}

// run runs the command line args and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, opts ...Option) int {
	var s settings
	for _, o := range opts {
		o(&s)
	}
	root := newRootCmd()
	root.SetContext(context.WithValue(context.Background(), settingsKey{}, &s))
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(oneDashLongFlags(root, args))
	cmd, err := root.ExecuteC()
	return report(cmd, err, stderr)
}

// report writes what went wrong, once, and returns the exit code.
func report(cmd *cobra.Command, err error, stderr io.Writer) int {
	var ps config.Problems
	var usage *cli.UsageError
	switch {
	case err == nil:
	case errors.Is(err, errNoCommand):
		fmt.Fprintf(stderr, "%s: %v\n\n%s", cmd.CommandPath(), err, cmd.UsageString())
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", cmd.CommandPath(), err, cmd.CommandPath())
	case errors.As(err, &ps):
		fmt.Fprintln(stderr, ps.Error())
	default:
		fmt.Fprintln(stderr, "tunnel:", err)
	}
	return cli.ExitCode(err)
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:     "tunnel",
		Short:   "qtunnel: a bidirectional QUIC tunnel gateway",
		Long:    rootLong,
		Example: rootExample,
		Version: version.String(),
		// Any word that is not a command reaches RunE, which says so as
		// a usage error.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errNoCommand
			}
			return unknownCommand(cmd, args[0])
		},
		ValidArgsFunction: cobra.NoFileCompletions,
		// run reports errors, once; a usage error gets a hint, not the
		// whole usage.
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
		CompletionOptions:          cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetVersionTemplate(version.Line("tunnel") + "\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Usage(err) })
	root.SetHelpCommand(newHelpCmd())
	for _, newCmd := range commands {
		root.AddCommand(newCmd())
	}
	return root
}

// unknownCommand is the usage error for a word that names no command,
// with the nearest command's name when one is near.
func unknownCommand(root *cobra.Command, name string) error {
	if s := root.SuggestionsFor(name); len(s) > 0 {
		return cli.Usagef("unknown command %q; did you mean %q?", name, s[0])
	}
	return cli.Usagef("unknown command %q", name)
}

// oneDashLongFlags lets the command line use Go-style flags (-config FILE)
// beside POSIX-style ones (--config FILE); the scripts and docs of this
// project were written for Go's flag package. Completion requests
// (tunnel __complete ...) are left alone: what they complete is the word
// as typed.
func oneDashLongFlags(root *cobra.Command, args []string) []string {
	if len(args) > 0 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd) {
		return args
	}
	cmd, _, err := root.Find(args)
	if err != nil {
		cmd = root
	}
	return cli.OneDashLongFlags(args, func(name string) *pflag.Flag {
		if f := cmd.Flags().Lookup(name); f != nil {
			return f
		}
		return cmd.InheritedFlags().Lookup(name)
	})
}

// noArgs accepts no positional argument; why says what to do instead.
func noArgs(why string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return cli.Usagef("unexpected argument %q%s", args[0], why)
		}
		return nil
	}
}

// yamlFile completes a command's one positional FILE with YAML files.
func yamlFile(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return []string{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt
}

// forceExit ends the process when a second signal arrives during a
// graceful stop.
func forceExit() { os.Exit(cli.ExitForced) }

func newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "Show the help of tunnel or of one of its commands",
		Long: `Show the help of a command: what it does, its arguments, every flag, and
examples. Without a command, the help of tunnel: its commands and exit codes.
'tunnel COMMAND -h' and 'tunnel COMMAND --help' show the same.`,
		Example: `  tunnel help
  tunnel help server
  tunnel server --help`,
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []string
			for _, c := range cmd.Root().Commands() {
				if c.IsAvailableCommand() {
					names = append(names, c.Name()+"\t"+c.Short)
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			target, rest, err := root.Find(args)
			switch {
			case len(args) == 0:
				target = root
			case err != nil || target == root || len(rest) > 0:
				return cli.Usagef("unknown command %q", strings.Join(args, " "))
			}
			target.InitDefaultHelpFlag()
			target.InitDefaultVersionFlag()
			return target.Help()
		},
	}
}
