package statedir_test

import (
	"bytes"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/statedir"
	"github.com/qtunnel/qtunnel/transport"
)

func pinOf(t *testing.T, c tls.Certificate) string {
	t.Helper()
	p, err := transport.CertificatePin(c)
	require.NoError(t, err)
	return p
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

// newIdentity makes a state directory with a generated identity.
func newIdentity(t *testing.T) (*statedir.Dir, string) {
	t.Helper()
	d, err := statedir.Open(filepath.Join(t.TempDir(), "state"))
	require.NoError(t, err)
	c, how, err := d.Identity("127.0.0.1")
	require.NoError(t, err)
	require.Equal(t, statedir.Generated, how)
	return d, pinOf(t, c)
}

// TestIdentityIsGeneratedOnceAndReloaded: the first start makes the
// directory (0700, parents too), a key (0600), a certificate and the pin
// file; every later start loads the same identity.
func TestIdentityIsGeneratedOnceAndReloaded(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "var", "state")
	d, err := statedir.Open(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), mode(t, path))
	require.Equal(t, os.FileMode(0o700), mode(t, filepath.Dir(path)))

	c, how, err := d.Identity("127.0.0.1", "tunnel.example.test")
	require.NoError(t, err)
	require.Equal(t, statedir.Generated, how)
	pin := pinOf(t, c)
	require.Equal(t, []string{"tunnel.example.test"}, c.Leaf.DNSNames)
	require.Equal(t, os.FileMode(0o600), mode(t, d.File(statedir.KeyFile)))
	require.Equal(t, os.FileMode(0o644), mode(t, d.File(statedir.CertFile)))
	b, err := os.ReadFile(d.File(statedir.PinFile))
	require.NoError(t, err)
	require.Equal(t, pin+"\n", string(b))
	certPEM, err := os.ReadFile(d.File(statedir.CertFile))
	require.NoError(t, err)

	for range 2 {
		d2, err := statedir.Open(path)
		require.NoError(t, err)
		c2, how, err := d2.Identity("other.example.test")
		require.NoError(t, err)
		require.Equal(t, statedir.Loaded, how)
		require.Equal(t, pin, pinOf(t, c2))
		require.Equal(t, c.Certificate, c2.Certificate, "the certificate is loaded, not made again")
		again, err := os.ReadFile(d.File(statedir.CertFile))
		require.NoError(t, err)
		require.Equal(t, certPEM, again)
	}
	entries, err := os.ReadDir(path)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.ElementsMatch(t, []string{statedir.KeyFile, statedir.CertFile, statedir.PinFile}, names, "no temporary files are left")
}

// TestOpenKeepsAnExistingDirectory: a directory that is there keeps its
// mode (an operator's or systemd's choice); a file in the way is an error.
func TestOpenKeepsAnExistingDirectory(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(path, 0o750))
	require.NoError(t, os.Chmod(path, 0o750))
	_, err := statedir.Open(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o750), mode(t, path))

	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err = statedir.Open(file)
	require.ErrorContains(t, err, file)
}

