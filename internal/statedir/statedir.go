// Package statedir keeps what the server must remember across restarts in
// one directory, its state directory (the server's state_dir setting):
// today the identity it generates when it has no certificate files, so
// that its pin, and the stateless-reset key derived from its private key,
// stay the same from one start to the next.
//
// The identity is two PEM files, identity.key (PKCS #8, mode 0600) and
// identity.crt, and identity.pin holds the key's pin for people to read.
// Files are written atomically (a temporary file in the same directory,
// synced, then renamed over the old one), so a crash leaves either the
// old content or the new one, never a part. A file that is there but
// cannot be read or parsed is an error naming it, never a reason to make
// a new identity: that would change the pin every client checks.
//
// One state directory belongs to one server process.
package statedir

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/qtunnel/qtunnel/transport"
)

// Names of the files of the identity inside the directory.
const (
	KeyFile  = "identity.key"
	CertFile = "identity.crt"
	PinFile  = "identity.pin"
)

// DirMode is the mode of a state directory this package makes.
const DirMode fs.FileMode = 0o700

// Dir is a state directory.
type Dir struct{ path string }

// Open returns the state directory at path, making it (and its parents)
// with mode 0700 if it does not exist. An existing directory keeps its
// mode.
func Open(path string) (*Dir, error) {
	if path == "" {
		return nil, errors.New("state directory: no path")
	}
	if err := os.MkdirAll(path, DirMode); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return &Dir{path: path}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// File returns the path of name inside the directory.
func (d *Dir) File(name string) string { return filepath.Join(d.path, name) }

// WriteFile writes name inside the directory atomically, with mode perm.
func (d *Dir) WriteFile(name string, data []byte, perm fs.FileMode) error {
	return WriteFile(d.File(name), data, perm)
}

// WriteFile writes data to path atomically: into a temporary file in the
// same directory, which is given mode perm, synced and renamed over path;
// the directory is synced after the rename. On error path is left as it
// was and the temporary file is removed.
func WriteFile(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	// The rename is durable once the directory is synced; a directory
	// that cannot be synced (some file systems) still has the file.
	if df, derr := os.Open(dir); derr == nil {
		_ = df.Sync()
		_ = df.Close()
	}
	return nil
}

// Outcome says where the identity Identity returned came from.
type Outcome int

const (
	// Loaded: both files were there and were used as they are.
	Loaded Outcome = iota
	// Generated: there was no identity; a new key and certificate were
	// made and written.
	Generated
	// Reissued: the key was there but its certificate was not (a crash
	// between the two writes, or a removed file); a certificate was made
	// again for the key, whose pin is unchanged.
	Reissued
)

func (o Outcome) String() string {
	switch o {
	case Loaded:
		return "loaded"
	case Generated:
		return "generated"
	case Reissued:
		return "certificate reissued for the kept key"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Identity returns the server identity kept in the directory. With
// neither file there, it makes a self-signed certificate for hosts (as
// transport.SelfSigned) and writes the key, then the certificate. A file
// that cannot be read or parsed, a certificate without its key, or a pair
// that does not belong together is an error that names the file and says
// what to do; nothing is overwritten then.
func (d *Dir) Identity(hosts ...string) (tls.Certificate, Outcome, error) {
	keyPath, certPath := d.File(KeyFile), d.File(CertFile)
	keyPEM, keyErr := os.ReadFile(keyPath)
	certPEM, certErr := os.ReadFile(certPath)
	keyMissing, certMissing := errors.Is(keyErr, fs.ErrNotExist), errors.Is(certErr, fs.ErrNotExist)
	for _, err := range []error{keyErr, certErr} {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return tls.Certificate{}, 0, fmt.Errorf("server identity: %w", err)
		}
	}
	switch {
	case keyMissing && certMissing:
		c, err := d.generate(hosts)
		return c, Generated, err
	case keyMissing:
		return tls.Certificate{}, 0, fmt.Errorf("server identity: %s is missing but %s is there: the key, and with it the pin clients check, is lost; restore %s from a backup, or remove %s to make a new identity (every client then needs the new pin)",
			keyPath, certPath, KeyFile, certPath)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return tls.Certificate{}, 0, fmt.Errorf("server identity: %s: %v; restore it from a backup, or remove %s and %s to make a new identity (every client then needs the new pin)",
			keyPath, err, keyPath, certPath)
	}
	if certMissing {
		c, err := transport.SelfSignedKey(key, hosts...)
		if err == nil {
			err = d.WriteFile(CertFile, certBytes(c), 0o644)
		}
		if err != nil {
			return tls.Certificate{}, 0, fmt.Errorf("server identity: make %s again for the kept key: %w", certPath, err)
		}
		return c, Reissued, nil
	}
	if err := checkCerts(certPEM); err != nil {
		return tls.Certificate{}, 0, fmt.Errorf("server identity: %s: %v; restore it from a backup, or remove it to make a certificate again for %s (the pin stays the same)",
			certPath, err, KeyFile)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, 0, fmt.Errorf("server identity: %s and %s do not go together (%v); remove %s to make a certificate again for the key (the pin stays the same)",
			certPath, keyPath, err, certPath)
	}
	return c, Loaded, nil
}

// WritePin writes identity.pin, the pin of c, unless it already holds it.
func (d *Dir) WritePin(c tls.Certificate) error {
	pin, err := transport.CertificatePin(c)
	if err != nil {
		return err
	}
	want := pin + "\n"
	if b, err := os.ReadFile(d.File(PinFile)); err == nil && string(b) == want {
		return nil
	}
	return d.WriteFile(PinFile, []byte(want), 0o644)
}

// generate makes a new identity and writes it: the key first, so that a
// crash between the two writes leaves a key whose certificate is made
// again at the next start (Reissued), not a certificate without a key.
func (d *Dir) generate(hosts []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := transport.SelfSignedKey(key, hosts...)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := WriteIdentity(d.path, c); err != nil {
		return tls.Certificate{}, fmt.Errorf("server identity: %w", err)
	}
	return c, nil
}

// WriteIdentity writes c's key and certificate into dir as identity.key
// (0600) and identity.crt, atomically each, the key first, and
// identity.pin.
func WriteIdentity(dir string, c tls.Certificate) error {
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return err
	}
	d := &Dir{path: dir}
	if err := d.WriteFile(KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	if err := d.WriteFile(CertFile, certBytes(c), 0o644); err != nil {
		return err
	}
	return d.WritePin(c)
}

func certBytes(c tls.Certificate) []byte {
	var b []byte
	for _, der := range c.Certificate {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return b
}

// parseKey reads a PEM private key: PKCS #8, or the older EC and PKCS #1
// forms, as tls.X509KeyPair accepts them.
func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		if len(strings.TrimSpace(string(b))) == 0 {
			return nil, errors.New("the file is empty")
		}
		return nil, errors.New("no PEM block in the file")
	}
	if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
		return nil, fmt.Errorf("a PEM %q block, not a private key", block.Type)
	}
	var key any
	var err error
	if key, err = x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		if k, err2 := x509.ParseECPrivateKey(block.Bytes); err2 == nil {
			key, err = k, nil
		} else if k, err3 := x509.ParsePKCS1PrivateKey(block.Bytes); err3 == nil {
			key, err = k, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("the private key does not parse: %v", err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", key)
	}
	return s, nil
}

// checkCerts checks that b holds at least one PEM certificate and that
// each one parses.
func checkCerts(b []byte) error {
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d does not parse: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		if len(strings.TrimSpace(string(b))) == 0 {
			return errors.New("the file is empty")
		}
		return errors.New("no PEM certificate in the file")
	}
	return nil
}
