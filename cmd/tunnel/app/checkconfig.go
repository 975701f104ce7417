package app

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/internal/cli"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
)

func newCheckConfigCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "check-config [server|client] [--config] FILE",
		Short: "Check a configuration file; report each problem with its line",
		Long: `Check a server's or a client's configuration FILE without starting anything:
every problem is reported as file:line: setting: reason, including
certificate, key, token and CA files that cannot be read. It exits 0 when the
file is good and 1 when it has problems.

Without server or client, the kind is told from the file's settings: one
with clients, rules or public_http is a server's, one with id, server or
server_pin a client's. Which one it assumed is said on standard error.`,
		Example: `  tunnel check-config server.yaml
  tunnel check-config server examples/server.yaml
  tunnel check-config client --config client.yaml`,
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return []string{"server\ta server's configuration", "client\ta client's configuration"}, cobra.ShellCompDirectiveDefault
			}
			if _, ok := cli.ParseKind(args[0]); ok && len(args) == 1 {
				return []string{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, rest := cli.Kind(""), args
			if len(args) > 0 {
				if k, ok := cli.ParseKind(args[0]); ok {
					kind, rest = k, args[1:]
				} else if len(args) == 2 {
					return cli.Usagef("%q is not a kind of configuration: want server or client", args[0])
				}
			}
			path, err := cli.OneFile("config", file, rest)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if kind == "" {
				var settings []string
				kind, settings, err = cli.GuessKind(data)
				if err != nil {
					return cli.Usagef("%s: cannot tell a server's configuration from a client's: %v; name the kind: tunnel check-config server|client FILE", path, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: checking it as a %s configuration (it sets %s)\n", path, kind, strings.Join(settings, ", "))
			}
			summary, err := checkConfig(kind, path, data, settingsOf(cmd.Context()).modules)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%s)\n", path, summary)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "configuration file (YAML); the same as giving it as FILE")
	_ = cmd.MarkFlagFilename("config", "yaml", "yml")
	return cmd
}

// checkConfig parses and checks a configuration of the given kind, the
// files it names and, for a server, the stage lists of the rules it runs
// (with the modules the gateway ships and extra), and sums up a good one.
func checkConfig(kind cli.Kind, path string, data []byte, extra []pipeline.Module) (string, error) {
	if kind == cli.Server {
		c, err := config.ParseServer(path, data)
		if err == nil {
			err = config.CheckFiles(path, data, c)
		}
		if err == nil {
			err = gateway.CheckRuleStages(c.Rules, rules.Reverse, extra...)
		}
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d clients, %d rules", len(c.Clients), len(c.Rules)), nil
	}
	c, err := config.ParseClient(path, data)
	if err == nil {
		err = config.CheckClientFiles(path, data, c)
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("client %q, server %s", c.ID, c.Server), nil
}
