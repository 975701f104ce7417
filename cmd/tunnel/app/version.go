package app

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/qtunnel/qtunnel/internal/version"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary and of the Go that built it",
		Long: `Print the version this binary was built as, the Go release that built it, and
its platform: "tunnel v1.2.3 (go1.26.8, linux/amd64)". make build stamps
the version from git describe; a binary built otherwise says what the Go
toolchain recorded (a module version, or dev and the VCS revision).`,
		Example: `  tunnel version
  tunnel --version`,
		Args:              noArgs(""),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.Line("tunnel"))
			return err
		},
	}
}
