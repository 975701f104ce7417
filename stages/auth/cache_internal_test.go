package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func basicValue(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// Only admitted credentials are remembered, keyed so that the key of the
// stage matters, and each only once.
func TestCacheHoldsSuccessesOnly(t *testing.T) {
	s, err := New(Config{Basic: BasicConfig{UsersFile: "testdata/users.htpasswd"}})
	require.NoError(t, err)
	require.False(t, s.checkBasic(basicValue("alice", "wrong")))
	require.False(t, s.checkBasic(basicValue("mallory", "wonderland")))
	require.Zero(t, s.cache.len(), "a refusal is never cached")
	for range 3 {
		require.True(t, s.checkBasic(basicValue("alice", "wonderland")))
	}
	require.Equal(t, 1, s.cache.len())
	require.False(t, s.checkBasic(basicValue("alice", "wonderlan")))
	require.Equal(t, 1, s.cache.len())

	// The entry is a digest of the stage's key and the credentials, not
	// of the credentials alone.
	plain := sha256.Sum256([]byte("alice:wonderland"))
	require.False(t, s.cache.has(plain))
	keyed := sha256.Sum256(append(s.key[:], "alice:wonderland"...))
	require.True(t, s.cache.has(keyed))

	other, err := New(Config{Basic: BasicConfig{UsersFile: "testdata/users.htpasswd"}})
	require.NoError(t, err)
	require.NotEqual(t, s.key, other.key, "each stage has its own key")
}

// The cache never holds more than cacheSize entries, however many are
// added, concurrently or not.
func TestCacheIsBounded(t *testing.T) {
	var c cache
	c.m = make(map[[sha256.Size]byte]struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range cacheSize {
				var d [sha256.Size]byte
				binary.BigEndian.PutUint64(d[:], uint64(g*cacheSize+i))
				c.add(d)
				_ = c.has(d) // may be gone already: another goroutine's add can evict it
			}
		})
	}
	wg.Wait()
	require.Equal(t, cacheSize, c.len())

	// Alone, the entry just added is never the one evicted.
	for i := range 100 {
		var d [sha256.Size]byte
		binary.BigEndian.PutUint64(d[:], uint64(1<<40+i))
		c.add(d)
		require.True(t, c.has(d))
		require.Equal(t, cacheSize, c.len())
	}
}
