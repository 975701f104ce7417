package config_test

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
)

// TestShippedExamplesAreValid keeps the examples in the repository honest:
// they parse and validate (the files they name exist only on a real host).
func TestShippedExamplesAreValid(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../examples/server.yaml")
	require.NoError(t, err)
	s, err := config.ParseServer("examples/server.yaml", data)
	require.NoError(t, err)
	require.Len(t, s.Rules, 5)
	// Each missing file is named, the key as well as the certificate.
	problems := config.CheckFiles("examples/server.yaml", data, s)
	require.EqualError(t, problems, "examples/server.yaml:18: tls.cert_file: open /etc/qtunnel/server.crt: no such file or directory\n"+
		"examples/server.yaml:19: tls.key_file: open /etc/qtunnel/server.key: no such file or directory")

	data, err = os.ReadFile("../examples/client.yaml")
	require.NoError(t, err)
	c, err := config.ParseClient("examples/client.yaml", data)
	require.NoError(t, err)
	require.Equal(t, "laptop", c.ID)
	require.ErrorContains(t, config.CheckClientFiles("examples/client.yaml", data, c), "examples/client.yaml:9: token_file: open /etc/qtunnel/token")
}
