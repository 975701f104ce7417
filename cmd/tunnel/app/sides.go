package app

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/cli"
)

const signalsHelp = `SIGINT or SIGTERM stops it gracefully: it stops accepting, lets requests in
flight finish within shutdown_grace (default 10s), tells its peer to drain,
and exits 0. A second signal exits at once with code 130.`

func newServerCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "server [--config] FILE",
		Short: "Run the server side: public listeners, rules, and the clients' tunnel",
		Long: `Run the server side of the tunnel with the configuration FILE (YAML; see
examples/server.yaml for every setting). The server owns the rules and keeps
each connected client in sync with its own. Without a certificate it makes a
self-signed one once, keeps it in its state directory (state_dir; default
$STATE_DIRECTORY, else "state" next to FILE) so that its pin survives
restarts, and logs its pin ("server started ... pin=sha256:..."): give that
pin to the clients as server_pin ('tunnel init' writes both files).

The file is watched: a change that validates is applied without a restart,
and SIGHUP reloads it too.

` + signalsHelp,
		Example: `  tunnel server server.yaml
  tunnel server --config /etc/qtunnel/server.yaml
  tunnel check-config server.yaml && tunnel server server.yaml`,
		ValidArgsFunction: yamlFile,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := cli.OneFile("config", file, args)
			if err != nil {
				return err
			}
			return runServer(cmd.Context(), path, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "configuration file (YAML); the same as giving it as FILE")
	_ = cmd.MarkFlagFilename("config", "yaml", "yml")
	return cmd
}

func newClientCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "client [--config] FILE",
		Short: "Run the client side: connect to the server and serve the rules it sends",
		Long: `Run the client side of the tunnel with the configuration FILE (YAML; see
examples/client.yaml for every setting). The client connects to the server,
checks its key (server_pin or server_ca_file), logs in with its token, and
serves the rules the server sends it. It reconnects after a loss with
exponential backoff. A refused token or a server key that does not match is
final: the client exits 1 and says why.

` + signalsHelp + ` SIGHUP is ignored: the
client's rules come from the server.`,
		Example: `  tunnel client client.yaml
  tunnel client --config /etc/qtunnel/client.yaml
  QTUNNEL_TOKEN=$(cat client.token) tunnel client client.yaml`,
		ValidArgsFunction: yamlFile,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := cli.OneFile("config", file, args)
			if err != nil {
				return err
			}
			return runClient(cmd.Context(), path, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "configuration file (YAML); the same as giving it as FILE")
	_ = cmd.MarkFlagFilename("config", "yaml", "yml")
	return cmd
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

// logger builds the side's logger and applies its runtime settings.
func logger(l config.Log, r config.Runtime, stderr io.Writer) (*slog.Logger, error) {
	log, err := gateway.NewLogger(l, stderr)
	if err != nil {
		return nil, err
	}
	gateway.ApplyRuntime(r, log)
	return log, nil
}

func runServer(ctx context.Context, path string, stderr io.Writer) error {
	cfg, err := config.LoadServer(path)
	if err != nil {
		return err
	}
	log, err := logger(cfg.Log, cfg.Runtime, stderr)
	if err != nil {
		return err
	}
	opts, flush, err := tracingOptions(cfg.Tracing, "qtunnel-server")
	if err != nil {
		return err
	}
	defer flush()
	srv, err := gateway.NewServer(*cfg, append(opts, gateway.WithLogger(log), gateway.WithConfigFile(path), gateway.WithModules(settingsOf(ctx).modules...))...)
	if err != nil {
		return err
	}
	ctx, stop := cli.ShutdownContext(ctx, log, forceExit)
	defer stop()
	// SIGHUP reloads clients and rules (the file is also watched).
	defer cli.OnHangup(func() {
		if err := srv.Reload(); err == nil {
			log.Info("configuration reloaded on SIGHUP", "file", path)
		}
	})()
	return srv.Run(ctx)
}

func runClient(ctx context.Context, path string, stderr io.Writer) error {
	cfg, err := config.LoadClient(path)
	if err != nil {
		return err
	}
	log, err := logger(cfg.Log, cfg.Runtime, stderr)
	if err != nil {
		return err
	}
	opts, flush, err := tracingOptions(cfg.Tracing, "qtunnel-client")
	if err != nil {
		return err
	}
	defer flush()
	cl, err := gateway.NewClient(*cfg, append(opts, gateway.WithLogger(log), gateway.WithConfigFile(path), gateway.WithModules(settingsOf(ctx).modules...))...)
	if err != nil {
		return err
	}
	ctx, stop := cli.ShutdownContext(ctx, log, forceExit)
	defer stop()
	// SIGHUP would otherwise end the process without a drain. The client's
	// rules come from the server, so there is nothing to reload: say so.
	defer cli.OnHangup(func() {
		log.Info("SIGHUP ignored: the client's rules come from the server; restart the client to change its own settings")
	})()
	return cl.Run(ctx)
}
