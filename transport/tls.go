package transport

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

// ALPN is the application protocol both sides require during the handshake.
const ALPN = "qtunnel/1"

// SelfSigned makes an ECDSA P-256 certificate for hosts, valid for ten years.
// Clients trust it by its pin (Pin), not by a CA.
func SelfSigned(hosts ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	return SelfSignedKey(key, hosts...)
}

// SelfSignedKey is SelfSigned for a key the caller has: the certificate's
// pin is the key's, so a certificate made again for a kept key does not
// change the pin.
func SelfSignedKey(key crypto.Signer, hosts ...string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "qtunnel server"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// LoadCertificate loads a PEM certificate chain and key.
func LoadCertificate(certFile, keyFile string) (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load server certificate: %w", err)
	}
	return c, nil
}

// WritePEM writes c's certificate chain and private key as PEM files; the
// key file is readable by its owner only.
func WritePEM(c tls.Certificate, certFile, keyFile string) error {
	var certs []byte
	for _, der := range c.Certificate {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, certs, 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600)
}

// Pin returns the pin of a certificate: "sha256:" and the base64 SHA-256 of
// its SubjectPublicKeyInfo. The pin survives re-issuing a certificate for the
// same key.
func Pin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + base64.StdEncoding.EncodeToString(sum[:])
}

// CertificatePin returns the pin of c's leaf.
func CertificatePin(c tls.Certificate) (string, error) {
	leaf := c.Leaf
	if leaf == nil {
		if len(c.Certificate) == 0 {
			return "", errors.New("certificate is empty")
		}
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return "", err
		}
	}
	return Pin(leaf), nil
}

// ParsePin decodes a pin made by Pin.
func ParsePin(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return nil, fmt.Errorf("pin %q: want sha256:<base64>", s)
	}
	sum, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("pin %q: want the base64 of a 32-byte SHA-256", s)
	}
	return sum, nil
}

// ServerTLS returns the server's TLS configuration: TLS 1.3 only, ALPN required.
func ServerTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{ALPN},
	}
}

// ClientTLSOptions says how the client checks the server's identity. At
// least one of CAFile and Pin is required: there is no "trust anything".
type ClientTLSOptions struct {
	// ServerName is checked against the certificate when CAFile is set.
	ServerName string
	// CAFile holds PEM CA certificates that must sign the server's chain.
	CAFile string
	// Pin is the server key's pin ("sha256:..."). With CAFile, both must hold.
	Pin string
}

// ErrPinMismatch is returned (wrapped) by the handshake when the server's key
// does not match the configured pin.
var ErrPinMismatch = errors.New("server key does not match the pinned key")

// PinMismatchError is the handshake's error when the server presented a
// key other than the pinned one: Got is the pin of the key it presented,
// Want the configured pin. errors.Is matches it with ErrPinMismatch.
type PinMismatchError struct {
	Got, Want string
}

func (e *PinMismatchError) Error() string {
	return fmt.Sprintf("%v: the server presented key %s, but the pin is %s", ErrPinMismatch, e.Got, e.Want)
}

// Is reports whether target is ErrPinMismatch.
func (e *PinMismatchError) Is(target error) bool { return target == ErrPinMismatch }

// ClientTLS returns the client's TLS configuration.
func ClientTLS(o ClientTLSOptions) (*tls.Config, error) {
	conf := &tls.Config{
		ServerName: o.ServerName,
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
	}
	switch {
	case o.CAFile != "":
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("server CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server CA %s: no PEM certificates found", o.CAFile)
		}
		conf.RootCAs = pool
	case o.Pin != "":
		// The chain is not checked against a CA: the pin is the trust anchor,
		// checked below on every handshake.
		conf.InsecureSkipVerify = true
	default:
		return nil, errors.New("the server's identity needs a CA file or a pin (sha256:...)")
	}
	if o.Pin != "" {
		want, err := ParsePin(o.Pin)
		if err != nil {
			return nil, err
		}
		conf.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &PinMismatchError{Got: "none", Want: o.Pin}
			}
			got := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			if subtle.ConstantTimeCompare(got[:], want) != 1 {
				return &PinMismatchError{Got: Pin(cs.PeerCertificates[0]), Want: o.Pin}
			}
			return nil
		}
	}
	return conf, nil
}
