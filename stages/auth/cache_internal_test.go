package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
)

func basicValue(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// Only admitted credentials are remembered, keyed so that the key of the
// stage matters, and each only once.
func TestCacheHoldsSuccessesOnly(t *testing.T) {
	s, err := New(Config{Basic: BasicConfig{UsersFile: "testdata/users.htpasswd"}})
	require.NoError(t, err)
	require.ErrorIs(t, s.checkBasic(context.Background(), basicValue("alice", "wrong")), ErrInvalid)
	require.ErrorIs(t, s.checkBasic(context.Background(), basicValue("mallory", "wonderland")), ErrInvalid)
	require.Zero(t, s.cache.len(), "a refusal is never cached")
	for range 3 {
		require.NoError(t, s.checkBasic(context.Background(), basicValue("alice", "wonderland")))
	}
	require.Equal(t, 1, s.cache.len())
	require.ErrorIs(t, s.checkBasic(context.Background(), basicValue("alice", "wonderlan")), ErrInvalid)
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

// Password checks are bounded process-wide: with every slot taken, a
// password not seen before waits for one, and is refused unchecked
// (ErrBusy, which Handle answers 503 with Retry-After) when none frees in
// time, while credentials already admitted still pass from the cache; once
// a slot frees, checks go on.
func TestPasswordChecksAreBounded(t *testing.T) {
	s, err := New(Config{Basic: BasicConfig{UsersFile: "testdata/users.htpasswd"}})
	require.NoError(t, err)
	s.wait = 20 * time.Millisecond                                                            // the slots are held throughout: none frees
	require.NoError(t, s.checkBasic(context.Background(), basicValue("alice", "wonderland"))) // cached from now on
	for range cap(passwordChecks) {
		passwordChecks <- struct{}{} // every slot taken, as by as many guessers
	}
	require.ErrorIs(t, s.checkBasic(context.Background(), basicValue("alice", "guess")), ErrBusy)
	require.ErrorIs(t, s.checkBasic(context.Background(), basicValue("bob", "builder")), ErrBusy, "even right credentials wait for a slot once")
	require.NoError(t, s.checkBasic(context.Background(), basicValue("alice", "wonderland")), "admitted credentials need no slot")
	x := pipeline.Acquire(pipeline.Ingress)
	x.Request = httptest.NewRequest(http.MethodGet, "http://app.test/", nil)
	x.Request.Header.Set("Authorization", "Basic "+basicValue("mallory", "guess"))
	err = s.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		t.Error("a request whose password was not checked went on")
		return nil
	}))
	x.Release()
	rj, ok := errors.AsType[*pipeline.Reject](err)
	require.True(t, ok, "%v", err)
	require.Equal(t, http.StatusServiceUnavailable, rj.Status)
	require.Equal(t, time.Second, rj.RetryAfter)
	require.ErrorIs(t, rj, ErrBusy)
	<-passwordChecks
	require.NoError(t, s.checkBasic(context.Background(), basicValue("bob", "builder")))
	for range cap(passwordChecks) - 1 {
		<-passwordChecks
	}
}
