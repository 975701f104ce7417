package config

import (
	"os"
	"path/filepath"
	"strings"
)

// StateDirEnv is the environment variable systemd sets for a unit with
// StateDirectory=: the default state_dir when it is set.
const StateDirEnv = "STATE_DIRECTORY"

// DefaultStateDirName is the state directory's name next to the
// configuration file, when neither state_dir nor $STATE_DIRECTORY says
// otherwise.
const DefaultStateDirName = "state"

// StateDirectory returns the state directory of a server started from
// configFile ("" for a configuration built in code), or "" for none:
// state_dir if set (relative to configFile's directory when relative and
// there is a file), else the first path of $STATE_DIRECTORY (systemd
// lists one per StateDirectory= entry, separated by colons), else "state"
// next to configFile.
func (c *Server) StateDirectory(configFile string) string {
	if c.StateDir != "" {
		if configFile != "" && !filepath.IsAbs(c.StateDir) {
			return filepath.Join(filepath.Dir(configFile), c.StateDir)
		}
		return c.StateDir
	}
	if env, _, _ := strings.Cut(os.Getenv(StateDirEnv), ":"); env != "" {
		return env
	}
	if configFile != "" {
		return filepath.Join(filepath.Dir(configFile), DefaultStateDirName)
	}
	return ""
}
