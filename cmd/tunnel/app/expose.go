package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/cli"
	"github.com/qtunnel/qtunnel/internal/expose"
	"github.com/qtunnel/qtunnel/rules"
)

// credentialFlags adds the flags that say where the client connects.
func credentialFlags(cmd *cobra.Command, c *expose.Credentials) {
	f := cmd.Flags()
	f.StringVar(&c.Config, "config", "", "a client configuration file (such as the client.yaml 'tunnel init' wrote); default: the file 'tunnel login' wrote, if any")
	f.StringVar(&c.Server, "server", "", "the server's tunnel address, host:port (or "+expose.ServerEnv+")")
	f.StringVar(&c.ID, "id", "", "this client's id, as the server lists it (or "+expose.IDEnv+")")
	f.StringVar(&c.Pin, "pin", "", "the server key's pin, sha256:... (or "+expose.PinEnv+")")
	f.StringVar(&c.TokenFile, "token-file", "", "the file holding this client's token (or "+config.TokenEnv+")")
	_ = cmd.MarkFlagFilename("config", "yaml", "yml")
}

func newExposeCmd() *cobra.Command {
	var req expose.Request
	var creds expose.Credentials
	var level, inspectAddr string
	var noInspect bool
	cmd := &cobra.Command{
		Use:   "expose http|https|tcp PORT|HOST:PORT|URL",
		Short: "Expose a local service through the server in one command, and print its public URL",
		Long: `Expose a service of this machine through the tunnel server, with no rule
written anywhere: the client declares the rule, the server checks it against
what its configuration lets this client declare (clients[].declare) and
answers with the public URL, which expose prints. It serves until Ctrl-C,
then drains: requests in flight finish, and the server drops the rule.

  http   an HTTP service (HTTP/1.1, HTTP/2 cleartext, gRPC, WebSocket)
  https  an HTTPS service; on this machine its certificate is not checked
  tcp    a TCP service, reached on a port of the server

The server picks a name under its base_domain ("<id>.<base_domain>") unless
--host asks for one (one label, taken under base_domain, or a whole name
its hosts list allows), and a free port of its tcp_ports unless --port asks
for one. A claim the server refuses is printed with its reason, and expose
exits 1.

The server and the credentials come from --config FILE, else the file
'tunnel login' wrote, with the flags and environment variables below taking
precedence.

The request inspector is on: the page it prints (the client's admin
listener, 127.0.0.1:4040 or the next free port up to 4049) lists each
request with its header fields (secrets masked), body previews and the time
each stage took, live, and replays a request, as it was or edited.
--no-inspect turns it off.

` + signalsHelp,
		Example: `  tunnel expose http 3000 --config client.yaml
  tunnel expose http 3000 --host shop
  tunnel expose https https://localhost:8443
  tunnel expose tcp 22 --port 20022
  QTUNNEL_SERVER=tunnel.example.com:4443 QTUNNEL_CLIENT_ID=laptop \
    QTUNNEL_SERVER_PIN=sha256:... QTUNNEL_TOKEN=... tunnel expose http 8080`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return cli.Usagef("give the kind of service and where it listens, such as: tunnel expose http 3000")
			}
			return nil
		},
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return []string{expose.HTTP, expose.HTTPS, expose.TCP}, cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Kind, req.Target = args[0], args[1]
			rule, insecure, err := req.Rule()
			if err != nil {
				return cli.Usage(err)
			}
			cfg, source, err := expose.ClientConfig(creds, os.Getenv)
			if err != nil {
				if errors.Is(err, expose.ErrMissing) {
					return cli.Usage(err)
				}
				return fmt.Errorf("%s: %w", source, err)
			}
			cfg.Declare = []rules.Rule{rule}
			if !noInspect {
				cfg.Inspect.Enabled = true
				if cfg.Admin.Listen == "" {
					if cfg.Admin.Listen, err = expose.InspectorAddr(inspectAddr); err != nil {
						return err
					}
				}
			}
			if level != "" {
				cfg.Log.Level = level
			} else if cfg.Log.Level == "info" {
				cfg.Log.Level = "warn" // the URL is the output; logs are for trouble
			}
			return runExpose(cmd.Context(), cfg, rule, insecure, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	credentialFlags(cmd, &creds)
	f := cmd.Flags()
	f.StringVar(&req.Host, "host", "", "the public name to ask for: one label under the server's base_domain, or a whole name")
	f.IntVar(&req.Port, "port", 0, "the server's public port to ask for (tcp)")
	f.StringVar(&req.Name, "name", "", "the rule's name (default: KIND-PORT)")
	f.StringVar(&inspectAddr, "inspect-addr", "", "where the inspector's page listens (default: 127.0.0.1:4040, or the next free port up to 4049)")
	f.BoolVar(&noInspect, "no-inspect", false, "no request inspector")
	f.StringVar(&level, "log-level", "", "debug, info, warn or error (default: warn, or the configuration's level if not info)")
	return cmd
}

