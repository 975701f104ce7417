package app

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/cli"
)

func newHashTokenCmd() *cobra.Command {
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "hash-token [--token-file FILE]",
		Short: "Print the token_sha256 of a client token, for the server's configuration",
		Long: `Print the SHA-256 of a client's token in hex: the value of token_sha256 in
the server's clients list (the server stores only the hash). The token is
read from --token-file (the whole file, trimmed, as a client reads its
token_file) or else from the first line of standard input. It is never an
argument, which other users could read in the process list.`,
		Example: `  echo -n 'a-long-random-token' | tunnel hash-token
  tunnel hash-token --token-file client.token
  tunnel hash-token < client.token`,
		Args:              noArgs(": give the token on standard input or with --token-file"),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var token string
			var err error
			if tokenFile != "" {
				token, err = cli.ReadTokenFile(tokenFile)
			} else if token, err = cli.ReadTokenLine(cmd.InOrStdin()); errors.Is(err, cli.ErrNoToken) {
				err = fmt.Errorf("%w (pipe it in, or use --token-file FILE)", err)
			}
			if err != nil {
				return fmt.Errorf("hash-token: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), control.HashToken(token).String())
			return nil
		},
	}
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "read the token from this file instead of standard input")
	return cmd
}
