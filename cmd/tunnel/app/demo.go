package app

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/demo"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/cli"
)

func newDemoCmd() *cobra.Command {
	var o demo.Options
	var level string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a server, a client and two sample upstreams on loopback",
		Long: `Run a whole tunnel on this machine: a server, a client and two sample
upstreams, one near each side, on loopback addresses. It prints a curl
command for each direction (reverse: the server's public listener to the
upstream near the client; forward: the client's listener to the upstream near
the server).

Ctrl-C (SIGINT) or SIGTERM stops it gracefully and exits 0; a second one
exits at once with code 130.`,
		Example: `  tunnel demo
  tunnel demo --public 127.0.0.1:8080 --forward 127.0.0.1:9000
  tunnel demo --log-level debug`,
		Args:              noArgs(""),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, _ []string) error {
			stdout := cmd.OutOrStdout()
			log, err := gateway.NewLogger(config.Log{Level: level, Format: "text"}, cmd.ErrOrStderr())
			if err != nil {
				return cli.Usage(fmt.Errorf("--log-level: %w", err))
			}
			o.Logger = log
			ctx, stop := cli.ShutdownContext(cmd.Context(), log, forceExit)
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
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Public, "public", "127.0.0.1:18080", "server's public HTTP listener")
	f.StringVar(&o.Forward, "forward", "127.0.0.1:19090", "client's forward listener")
	f.StringVar(&o.Tunnel, "tunnel", "127.0.0.1:14443", "server's QUIC listener (UDP)")
	f.StringVar(&level, "log-level", "warn", "log level: debug, info, warn, error")
	_ = cmd.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}
