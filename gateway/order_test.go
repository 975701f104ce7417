package gateway_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/limit"
)

// chainDrawing is a chain as the docs draw it: names joined by "->", each
// name with an optional note in brackets ("egress (tunnel stream)").
var chainDrawing = regexp.MustCompile(`(?:[A-Za-z_\-]+(?:\s*\([^()]*\))?\s*->\s*)+[A-Za-z_\-]+(?:\s*\([^()]*\))?`)

var drawingNote = regexp.MustCompile(`\s*\([^()]*\)`)

// TestDocsDrawTheOrder fails if a chain drawn anywhere in the repository
// (Markdown files, Go comments and examples) differs from the order tables: any run of
// three or more names joined by "->" of which two or more are stage names
// must be the whole ingress or egress chain, in order. Notes in brackets
// after a name are allowed.
func TestDocsDrawTheOrder(t *testing.T) {
	t.Parallel()
	ing, egr := strings.Join(gateway.IngressOrder(), " -> "), strings.Join(gateway.EgressOrder(), " -> ")
	stageNames := map[string]bool{}
	for _, n := range append(gateway.IngressOrder(), gateway.EgressOrder()...) {
		stageNames[n] = true
	}
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "testdata", "results", "out", "bin", "dist":
				return filepath.SkipDir
			}
			return nil
		}
		ext := filepath.Ext(path)
		if ext != ".md" && ext != ".go" {
			return nil
		}
		if strings.HasSuffix(path, "_test.go") && !strings.HasSuffix(path, "example_test.go") {
			return nil // test code, not docs (examples are docs)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		for _, drawing := range chainDrawing.FindAllString(flatten(string(b), ext), -1) {
			names := strings.Split(drawNames(drawing), " -> ")
			known := 0
			for _, n := range names {
				if stageNames[n] {
					known++
				}
			}
			if len(names) < 3 || known < 2 {
				continue
			}
			checked++
			got := strings.Join(names, " -> ")
			assert.Contains(t, []string{ing, egr}, got,
				"%s draws the chain %q; the order tables (gateway/order.go) say\n  ingress: %s\n  egress:  %s", rel, drawing, ing, egr)
		}
		return nil
	})
	require.NoError(t, err)
	require.Positive(t, checked, "no chain drawing found: is the pattern right?")
	t.Logf("%d chain drawings match the order tables", checked)
}

// flatten joins the text's lines, without Go comment markers, so that a
// drawing broken over two lines is seen whole.
func flatten(text, ext string) string {
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if ext == ".go" {
			l = strings.TrimSpace(strings.TrimPrefix(l, "//"))
		}
		lines[i] = l
	}
	return strings.Join(lines, " ")
}

func drawNames(drawing string) string {
	parts := strings.Split(drawNote(drawing), "->")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
	}
	return strings.Join(parts, " -> ")
}

func drawNote(s string) string { return drawingNote.ReplaceAllString(s, "") }

// TestChainsFollowTheOrderTables: the chains a server builds are the order
// tables, and edits by name change them; an edit naming no stage of the
// chain stops the start with an error that lists the stages.
func TestChainsFollowTheOrderTables(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{"observe", "encode", "decode", "limit", "route", "ratelimit", "rule_stages", "request_limit", "egress"}, gateway.IngressOrder())
	require.Equal(t, []string{"observe", "encode", "decode", "limit", "route", "ratelimit", "breaker", "egress"}, gateway.EgressOrder())

	var log pipelinetest.Log
	c := serverConfig([]rules.Rule{reverseRule("rev", appHost, "http://127.0.0.1:1")})
	c.SetDefaults()
	require.NoError(t, c.Validate())
	s, err := gateway.NewServer(c, gateway.WithLogger(testLogger(t)),
		gateway.WithIngressEdits(pipeline.Before(egress.Name, &pipelinetest.Recorder{ID: "audit", Log: &log}), pipeline.Remove(limit.RequestName)),
		gateway.WithEgressEdits(pipeline.After("nope", &pipelinetest.Recorder{ID: "late", Log: &log})))
	if err == nil { // built at Start, if not at NewServer
		err = s.Start(context.Background())
	}
	require.ErrorContains(t, err, `egress chain: pipeline: after nope: no stage "nope" in the chain (stages: observe, encode, decode, limit, route, ratelimit, breaker, egress)`)
	require.False(t, slices.Contains(log.Events(), "provision late"), "nothing was built for a chain that failed")
}

// TestZeroConfigWorks: a zero configuration gets its defaults at
// construction (a server with no settings builds; Start would bind the
// default ports), and what has no default is refused at construction
// with what is missing, never later with an internal error.
func TestZeroConfigWorks(t *testing.T) {
	t.Parallel()
	_, err := gateway.NewServer(config.Server{}, gateway.WithLogger(testLogger(t)))
	require.NoError(t, err)
	_, err = gateway.NewClient(config.Client{})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "worker pool")
	t.Logf("NewClient(config.Client{}): %v", err)

	// Only the addresses set (loopback, any port): it starts and stops.
	s, err := gateway.NewServer(config.Server{Listen: "127.0.0.1:0", PublicHTTP: "127.0.0.1:0"}, gateway.WithLogger(testLogger(t)))
	require.NoError(t, err)
	require.NoError(t, s.Start(context.Background()))
	require.NoError(t, s.Shutdown(context.Background()))
}
