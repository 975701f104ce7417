package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/bench"
	"github.com/qtunnel/qtunnel/internal/e2etest"
)

var binary string

func TestMain(m *testing.M) { e2etest.Main(m, &binary) }

// TestHarnessSmoke runs a few scenarios very briefly against real server
// and client processes and checks that every figure is there and sane.
func TestHarnessSmoke(t *testing.T) {
	var progress bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Options{
		Binary: binary, Duration: 300 * time.Millisecond, Runs: 1, BulkSize: 8 << 20, IdleConns: 20,
		Scenarios: []string{"h1-c1", "h1-c64", "h2-mux64", "grpc-unary-c64", "grpc-stream-c64", "ws-echo-c64",
			"bulk-up", "bulk-down", "tcp-up", "tcp-down", "idle", "quic-echo", "quic-stream-echo", "quic-bulk"},
		Progress: &progress,
	})
	require.NoError(t, err, progress.String())
	find := func(s, target string) bench.Row {
		for _, r := range rep.Rows {
			if r.Scenario == s && r.Target == target {
				return r
			}
		}
		t.Fatalf("no row %s/%s in:\n%s", s, target, progress.String())
		return bench.Row{}
	}
	for _, s := range []string{"h1-c1", "h1-c64", "h2-mux64", "grpc-unary-c64", "grpc-stream-c64", "ws-echo-c64"} {
		for _, target := range []string{"direct", "reverse", "forward"} {
			r := find(s, target)
			require.Positive(t, r.Load.RPS, "%s %s", s, target)
			require.Zero(t, r.Load.Errors, "%s %s: %s", s, target, r.Load.FirstError)
			require.Positive(t, r.Load.P50)
			require.Positive(t, r.HarnessCPUPer1k, "%s %s: the load generator and upstream spent CPU", s, target)
			require.NotNil(t, r.IO, "%s %s", s, target)
			require.Positive(t, r.IO.Harness.Reads+r.IO.Harness.Writes, "%s %s: the harness read and wrote TCP", s, target)
			if target != "direct" {
				require.Positive(t, r.IO.Server.Reads+r.IO.Client.Reads, "%s %s: the tunnel read TCP", s, target)
				require.Positive(t, r.Ratio)
				require.Positive(t, r.ServerPeakRSS)
				require.Positive(t, r.ServerCPUPer1k+r.ClientCPUPer1k, "the tunnel processes spent CPU")
			}
		}
	}
	for _, s := range []string{"bulk-up", "bulk-down"} {
		require.Positive(t, find(s, "reverse").MiBps)
		require.Positive(t, find(s, "forward").Ratio, "ratio to raw quic-go")
	}
	for _, target := range []string{"direct", "reverse", "forward"} {
		for _, s := range []string{"tcp-up", "tcp-down"} {
			require.Positive(t, find(s, target).MiBps, "%s %s", s, target)
		}
	}
	require.Positive(t, find("quic-bulk", "quic").MiBps)
	require.Positive(t, find("quic-echo", "quic").Load.RPS)
	require.Zero(t, find("quic-echo", "quic").Load.Errors, find("quic-echo", "quic").Load.FirstError)
	require.Positive(t, find("quic-echo", "quic").HarnessCPUPer1k, "both raw QUIC ends run in the harness")
	require.Positive(t, find("quic-stream-echo", "quic").Load.RPS)
	require.Zero(t, find("quic-stream-echo", "quic").Load.Errors, find("quic-stream-echo", "quic").Load.FirstError)
	require.NotZero(t, find("idle", "reverse").ServerPeakRSS)
	require.NotEmpty(t, rep.Bars)
	require.Contains(t, progress.String(), "h1-c64")

	var table, js, svg bytes.Buffer
	rep.WriteTable(&table)
	require.Contains(t, table.String(), "the bar:")
	require.Contains(t, table.String(), "h1-c64")
	require.NoError(t, rep.WriteJSON(&js))
	var back bench.Report
	require.NoError(t, json.Unmarshal(js.Bytes(), &back))
	require.Len(t, back.Rows, len(rep.Rows))
	require.NoError(t, rep.WriteSVG(&svg))
	require.True(t, strings.HasPrefix(svg.String(), "<svg"))
	require.Contains(t, svg.String(), "h1-c64")
}

func TestUnknownScenario(t *testing.T) {
	_, err := bench.Run(context.Background(), bench.Options{Binary: binary, Scenarios: []string{"nope"}})
	require.ErrorContains(t, err, `unknown scenario "nope"`)
}
