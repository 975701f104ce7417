package bench_test

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/bench"
)

// TestChartFromSavedResults redraws the chart of the committed results: the
// SVG is a function of the JSON alone.
func TestChartFromSavedResults(t *testing.T) {
	data, err := os.ReadFile("results/results.json")
	if os.IsNotExist(err) {
		t.Skip("no saved results (run make bench)")
	}
	require.NoError(t, err)
	var rep bench.Report
	require.NoError(t, json.Unmarshal(data, &rep))
	f, err := os.CreateTemp(t.TempDir(), "chart-*.svg")
	require.NoError(t, err)
	require.NoError(t, rep.WriteSVG(f))
	require.NoError(t, f.Close())
	if out := os.Getenv("BENCH_CHART_OUT"); out != "" {
		b, _ := os.ReadFile(f.Name())
		require.NoError(t, os.WriteFile(out, b, 0o644))
	}
}
