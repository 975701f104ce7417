// Command tunnel is the qtunnel gateway: one binary for both sides of the
// tunnel, the demo, and configuration checks.
//
//	tunnel server -config server.yaml
//	tunnel client -config client.yaml
//	tunnel demo
//	tunnel check-config server|client FILE
//	tunnel hash-token < token
//	tunnel bench [-quick] [-scenario NAME,...]
//
// With QTUNNEL_PROFILE=PREFIX in its environment, the process writes a CPU
// profile to PREFIX.cpu.pprof and an allocation profile to
// PREFIX.allocs.pprof when it exits (the bench harness's -profile flag).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qtunnel/qtunnel/bench"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/demo"
	"github.com/qtunnel/qtunnel/gateway"
)

const usage = `usage: tunnel <command> [flags]

commands:
  server -config FILE        run the server side
  client -config FILE        run the client side
  demo                       run server, client and sample upstreams on loopback
  check-config server|client FILE
                             check a configuration file; report each problem with its line
  hash-token                 read a client token on stdin, print its token_sha256
  bench [flags]              run the benchmark harness (tunnel vs direct); -h for flags
`

func main() {
	stop := startProfile(os.Getenv("QTUNNEL_PROFILE"))
	code := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
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

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	var err error
	switch cmd {
	case "server":
		err = runServer(args, stderr)
	case "client":
		err = runClient(args, stderr)
	case "demo":
		err = runDemo(args, stdout, stderr)
	case "check-config":
		err = checkConfig(args, stdout)
	case "hash-token":
		err = hashToken(stdin, stdout)
	case "bench":
		err = runBench(args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "tunnel: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0 // the flag set printed its usage
	}
	if err != nil {
		var ps config.Problems
		if errors.As(err, &ps) {
			fmt.Fprintln(stderr, ps.Error())
		} else {
			fmt.Fprintln(stderr, "tunnel:", err)
		}
		return 1
	}
	return 0
}

// shutdownContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits the process at once.
func shutdownContext(log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sigs:
			log.Info("signal received; shutting down (signal again to force)", "signal", s.String())
			cancel()
		case <-ctx.Done():
			return
		}
		if _, ok := <-sigs; ok {
			log.Error("second signal: forced exit")
			os.Exit(130)
		}
	}()
	return ctx, func() { signal.Stop(sigs); cancel(); close(sigs) }
}

// onHangup calls fn on each SIGHUP, one call at a time, until the returned
// stop is called; stop waits for a call in progress to end.
func onHangup(fn func()) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-hup:
				fn()
			case <-done:
				return
			}
		}
	})
	return func() { signal.Stop(hup); close(done); wg.Wait() }
}

// tracingOptions builds the tracer provider the configuration asks for;
// flush sends what is batched, with a deadline, on exit.
func tracingOptions(cfg config.Tracing, service string) ([]gateway.Option, func(), error) {
	tp, err := gateway.NewTracerProvider(context.Background(), cfg, service)
	if err != nil || tp == nil {
		return nil, func() {}, err
	}
	flush := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx)
	}
	return []gateway.Option{gateway.WithTracerProvider(tp)}, flush, nil
}

func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if *path == "" {
		return "", fmt.Errorf("%s: -config FILE is required", name)
	}
	return *path, nil
}

