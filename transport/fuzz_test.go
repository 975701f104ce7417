package transport_test

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/transport"
)

// FuzzParsePin checks server_pin values: what parses is "sha256:" and the
// base64 of 32 bytes, and the pin written as Pin writes it parses to the
// same bytes; every error names the pin. testdata/fuzz/FuzzParsePin holds
// more seeds.
func FuzzParsePin(f *testing.F) {
	if cert, err := transport.SelfSigned("localhost"); err == nil {
		if pin, err := transport.CertificatePin(cert); err == nil {
			f.Add(pin)
		}
	}
	sum := sha256.Sum256([]byte("server key"))
	b64 := base64.StdEncoding.EncodeToString(sum[:])
	for _, s := range []string{"sha256:" + b64, "sha256:" + strings.TrimSuffix(b64, "="), "SHA256:" + b64, "sha256:" + b64[:20] + "\n" + b64[20:], "sha256:", b64, ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sum, err := transport.ParsePin(s)
		if err != nil {
			require.True(t, strings.HasPrefix(err.Error(), "pin "), "%v", err)
			require.Nil(t, sum)
			return
		}
		require.True(t, strings.HasPrefix(s, "sha256:"), "%q parsed without the sha256: prefix", s)
		require.Len(t, sum, sha256.Size)
		again, err := transport.ParsePin("sha256:" + base64.StdEncoding.EncodeToString(sum))
		require.NoError(t, err)
		require.Equal(t, sum, again)
	})
}
