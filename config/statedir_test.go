package config_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
)

// TestStateDirectoryDefault: state_dir wins (a relative one is relative to
// the configuration file), then $STATE_DIRECTORY (its first entry), then
// "state" next to the file; a configuration built in code has none.
func TestStateDirectoryDefault(t *testing.T) { // not parallel: it sets the environment
	file := filepath.Join("/etc", "qtunnel", "server.yaml")
	tests := []struct {
		name, stateDir, env, file, want string
	}{
		{"file, nothing set", "", "", file, "/etc/qtunnel/state"},
		{"relative file", "", "", "server.yaml", "state"},
		{"code, nothing set", "", "", "", ""},
		{"systemd", "", "/var/lib/qtunnel", file, "/var/lib/qtunnel"},
		{"systemd, several", "", "/var/lib/qtunnel:/var/lib/other", file, "/var/lib/qtunnel"},
		{"systemd, code", "", "/var/lib/qtunnel", "", "/var/lib/qtunnel"},
		{"set, absolute", "/srv/qt", "/var/lib/qtunnel", file, "/srv/qt"},
		{"set, relative to the file", "server-state", "/var/lib/qtunnel", file, "/etc/qtunnel/server-state"},
		{"set, relative, code", "server-state", "", "", "server-state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(config.StateDirEnv, tt.env)
			c := config.Server{StateDir: tt.stateDir}
			require.Equal(t, tt.want, c.StateDirectory(tt.file))
		})
	}
}

func TestStateDirIsASetting(t *testing.T) {
	t.Parallel()
	c, err := config.ParseServer("server.yaml", []byte("state_dir: /var/lib/qtunnel\n"))
	require.NoError(t, err)
	require.Equal(t, "/var/lib/qtunnel", c.StateDir)
}
