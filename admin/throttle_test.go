package admin_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/internal/authlimit"
)

// sourceThrottle adapts an authlimit.Limiter to admin.Throttle, as the
// gateway does.
type sourceThrottle struct{ l *authlimit.Limiter }

func (s sourceThrottle) Allow(src netip.Addr) (time.Duration, bool) {
	return s.l.Allow(authlimit.Attempt{Source: src})
}
func (s sourceThrottle) Failed(src netip.Addr)    { s.l.Failed(authlimit.Attempt{Source: src}) }
func (s sourceThrottle) Succeeded(src netip.Addr) { s.l.Succeeded(authlimit.Attempt{Source: src}) }

// keptRecords is a slog handler that keeps the messages and attributes of
// the records it is given.
type keptRecords struct {
	mu   sync.Mutex
	recs []map[string]string
}

func (h *keptRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *keptRecords) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message, "level": r.Level.String()}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, m)
	h.mu.Unlock()
	return nil
}
func (h *keptRecords) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *keptRecords) WithGroup(string) slog.Handler      { return h }
func (h *keptRecords) records() []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.recs)
}

// serve sends GET path from remote ("ip:port") to h, with the bearer
// token tok unless it is empty.
func serve(h http.Handler, remote, path, tok string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = remote
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestThrottleRefusesWithoutChecking: wrong and missing tokens from one
// address are 401 up to max_failures, then 429 with Retry-After without a
// token check, logged once with counts; /healthz stays open; the right
// token from another address works; the back-off ends after a window.
func TestThrottleRefusesWithoutChecking(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	logs := &keptRecords{}
	var failures, refused int
	l, err := authlimit.New(authlimit.Config{Kind: "admin", MaxFailures: 5, Window: time.Minute, MaxBackoff: 15 * time.Minute,
		Logger: slog.New(logs), Now: clock,
		OnFailure: func() { mu.Lock(); failures++; mu.Unlock() },
		OnRefused: func() { mu.Lock(); refused++; mu.Unlock() }})
	require.NoError(t, err)
	defer l.Close()
	s, err := admin.New(admin.Config{Listen: "127.0.0.1:0", Token: "secret"}, admin.WithThrottle(sourceThrottle{l}))
	require.NoError(t, err)
	h := s.Handler()

	statuses := map[int]int{}
	for i := range 200 {
		tok := "wrong"
		if i%2 == 1 {
			tok = "" // scanners probe without a token: a failure too
		}
		rec := serve(h, "192.0.2.1:40000", "/readyz", tok)
		statuses[rec.Code]++
		if rec.Code == http.StatusTooManyRequests {
			require.Equal(t, "60", rec.Header().Get("Retry-After"))
			require.Empty(t, rec.Header().Get("WWW-Authenticate"), "no token was checked")
			body := rec.Body.String()
			require.Equal(t, 1, strings.Count(body, "\n"), "one line: %q", body)
			require.Contains(t, body, "retry in 60s")
		}
	}
	require.Equal(t, map[int]int{http.StatusUnauthorized: 5, http.StatusTooManyRequests: 195}, statuses)

	require.Equal(t, http.StatusOK, serve(h, "192.0.2.1:40001", "/healthz", "").Code, "/healthz needs no token and is not throttled")
	require.Equal(t, http.StatusTooManyRequests, serve(h, "192.0.2.1:40002", "/readyz", "secret").Code, "not checked, right or wrong")
	require.Equal(t, http.StatusOK, serve(h, "192.0.2.2:40000", "/readyz", "secret").Code, "another address is not throttled")
	require.Equal(t, http.StatusOK, serve(h, "[::ffff:192.0.2.3]:40000", "/readyz", "secret").Code)

	mu.Lock()
	require.Equal(t, 5, failures)
	require.Equal(t, 196, refused)
	mu.Unlock()
	recs := logs.records()
	require.Len(t, recs, 1, "one record for the burst")
	require.Equal(t, map[string]string{"msg": "failed logins", "level": "WARN", "kind": "admin", "source": "192.0.2.1",
		"failures": "1", "refused": "0"}, recs[0])

	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	require.Equal(t, http.StatusOK, serve(h, "192.0.2.1:40003", "/readyz", "secret").Code, "checked again once the back-off is over")
	recs = logs.records()
	require.Len(t, recs, 2, "the rest of the burst, a window later")
	require.Equal(t, "4", recs[1]["failures"])
	require.Equal(t, "196", recs[1]["refused"])
	require.Equal(t, "1m0s", recs[1]["backoff"])
}

// TestNoThrottleWithoutToken: without a token nothing is checked, so
// nothing is throttled.
func TestNoThrottleWithoutToken(t *testing.T) {
	t.Parallel()
	l, err := authlimit.New(authlimit.Config{Kind: "admin", MaxFailures: 1, Window: time.Minute, MaxBackoff: time.Minute})
	require.NoError(t, err)
	defer l.Close()
	s, err := admin.New(admin.Config{Listen: "127.0.0.1:0"}, admin.WithThrottle(sourceThrottle{l}))
	require.NoError(t, err)
	for range 10 {
		require.Equal(t, http.StatusOK, serve(s.Handler(), "192.0.2.1:40000", "/readyz", "anything").Code)
	}
}
