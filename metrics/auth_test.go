package metrics_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/metrics"
)

func TestAuthCountersByKind(t *testing.T) {
	t.Parallel()
	m := metrics.New("server")
	mfs := scrape(t, m)
	for _, kind := range []string{"tunnel", "admin"} {
		k := map[string]string{"kind": kind}
		require.Zero(t, value(t, mfs, "qtunnel_auth_failures_total", k), "exported at zero from the start: %s", kind)
		require.Zero(t, value(t, mfs, "qtunnel_auth_refused_total", k), kind)
	}

	for range 3 {
		m.AuthFailed(metrics.AuthTunnel)
	}
	m.AuthFailed(metrics.AuthAdmin)
	for range 5 {
		m.AuthRefused(metrics.AuthTunnel)
	}
	m.AuthFailed(metrics.AuthKind(200)) // outside the set: not counted, no new series
	m.AuthRefused(metrics.AuthKind(200))
	mfs = scrape(t, m)
	tunnel, admin := map[string]string{"kind": "tunnel"}, map[string]string{"kind": "admin"}
	require.Equal(t, 3.0, value(t, mfs, "qtunnel_auth_failures_total", tunnel))
	require.Equal(t, 1.0, value(t, mfs, "qtunnel_auth_failures_total", admin))
	require.Equal(t, 5.0, value(t, mfs, "qtunnel_auth_refused_total", tunnel))
	require.Equal(t, 0.0, value(t, mfs, "qtunnel_auth_refused_total", admin))
	require.Len(t, mfs["qtunnel_auth_failures_total"].GetMetric(), 2)
	require.Len(t, mfs["qtunnel_auth_refused_total"].GetMetric(), 2)

	require.Equal(t, "tunnel", metrics.AuthTunnel.String())
	require.Equal(t, "admin", metrics.AuthAdmin.String())
	require.Equal(t, "unknown", metrics.AuthKind(200).String())

	var none *metrics.Metrics
	require.NotPanics(t, func() {
		none.AuthFailed(metrics.AuthTunnel)
		none.AuthRefused(metrics.AuthAdmin)
	})
}
