package transport_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/transport"
)

// TestPinMismatchNamesBothPins: a handshake with a server whose key is not
// the pinned one fails with a PinMismatchError that holds the pin of the
// key the server presented and the configured one, still matches
// ErrPinMismatch, and is final.
func TestPinMismatchNamesBothPins(t *testing.T) {
	t.Parallel()
	cert, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	pin, err := transport.CertificatePin(cert)
	require.NoError(t, err)
	other, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	otherPin, err := transport.CertificatePin(other)
	require.NoError(t, err)

	err = handshake(t, cert, transport.ClientTLSOptions{Pin: otherPin})
	var pm *transport.PinMismatchError
	require.True(t, errors.As(err, &pm), "%v", err)
	require.Equal(t, pin, pm.Got)
	require.Equal(t, otherPin, pm.Want)
	require.ErrorIs(t, err, transport.ErrPinMismatch)
	require.False(t, transport.Retryable(err))
	require.Contains(t, err.Error(), "the server presented key "+pin+", but the pin is "+otherPin)
}

// TestSelfSignedKeyKeepsThePin: a certificate made again for the same key
// has the same pin.
func TestSelfSignedKeyKeepsThePin(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	a, err := transport.SelfSignedKey(key, "127.0.0.1")
	require.NoError(t, err)
	b, err := transport.SelfSignedKey(key, "example.test")
	require.NoError(t, err)
	pa, err := transport.CertificatePin(a)
	require.NoError(t, err)
	pb, err := transport.CertificatePin(b)
	require.NoError(t, err)
	require.Equal(t, pa, pb)
	require.NotEqual(t, a.Certificate[0], b.Certificate[0])
}
