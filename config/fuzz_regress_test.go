package config_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
)

// Bugs the fuzz targets' invariants (a configuration that validates holds
// no NaN and no negative duration) caught, each with its regression seed in
// testdata/fuzz/FuzzParseServer.

// sample_ratio: .nan passed the range check (NaN is neither below 0 nor
// above 1) and reached the trace sampler; sync.config_poll_interval was not
// checked at all, and a negative one made the server's file watcher panic
// in time.NewTicker at start.
func TestNaNSampleRatioAndNegativePollIntervalAreRefused(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, doc, want string }{
		{"sample ratio NaN", "tracing:\n  sample_ratio: .nan # here\n", "tracing.sample_ratio: NaN is outside 0..1"},
		{"negative poll interval", "sync:\n  config_poll_interval: -1s # here\n", "sync.config_poll_interval: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := serverDoc(minimalServer) + tt.doc
			_, err := config.ParseServer("s.yaml", []byte(doc))
			ps := problems(t, err)
			require.Len(t, ps, 1)
			require.Equal(t, lineNo(t, doc, "# here"), ps[0].Line)
			require.Contains(t, ps[0].Error(), tt.want)
		})
	}
}

// FuzzParseClient: a file holding only "---" is a document whose implicit
// null the YAML parser puts on line 2, which the file does not have; every
// missing setting was reported at that line. Such problems now have no line.
func TestEmptyDocumentProblemsHaveNoLine(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{"---", "--- # nothing\n"} {
		_, err := config.ParseClient("c.yaml", []byte(doc))
		for _, p := range problems(t, err) {
			require.Zero(t, p.Line, "%q: %s", doc, p.Error())
		}
	}
}