func runExpose(ctx context.Context, cfg *config.Client, rule rules.Rule, insecure bool, stdout, stderr io.Writer) error {
	log, err := logger(cfg.Log, cfg.Runtime, stderr)
	if err != nil {
		return err
	}
	cl, err := gateway.NewClient(*cfg, gateway.WithLogger(log), gateway.WithModules(settingsOf(ctx).modules...))
	if err != nil {
		return err
	}
	ctx, stop := cli.ShutdownContext(ctx, log, forceExit)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fmt.Fprintf(stdout, "Connecting to %s as %s...\n", cfg.Server, cfg.ID)
	ran := make(chan error, 1)
	go func() { ran <- cl.Run(ctx) }()
	answered := make(chan []gateway.Declaration, 1)
	go func() {
		if ds, err := cl.Declared(ctx); err == nil {
			answered <- ds
		}
	}()
	select {
	case err := <-ran:
		return err
	case ds := <-answered:
		var refused []string
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		for _, d := range ds {
			if d.Error != "" {
				refused = append(refused, fmt.Sprintf("the server refused %q: %s", d.Name, d.Error))
				continue
			}
			for _, u := range d.URLs {
				fmt.Fprintf(tw, "Forwarding\t%s\t->  %s\n", u, rule.Upstream)
			}
		}
		_ = tw.Flush()
		if len(refused) > 0 {
			cancel()
			<-ran
			return fmt.Errorf("%s", strings.Join(refused, "; "))
		}
		if a := cl.AdminAddr(); a != nil && cfg.Inspect.Enabled {
			fmt.Fprintf(stdout, "Inspector   http://%s/ui/#inspect\n", a)
		}
		if insecure {
			fmt.Fprintf(stdout, "(the certificate of %s is not checked: it is on this machine)\n", rule.Upstream)
		}
		fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
	}
	return <-ran
}

func newLoginCmd() *cobra.Command {
	var creds expose.Credentials
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Keep the server's address and this client's credentials for 'tunnel expose'",
		Long: `Keep where the server is and who this client is in a file of this user
(` + "`$XDG_CONFIG_HOME/qtunnel/login.yaml`" + `, mode 0600, holding the token), so that
later 'tunnel expose' commands need no flags. It takes them from --config
FILE (a client configuration, such as the client.yaml 'tunnel init' wrote)
or from the flags and environment variables, checks that they make a valid
client configuration, and prints where it wrote them.`,
		Example: `  tunnel login --config qtunnel/client.yaml
  tunnel login --server tunnel.example.com:4443 --id laptop --pin sha256:... --token-file laptop.token`,
		Args: noArgs(": login takes flags only"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := expose.LoginFile()
			if err != nil {
				return err
			}
			if creds.Config == "" && creds.Server == "" && os.Getenv(expose.ServerEnv) == "" {
				return cli.Usagef("give --config FILE, or --server, --id, --pin and --token-file")
			}
			cfg, source, err := expose.ClientConfig(creds, os.Getenv)
			if err != nil {
				if errors.Is(err, expose.ErrMissing) {
					return cli.Usage(err)
				}
				return fmt.Errorf("%s: %w", source, err)
			}
			if err := expose.WriteLogin(path, cfg); err != nil {
				return fmt.Errorf("login: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Wrote %s: server %s, client %s.\nNow: tunnel expose http 3000\n", path, cfg.Server, cfg.ID)
			return nil
		},
	}
	credentialFlags(cmd, &creds)
	return cmd
}
