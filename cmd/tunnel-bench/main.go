// Command tunnel-bench is the load harness of BENCHMARKS.md, package bench
// behind a command line: it runs each scenario against the tunnel (server
// and client as processes of the tunnel binary), directly against the
// upstream, and over raw quic-go, and reports the medians.
//
//	tunnel-bench [--quick] [--runs N] [--scenario NAME,...] [--out DIR] ...
//
// It is a command of its own rather than a command of cmd/tunnel so that
// the gateway binary links no load generator (vegeta, HdrHistogram);
// cmd/tunnel's TestBinaryLinksNoLoadGenerator keeps it so. Without
// --binary it builds cmd/tunnel with go build, so run it in the repository
// (make bench, make bench-quick, go run ./cmd/tunnel-bench).
//
// Flags take one dash or two. Exit codes, as tunnel's: 0 success, 1
// failure, 2 usage error, 130 a second SIGINT or SIGTERM forced the exit.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qtunnel/qtunnel/bench"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/cli"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run runs the command line args and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := newCmd()
	cmd.SetIn(strings.NewReader(""))
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if len(args) == 0 || (args[0] != cobra.ShellCompRequestCmd && args[0] != cobra.ShellCompNoDescRequestCmd) {
		args = cli.OneDashLongFlags(args, cmd.Flags().Lookup)
	}
	cmd.SetArgs(args)
	err := cmd.Execute()
	var usage *cli.UsageError
	switch {
	case err == nil:
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "tunnel-bench: %v\nRun 'tunnel-bench --help' for usage.\n", err)
	default:
		fmt.Fprintln(stderr, "tunnel-bench:", err)
	}
	return cli.ExitCode(err)
}

