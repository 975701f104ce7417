// Package stagetest holds what the tests of the stages share: a clock that
// moves only when told to, and the check of a stage's constructor.
package stagetest

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Clock is a clock that moves only when told to. Safe for concurrent use.
type Clock struct {
	base time.Time
	ns   atomic.Int64
}

// NewClock returns a clock that reads 2030-01-01 00:00 UTC until advanced.
func NewClock() *Clock {
	return &Clock{base: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// Now returns the clock's time; pass it to a stage's WithClock.
func (c *Clock) Now() time.Time { return c.base.Add(time.Duration(c.ns.Load())) }

// Advance moves the clock d forward.
func (c *Clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// CheckNew checks what the constructor of stage ("breaker") returned for a
// configuration: a stage and no error if wantErr is empty, else no stage
// and an error that names the stage first ("breaker: ...") and contains
// wantErr.
func CheckNew[S any](t *testing.T, stage string, s *S, err error, wantErr string) {
	t.Helper()
	if wantErr != "" {
		require.ErrorContains(t, err, wantErr)
		require.True(t, strings.HasPrefix(err.Error(), stage+": "), "%q does not name the stage %q first", err, stage)
		require.Nil(t, s)
		return
	}
	require.NoError(t, err)
	require.NotNil(t, s)
}
