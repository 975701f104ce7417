package cli

import (
	"strings"

	"github.com/spf13/pflag"
)

// OneDashLongFlags rewrites Go-style long flags with one dash (-config
// FILE, -runs=3, -quick) as the two-dash form POSIX-style parsers expect
// (--config FILE), so that command lines written for Go's flag package
// keep working. lookup finds a command's flag by name; the help flag is
// always known.
//
// Any one-dash word longer than one letter is taken as a long flag, known
// or not (an unknown one then fails as "unknown flag: --name", not as a
// list of one-letter flags): the commands this serves have no one-letter
// flag but -h. A flag's value (the word after a flag that takes one) and
// everything after "--" are left as they are.
func OneDashLongFlags(args []string, lookup func(name string) *pflag.Flag) []string {
	out := make([]string, len(args))
	copy(out, args)
	for i := 0; i < len(out); i++ {
		a := out[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		long := strings.HasPrefix(a, "--")
		if !long && len(a) == 2 {
			continue // -h: a one-letter flag
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !long {
			out[i] = "-" + a
		}
		if hasValue || name == "help" {
			continue
		}
		if f := lookup(name); f != nil && f.NoOptDefVal == "" {
			i++ // the flag's value, whatever it looks like
		}
	}
	return out
}
