package app

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/internal/cli"
	"github.com/qtunnel/qtunnel/internal/setup"
)

func newInitCmd() *cobra.Command {
	var o setup.Options
	cmd := &cobra.Command{
		Use:   "init [DIR]",
		Short: "Write a server's key, a client token, and a server and a client configuration that fit",
		Long: `Write, into DIR (default: the current directory, made if missing), everything
a first tunnel needs:

  server-state/identity.key, .crt, .pin
                 the server's key (mode 0600), certificate and pin, in the
                 server's state directory, where the server loads them at
                 every start: its pin stays the same across restarts
  client.token   a random 32-byte token for the client (mode 0600)
  server.yaml    listen, public_http, state_dir, the client with the
                 token's SHA-256, and an example reverse and forward rule,
                 commented
  client.yaml    the client's id, the server's address, server_pin (the
                 written key's pin) and token_file

It prints what it wrote and the commands that start the server and the
client. It refuses to overwrite any of these files unless --force is given;
overwriting the key changes the pin, and every client then needs the new one.`,
		Example: `  tunnel init
  tunnel init qtunnel --server-address tunnel.example.com:4443
  tunnel init /etc/qtunnel --client-id laptop --public-http :80 --force`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return cli.Usagef("too many arguments %q: give one directory", args)
			}
			return nil
		},
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveFilterDirs
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.Dir = args[0]
			}
			if err := setup.Check(o); err != nil {
				return cli.Usage(err)
			}
			r, err := setup.Init(o)
			if err != nil {
				return fmt.Errorf("init: %w", err)
			}
			return r.Print(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ServerAddress, "server-address", "", "the server's address as clients dial it, host:port (UDP); the server listens on its port (default: this host's name, or 127.0.0.1, with port "+setup.DefaultPort+")")
	f.StringVar(&o.PublicHTTP, "public-http", setup.DefaultPublicHTTP, "the server's public HTTP listener, for reverse rules")
	f.StringVar(&o.ClientID, "client-id", setup.DefaultClientID, "the client's id")
	f.BoolVar(&o.Force, "force", false, "overwrite files that are there already (a new key: clients need the new pin)")
	return cmd
}