func runServer(args []string, stderr io.Writer) error {
	path, err := configFlag("server", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := config.LoadServer(path)
	if err != nil {
		return err
	}
	log, err := gateway.NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	gateway.ApplyRuntime(cfg.Runtime, log)
	opts, flush, err := tracingOptions(cfg.Tracing, "qtunnel-server")
	if err != nil {
		return err
	}
	defer flush()
	srv, err := gateway.NewServer(*cfg, append(opts, gateway.WithLogger(log), gateway.WithConfigFile(path))...)
	if err != nil {
		return err
	}
	ctx, stop := shutdownContext(log)
	defer stop()
	// SIGHUP reloads clients and rules (the file is also watched).
	defer onHangup(func() {
		if err := srv.Reload(); err == nil {
			log.Info("configuration reloaded on SIGHUP", "file", path)
		}
	})()
	return srv.Run(ctx)
}

func runClient(args []string, stderr io.Writer) error {
	path, err := configFlag("client", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := config.LoadClient(path)
	if err != nil {
		return err
	}
	log, err := gateway.NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	gateway.ApplyRuntime(cfg.Runtime, log)
	opts, flush, err := tracingOptions(cfg.Tracing, "qtunnel-client")
	if err != nil {
		return err
	}
	defer flush()
	cl, err := gateway.NewClient(*cfg, append(opts, gateway.WithLogger(log))...)
	if err != nil {
		return err
	}
	ctx, stop := shutdownContext(log)
	defer stop()
	// SIGHUP would otherwise end the process without a drain. The client's
	// rules come from the server, so there is nothing to reload: say so.
	defer onHangup(func() {
		log.Info("SIGHUP ignored: the client's rules come from the server; restart the client to change its own settings")
	})()
	return cl.Run(ctx)
}

func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o demo.Options
	fs.StringVar(&o.Public, "public", "127.0.0.1:18080", "server's public HTTP listener")
	fs.StringVar(&o.Forward, "forward", "127.0.0.1:19090", "client's forward listener")
	fs.StringVar(&o.Tunnel, "tunnel", "127.0.0.1:14443", "server's QUIC listener")
	level := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := gateway.NewLogger(config.Log{Level: *level, Format: "text"}, stderr)
	if err != nil {
		return err
	}
	o.Logger = log
	ctx, stop := shutdownContext(log)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	d, err := demo.Start(startCtx, o)
	cancel()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprint(stdout, d.Instructions())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = d.Stop(sctx)
	fmt.Fprintln(stdout, "demo stopped")
	return err
}

func checkConfig(args []string, stdout io.Writer) error {
	if len(args) != 2 || (args[0] != "server" && args[0] != "client") {
		return errors.New("usage: tunnel check-config server|client FILE")
	}
	path := args[1]
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var summary string
	if args[0] == "server" {
		var c *config.Server
		if c, err = config.ParseServer(path, data); err == nil {
			err = config.CheckFiles(path, data, c)
			summary = fmt.Sprintf("%d clients, %d rules", len(c.Clients), len(c.Rules))
		}
	} else {
		var c *config.Client
		if c, err = config.ParseClient(path, data); err == nil {
			err = config.CheckClientFiles(path, data, c)
			summary = fmt.Sprintf("client %q, server %s", c.ID, c.Server)
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (%s)\n", args[1], summary)
	return nil
}

func hashToken(stdin io.Reader, stdout io.Writer) error {
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	token := strings.TrimSpace(line)
	if token == "" {
		return errors.New("hash-token: give the token on stdin")
	}
	fmt.Fprintln(stdout, control.HashToken(token).String())
	return nil
}

func runBench(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "spot check: 1s runs, one run each, 128 MiB bulk (under a minute)")
	o := bench.Options{}
	fs.DurationVar(&o.Duration, "duration", 0, "length of each load run (default 5s)")
	fs.IntVar(&o.Runs, "runs", 0, "runs per measurement; the median is reported (default 3)")
	bulk := fs.String("bulk", "", "bulk transfer size, such as 1GiB (default 1GiB)")
	fs.IntVar(&o.IdleConns, "idle", 0, "idle keep-alive connections to hold (default 1000)")
	scenarios := fs.String("scenario", "", "comma-separated scenarios to run (default all): "+strings.Join(bench.ScenarioNames, ","))
	out := fs.String("out", "bench/results", "directory for results.json and chart.svg")
	fs.StringVar(&o.ProfileDir, "profile", "", "directory for CPU and allocation profiles of server and client")
	fs.StringVar(&o.Binary, "binary", "", "tunnel binary to run as server and client (default: this one)")
	tunnelEnv := fs.String("tunnel-env", "", "comma-separated VAR=value pairs for the server and client, such as GOGC=200")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *quick {
		q := bench.Quick()
		if o.Duration == 0 {
			o.Duration = q.Duration
		}
		if o.Runs == 0 {
			o.Runs = q.Runs
		}
		if *bulk == "" {
			o.BulkSize = q.BulkSize
		}
		if o.IdleConns == 0 {
			o.IdleConns = q.IdleConns
		}
	}
	if *bulk != "" {
		size, err := config.ParseSize(*bulk)
		if err != nil {
			return fmt.Errorf("-bulk: %w", err)
		}
		o.BulkSize = int64(size)
	}
	if *scenarios != "" {
		o.Scenarios = strings.Split(*scenarios, ",")
	}
	if *tunnelEnv != "" {
		o.TunnelEnv = strings.Split(*tunnelEnv, ",")
	}
	for _, dir := range []string{*out, o.ProfileDir} {
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
	}
	o.Progress = stderr
	o.LogDir = *out
	ctx, stop := shutdownContext(slog.New(slog.NewTextHandler(stderr, nil)))
	defer stop()
	rep, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	rep.Command = "tunnel bench " + strings.Join(args, " ")
	fmt.Fprintln(stdout)
	rep.WriteTable(stdout)
	if *out == "" {
		return nil
	}
	for name, write := range map[string]func(io.Writer) error{"results.json": rep.WriteJSON, "chart.svg": rep.WriteSVG} {
		f, err := os.Create(filepath.Join(*out, name))
		if err != nil {
			return err
		}
		err = write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "\nwrote %s and %s\n", filepath.Join(*out, "results.json"), filepath.Join(*out, "chart.svg"))
	return nil
}
