// Command tunnel is the qtunnel gateway: one binary for both sides of the
// tunnel, the demo, and configuration checks.
//
//	tunnel server -config server.yaml
//	tunnel client -config client.yaml
//	tunnel demo
//	tunnel check-config server|client FILE
//	tunnel hash-token < token
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
	"strings"
	"syscall"
	"time"

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
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
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
	srv, err := gateway.NewServer(*cfg, gateway.WithLogger(log))
	if err != nil {
		return err
	}
	ctx, stop := shutdownContext(log)
	defer stop()
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
	cl, err := gateway.NewClient(*cfg, gateway.WithLogger(log))
	if err != nil {
		return err
	}
	ctx, stop := shutdownContext(log)
	defer stop()
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
