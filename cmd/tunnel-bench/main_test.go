package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/bench"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// result is what one run of the command produced.
type result struct {
	code           int
	stdout, stderr string
}

func runBenchCmd(args ...string) result {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// flags are every flag the help must show: the ones tunnel bench had.
var flags = []string{"--quick", "--duration", "--runs", "--bulk", "--idle", "--scenario", "--out", "--profile", "--binary", "--tunnel-env", "--help"}

// TestHelp: each way of asking for help prints it on standard output, with
// examples and every flag, and exits 0.
func TestHelp(t *testing.T) {
	t.Parallel()
	for _, ask := range []string{"-h", "--help", "-help"} {
		r := runBenchCmd(ask)
		require.Equal(t, 0, r.code, "%s: stderr: %s", ask, r.stderr)
		require.Empty(t, r.stderr)
		require.Contains(t, r.stdout, "Usage:\n  tunnel-bench [flags]")
		require.Regexp(t, `\nExamples:\n(  .*\n)*  tunnel-bench --quick\n`, r.stdout)
		for _, f := range flags {
			require.Contains(t, r.stdout, f+" ", "flag %s", f)
		}
	}
}

// TestUsageErrors: a mistake in the command line is said once, with the
// usage hint, and exits 2 without starting anything.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{args: []string{"-runs", "many"}, want: `invalid argument "many" for "--runs" flag: strconv.ParseInt: parsing "many": invalid syntax`},
		{args: []string{"-quick", "-bulk", "lots"}, want: `--bulk: "lots" is not a size (such as 4096, 64KiB, 10MiB)`},
		{args: []string{"--bogus"}, want: "unknown flag: --bogus"},
		{args: []string{"-out"}, want: "flag needs an argument: --out"},
		{args: []string{"h1-c1"}, want: `unexpected argument "h1-c1"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runBenchCmd(tt.args...)
			require.Equal(t, 2, r.code, "stderr: %s", r.stderr)
			require.Equal(t, "tunnel-bench: "+tt.want+"\nRun 'tunnel-bench --help' for usage.\n", r.stderr)
			require.Empty(t, r.stdout)
		})
	}
}

// TestUnknownScenario fails before anything is built or started.
func TestUnknownScenario(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	r := runBenchCmd("-scenario", "h1-c1,nope", "-out", out)
	require.Equal(t, 1, r.code, "stderr: %s", r.stderr)
	require.Equal(t, `tunnel-bench: unknown scenario "nope" (known: `+strings.Join(bench.ScenarioNames, ", ")+")\n", r.stderr)
	require.Empty(t, r.stdout)
}

// TestScenarioCompletion: the shell completes --scenario with the
// scenarios' names.
func TestScenarioCompletion(t *testing.T) {
	t.Parallel()
	r := runBenchCmd("__complete", "--scenario", "")
	require.Equal(t, 0, r.code, r.stderr)
	for _, s := range bench.ScenarioNames {
		require.Regexp(t, `(?m)^`+regexp.QuoteMeta(s)+`$`, r.stdout)
	}
}

// TestRunOneScenario runs one scenario briefly the way make bench-quick
// does, with the tunnel binary built from ./cmd/tunnel (no --binary), and
// checks the report it writes.
func TestRunOneScenario(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the tunnel binary and runs the harness")
	}
	out := filepath.Join(t.TempDir(), "results")
	r := runBenchCmd("-scenario", "h1-c1", "-duration", "300ms", "-runs", "1", "-out", out)
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	require.Contains(t, r.stderr, "building the tunnel binary: go build github.com/qtunnel/qtunnel/cmd/tunnel\n")
	require.Regexp(t, `(?m)^ +h1-c1 +reverse +\d+ req/s`, r.stdout)
	jsonPath, svgPath := filepath.Join(out, "results.json"), filepath.Join(out, "chart.svg")
	require.Contains(t, r.stdout, "wrote "+jsonPath+" and "+svgPath+"\n")

	data, err := os.ReadFile(jsonPath)
	require.NoError(t, err)
	var rep bench.Report
	require.NoError(t, json.Unmarshal(data, &rep))
	require.Equal(t, "tunnel-bench -duration 300ms -out "+out+" -runs 1 -scenario h1-c1", rep.Command)
	targets := map[string]bool{}
	for _, row := range rep.Rows {
		require.Equal(t, "h1-c1", row.Scenario)
		require.Zero(t, row.Load.Errors, "%s: %s", row.Target, row.Load.FirstError)
		require.Positive(t, row.Load.RPS, row.Target)
		targets[row.Target] = true
	}
	require.Equal(t, map[string]bool{"direct": true, "reverse": true, "forward": true}, targets)
	svg, err := os.ReadFile(svgPath)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(svg, []byte("<svg")), "chart.svg is an SVG")
	for _, role := range []string{"server", "client"} {
		_, err := os.Stat(filepath.Join(out, role+".log"))
		require.NoError(t, err, "the %s's log is kept beside the results", role)
	}
}