func newCmd() *cobra.Command {
	var (
		o                           bench.Options
		quick                       bool
		bulk, scenarios, out, tEnvs string
		clients                     []int
	)
	cmd := &cobra.Command{
		Use:   "tunnel-bench",
		Short: "Run the benchmark harness: the tunnel beside direct connections",
		Long: `Run the load harness (BENCHMARKS.md): each scenario against the tunnel
(server and client as processes of the tunnel binary), directly against the
upstream, and over raw quic-go, reporting the medians. It writes
results.json and chart.svg to --out, and the processes' logs beside them.
The full run takes about 8 minutes; --quick is a spot check under a minute.

--clients N,... runs the scale harness instead: for each N, one server
process with N clients of one rule each, the clients in this process, all
started at once; it reports the time until all have their rules, the
server's memory per client and idle CPU per 1000 clients, and how long one
rule's change takes to reach its client and how many updates it sent. It
writes scale.json to --out.

Without --binary it builds the tunnel binary (go build ./cmd/tunnel), so
run it in the repository; with --profile that binary is kept in the
profile directory, for go tool pprof.

Flags take one dash or two. Exit codes: 0 success, 1 failure, 2 usage
error, 130 a second SIGINT or SIGTERM forced the exit.`,
		Example: `  tunnel-bench --quick
  tunnel-bench --runs 3 --out bench/results
  tunnel-bench --scenario h1-c64 --runs 5 --profile /tmp/prof
  tunnel-bench --tunnel-env GOMAXPROCS=1
  tunnel-bench --clients 1000,5000,10000
  go run ./cmd/tunnel-bench -quick -out bench/out`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unexpected argument %q", args[0])
			}
			return nil
		},
		ValidArgsFunction: cobra.NoFileCompletions,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if quick {
				q := bench.Quick()
				if o.Duration == 0 {
					o.Duration = q.Duration
				}
				if o.Runs == 0 {
					o.Runs = q.Runs
				}
				if bulk == "" {
					o.BulkSize = q.BulkSize
				}
				if o.IdleConns == 0 {
					o.IdleConns = q.IdleConns
				}
			}
			if bulk != "" {
				size, err := config.ParseSize(bulk)
				if err != nil {
					return cli.Usagef("--bulk: %v", err)
				}
				o.BulkSize = int64(size)
			}
			if scenarios != "" {
				o.Scenarios = strings.Split(scenarios, ",")
			}
			if tEnvs != "" {
				o.TunnelEnv = strings.Split(tEnvs, ",")
			}
			if len(clients) > 0 {
				return runScale(cmd, bench.ScaleOptions{Binary: o.Binary, Clients: clients}, out)
			}
			return runBench(cmd, o, out)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Usage(err) })
	f := cmd.Flags()
	f.BoolVar(&quick, "quick", false, "spot check: 1s runs, one run each, 128 MiB bulk (under a minute)")
	f.DurationVar(&o.Duration, "duration", 0, "length of each load run (default 5s)")
	f.IntVar(&o.Runs, "runs", 0, "runs per measurement; the median is reported (default 3)")
	f.StringVar(&bulk, "bulk", "", "bulk transfer size, such as 1GiB (default 1GiB)")
	f.IntVar(&o.IdleConns, "idle", 0, "idle keep-alive connections to hold (default 1000)")
	f.StringVar(&scenarios, "scenario", "", "comma-separated scenarios to run (default all): "+strings.Join(bench.ScenarioNames, ","))
	f.StringVar(&out, "out", "bench/results", "directory for results.json and chart.svg")
	f.StringVar(&o.ProfileDir, "profile", "", "directory for CPU and allocation profiles of server and client")
	f.StringVar(&o.Binary, "binary", "", "tunnel binary to run as server and client (default: go build ./cmd/tunnel)")
	f.IntSliceVar(&clients, "clients", nil, "run the scale harness with these numbers of clients, such as 1000,5000,10000")
	f.StringVar(&tEnvs, "tunnel-env", "", "comma-separated VAR=value pairs for the server and client, such as GOGC=200")
	_ = cmd.RegisterFlagCompletionFunc("scenario", cobra.FixedCompletions(bench.ScenarioNames, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.MarkFlagDirname("out")
	_ = cmd.MarkFlagDirname("profile")
	_ = cmd.MarkFlagFilename("binary")
	return cmd
}

// runBench runs the harness and writes its report to stdout and out.
func runBench(cmd *cobra.Command, o bench.Options, out string) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	for _, dir := range []string{out, o.ProfileDir} {
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
	}
	o.Progress = stderr
	o.LogDir = out
	ctx, stop := cli.ShutdownContext(cmd.Context(), slog.New(slog.NewTextHandler(stderr, nil)), forceExit)
	defer stop()
	rep, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	rep.Command = commandLine(cmd.Flags())
	fmt.Fprintln(stdout)
	rep.WriteTable(stdout)
	if out == "" {
		return nil
	}
	jsonPath, svgPath, err := rep.Save(out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s and %s\n", jsonPath, svgPath)
	return nil
}

// runScale runs the scale harness and writes its rows to stdout and
// out/scale.json.
func runScale(cmd *cobra.Command, o bench.ScaleOptions, out string) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	for _, n := range o.Clients {
		if n <= 0 {
			return cli.Usagef("--clients: %d is not a number of clients", n)
		}
	}
	ctx, stop := cli.ShutdownContext(cmd.Context(), slog.New(slog.NewTextHandler(stderr, nil)), forceExit)
	defer stop()
	if o.Binary == "" {
		dir, err := os.MkdirTemp("", "qtunnel-scale-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if o.Binary, err = bench.BuildTunnel(ctx, dir); err != nil {
			return err
		}
	}
	o.Progress = stderr
	rows, err := bench.Scale(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "| clients | all connected | gave up | server RSS | per client | idle CPU per 1000 clients | idle packets/s per client | one change applied | updates sent |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(stdout, "| %d | %.1f s | %d | %d MiB | %.0f KiB | %.2f%% of a core | %.2f | %.0f ms | %.0f |\n",
			r.Clients, r.ConnectSeconds, r.GaveUp, r.ServerRSS>>20, r.PerClient/1024, r.IdleCPUPer1000, r.IdlePacketsPerClient, r.ChangeMillis, r.UpdatesSent)
	}
	if out == "" {
		return nil
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(struct {
		Command string           `json:"command"`
		Rows    []bench.ScaleRow `json:"rows"`
	}{commandLine(cmd.Flags()), rows}, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(out, "scale.json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", path)
	return nil
}

// commandLine is the command that produced a report, for its
// results.json: "tunnel-bench -out bench/results -runs 3" (the flags set,
// by name).
func commandLine(fs *pflag.FlagSet) string {
	line := "tunnel-bench"
	fs.Visit(func(f *pflag.Flag) {
		switch {
		case f.Value.Type() == "bool" && f.Value.String() == "true":
			line += " -" + f.Name
		case f.Value.Type() == "bool":
			line += " -" + f.Name + "=false"
		default:
			line += " -" + f.Name + " " + f.Value.String()
		}
	})
	return line
}

// forceExit ends the process when a second signal arrives during a
// graceful stop.
func forceExit() { os.Exit(cli.ExitForced) }
