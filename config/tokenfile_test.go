package config_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
)

// A token file that group or others may read or change is refused, by the
// client at start (ReadToken) and by check-config (CheckClientFiles), with
// the file, its mode and the fix; one private to its owner is accepted.
func TestTokenFileMustBePrivate(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Windows files have no Unix permission bits; the check does not apply")
	}
	t.Parallel()
	pin := "sha256:" + base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, tt := range []struct {
		mode os.FileMode
		ok   bool
	}{
		{mode: 0o600, ok: true},
		{mode: 0o400, ok: true},
		{mode: 0o640},
		{mode: 0o604},
		{mode: 0o644},
		{mode: 0o620}, // writable by the group: it could swap the token
		{mode: 0o601},
	} {
		t.Run(fmt.Sprintf("%04o", tt.mode), func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "token")
			require.NoError(t, os.WriteFile(file, []byte("the-token\n"), 0o600))
			require.NoError(t, os.Chmod(file, tt.mode)) // the umask does not apply to chmod
			yaml := []byte("id: c1\nserver: 127.0.0.1:4443\nserver_pin: " + pin + "\ntoken_file: " + file + "\n")
			c, err := config.ParseClient("c.yaml", yaml)
			require.NoError(t, err, "the mode is checked when the file is read, not when the YAML is")

			tok, readErr := c.ReadToken()
			checkErr := config.CheckClientFiles("c.yaml", yaml, c)
			if tt.ok {
				require.NoError(t, readErr)
				require.Equal(t, "the-token", tok)
				require.NoError(t, checkErr)
				return
			}
			why := fmt.Sprintf("%s is open to group or others (mode %04o); a token must be private to its owner: chmod 600 %s", file, tt.mode, file)
			require.EqualError(t, readErr, "token_file: "+why)
			require.Empty(t, tok)
			var ps config.Problems
			require.ErrorAs(t, checkErr, &ps)
			require.Len(t, ps, 1)
			require.Equal(t, "c.yaml:4: token_file: "+why, ps[0].Error())
		})
	}
}
