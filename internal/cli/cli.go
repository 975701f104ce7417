// Package cli holds what the tunnel command line needs beyond assembling
// commands: exit codes and usage errors, reading Go-style one-dash long
// flags, telling a server's configuration from a client's, reading a token,
// and the shutdown and reload signals. cmd/tunnel (and cmd/tunnel-bench)
// assemble their commands from these; nothing here knows about cobra's
// commands.
package cli

import (
	"errors"
	"fmt"
)

// Exit codes of the tunnel binary.
const (
	// ExitOK: the command did its work, or a server, client or demo
	// stopped gracefully on SIGINT or SIGTERM.
	ExitOK = 0
	// ExitFailure: the command failed while running: a configuration with
	// problems, a file that cannot be read, a listener that cannot bind, a
	// client whose token or server pin was refused.
	ExitFailure = 1
	// ExitUsage: the command line is wrong (an unknown command or flag, a
	// missing or extra argument); nothing was started.
	ExitUsage = 2
	// ExitForced: a second SIGINT or SIGTERM arrived during a graceful
	// stop, and the process exited without waiting for it (128+SIGINT, as
	// shells report an interrupted command).
	ExitForced = 130
)

// UsageError is a mistake in the command line. Its exit code is
// ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }

// Unwrap returns the mistake.
func (e *UsageError) Unwrap() error { return e.Err }

// Usage marks err as a usage error; nil stays nil.
func Usage(err error) error {
	if err == nil {
		return nil
	}
	var u *UsageError
	if errors.As(err, &u) {
		return err
	}
	return &UsageError{Err: err}
}

// Usagef returns a usage error with a formatted message.
func Usagef(format string, a ...any) error {
	return &UsageError{Err: fmt.Errorf(format, a...)}
}

// ExitCode is the exit code for the result of a command: ExitOK for nil,
// ExitUsage for a usage error, ExitFailure for any other error.
func ExitCode(err error) int {
	var u *UsageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &u):
		return ExitUsage
	default:
		return ExitFailure
	}
}

// OneFile returns the one file a command works on, given either as its
// only positional argument or with a flag (flagValue, named flagName), or
// as both when they agree. Anything else is a usage error.
func OneFile(flagName, flagValue string, args []string) (string, error) {
	switch {
	case len(args) > 1:
		return "", Usagef("too many arguments %q: give one file", args)
	case len(args) == 1 && flagValue != "" && args[0] != flagValue:
		return "", Usagef("two files given (%s and --%s %s): give one", args[0], flagName, flagValue)
	case len(args) == 1:
		return args[0], nil
	case flagValue == "":
		return "", Usagef("a file is required: give it as FILE or --%s FILE", flagName)
	}
	return flagValue, nil
}