// TestBrokenIdentityIsAnError: a file that is there but is not usable
// stops the start with an error that names it and says what to do, and
// nothing is overwritten: a silent new key would change the pin.
func TestBrokenIdentityIsAnError(t *testing.T) {
	t.Parallel()
	other, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	otherDir := t.TempDir()
	require.NoError(t, statedir.WriteIdentity(otherDir, other))
	otherKey, err := os.ReadFile(filepath.Join(otherDir, statedir.KeyFile))
	require.NoError(t, err)

	tests := []struct {
		name  string
		file  string // the file to break, by name
		data  []byte // its new content; nil removes it
		names string // the file the error must name
		says  string
	}{
		{"key garbage", statedir.KeyFile, []byte("not a key\n"), statedir.KeyFile, "no PEM block"},
		{"key empty", statedir.KeyFile, []byte{}, statedir.KeyFile, "the file is empty"},
		{"key truncated", statedir.KeyFile, []byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n"), statedir.KeyFile, "does not parse"},
		{"certificate garbage", statedir.CertFile, []byte("junk"), statedir.CertFile, "no PEM certificate"},
		{"certificate empty", statedir.CertFile, []byte{}, statedir.CertFile, "the file is empty"},
		{"key of another identity", statedir.KeyFile, otherKey, statedir.CertFile, "do not go together"},
		{"key missing", statedir.KeyFile, nil, statedir.KeyFile, "the key, and with it the pin clients check, is lost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, _ := newIdentity(t)
			if tt.data == nil {
				require.NoError(t, os.Remove(d.File(tt.file)))
			} else {
				require.NoError(t, os.WriteFile(d.File(tt.file), tt.data, 0o600))
			}
			before := snapshot(t, d)
			_, _, err := d.Identity("127.0.0.1")
			require.Error(t, err)
			require.Contains(t, err.Error(), d.File(tt.names))
			require.Contains(t, err.Error(), tt.says)
			require.Contains(t, err.Error(), "remove", "the error says how to get going again")
			require.Equal(t, before, snapshot(t, d), "nothing is overwritten")
		})
	}

	t.Run("key unreadable", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() == 0 {
			t.Skip("root reads any file")
		}
		d, _ := newIdentity(t)
		require.NoError(t, os.Chmod(d.File(statedir.KeyFile), 0))
		_, _, err := d.Identity("127.0.0.1")
		require.ErrorContains(t, err, d.File(statedir.KeyFile))
		require.ErrorContains(t, err, "permission denied")
	})
}

// snapshot returns the files of d's directory with their content.
func snapshot(t *testing.T, d *statedir.Dir) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(d.Path())
	require.NoError(t, err)
	m := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(d.File(e.Name()))
		require.NoError(t, err)
		m[e.Name()] = string(b)
	}
	return m
}

// TestKeyWithoutCertificateKeepsThePin: a key whose certificate is gone
// (a crash between the two writes) gets a new certificate, with the same
// pin.
func TestKeyWithoutCertificateKeepsThePin(t *testing.T) {
	t.Parallel()
	d, pin := newIdentity(t)
	require.NoError(t, os.Remove(d.File(statedir.CertFile)))
	c, how, err := d.Identity("127.0.0.1")
	require.NoError(t, err)
	require.Equal(t, statedir.Reissued, how)
	require.Equal(t, pin, pinOf(t, c))
	c, how, err = d.Identity("127.0.0.1")
	require.NoError(t, err)
	require.Equal(t, statedir.Loaded, how)
	require.Equal(t, pin, pinOf(t, c))
}

// TestWriteFileIsAtomic: a write replaces the whole file with the mode
// asked for and leaves no temporary file; a reader never sees a part of
// a write; a failed write leaves the target as it was and no temporary
// file.
func TestWriteFileIsAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	require.NoError(t, os.WriteFile(path, []byte("old content that is longer"), 0o644))
	require.NoError(t, statedir.WriteFile(path, []byte("new"), 0o600))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "new", string(b))
	require.Equal(t, os.FileMode(0o600), mode(t, path))

	// Readers racing writers of two large contents see one or the other.
	a, z := bytes.Repeat([]byte("a"), 1<<20), bytes.Repeat([]byte("z"), 1<<20)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var seen []string
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err != nil || (!bytes.Equal(b, a) && !bytes.Equal(b, z) && string(b) != "new") {
				seen = append(seen, err2s(err, b))
			}
		}
	})
	for i := range 50 {
		data := a
		if i%2 == 1 {
			data = z
		}
		require.NoError(t, statedir.WriteFile(path, data, 0o600))
	}
	close(stop)
	wg.Wait()
	require.Empty(t, seen, "a reader saw a partial or missing file")

	// A write that cannot finish (the target is a non-empty directory)
	// leaves everything as it was.
	target := filepath.Join(dir, "sub")
	require.NoError(t, os.MkdirAll(filepath.Join(target, "x"), 0o700))
	require.Error(t, statedir.WriteFile(target, []byte("x"), 0o600))
	require.DirExists(t, filepath.Join(target, "x"))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, strings.Contains(e.Name(), ".tmp-"), "temporary file left: %s", e.Name())
	}
}

func err2s(err error, b []byte) string {
	if err != nil {
		return err.Error()
	}
	if len(b) > 16 {
		b = b[:16]
	}
	return "content " + string(b) + "..."
}
