package app

import (
	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/internal/cli"
)

// shells are the shells completion writes a script for.
var shells = []string{"bash", "zsh", "fish", "powershell"}

func newCompletionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print a shell completion script for tunnel",
		Long: `Print the script that teaches a shell to complete tunnel's commands, flags
and arguments (configuration files, kinds of configuration, log levels). The script
asks tunnel itself for the completions, so it keeps up with the binary.

bash needs the bash-completion package; zsh needs compinit enabled
(autoload -U compinit; compinit in ~/.zshrc).`,
		Example: `  # bash, this shell only:
  source <(tunnel completion bash)
  # bash, every new shell:
  tunnel completion bash > /etc/bash_completion.d/tunnel
  # zsh, every new shell:
  tunnel completion zsh > "${fpath[1]}/_tunnel"
  # fish:
  tunnel completion fish > ~/.config/fish/completions/tunnel.fish
  # PowerShell, this shell only:
  tunnel completion powershell | Out-String | Invoke-Expression`,
		ValidArgs: shells,
		Args: func(_ *cobra.Command, args []string) error {
			switch {
			case len(args) == 0:
				return cli.Usagef("name the shell: bash, zsh, fish or powershell")
			case len(args) > 1:
				return cli.Usagef("name one shell, not %d", len(args))
			}
			for _, s := range shells {
				if args[0] == s {
					return nil
				}
			}
			return cli.Usagef("%q is not a shell this can complete for: bash, zsh, fish or powershell", args[0])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root, w := cmd.Root(), cmd.OutOrStdout()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(w, true)
			case "zsh":
				return root.GenZshCompletion(w)
			case "fish":
				return root.GenFishCompletion(w, true)
			default:
				return root.GenPowerShellCompletionWithDesc(w)
			}
		},
	}
}
