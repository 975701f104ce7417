package pipeline_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

func order(log *pipelinetest.Log, names ...string) pipeline.Order {
	var o pipeline.Order
	for _, n := range names {
		o = append(o, pipeline.Named{Name: n, Stage: &pipelinetest.Recorder{ID: n, Log: log}})
	}
	return o
}

// TestOrderEditsByName: stages go before or after a named stage, replace
// or remove one, in the order the edits are given; the chain built from
// the result runs them so.
func TestOrderEditsByName(t *testing.T) {
	t.Parallel()
	var log pipelinetest.Log
	o := order(&log, "decode", "route", "egress")
	rec := func(id string) pipeline.Stage { return &pipelinetest.Recorder{ID: id, Log: &log} }
	got, err := o.Apply(
		pipeline.Before("route", rec("auth")),
		pipeline.After("auth", rec("audit")),
		pipeline.Replace("egress", rec("fake-egress")),
		pipeline.Remove("decode"),
	)
	require.NoError(t, err)
	require.Equal(t, "auth -> audit -> route -> fake-egress", got.String())
	require.Equal(t, "decode -> route -> egress", o.String(), "the table edited is left as it was")

	c, err := got.Build(context.Background())
	require.NoError(t, err)
	require.Equal(t, got.Names(), c.Names())
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	require.NoError(t, c.Handle(context.Background(), x))
	var handled []string
	for _, e := range log.Events() {
		if e == "auth>" || e == "audit>" || e == "route>" || e == "fake-egress>" {
			handled = append(handled, e)
		}
	}
	require.Equal(t, []string{"auth>", "audit>", "route>", "fake-egress>"}, handled)
}

// TestOrderEditMistakes: a name not in the chain, a stage without a name,
// a nil stage or a second stage of a name the chain has are refused, and
// the error lists the names there are.
func TestOrderEditMistakes(t *testing.T) {
	t.Parallel()
	var log pipelinetest.Log
	o := order(&log, "decode", "route")
	_, err := o.Apply(pipeline.Before("rout", &pipelinetest.Recorder{ID: "x", Log: &log}))
	require.EqualError(t, err, `pipeline: before rout: no stage "rout" in the chain (stages: decode, route)`)
	_, err = o.Apply(pipeline.Remove("egress"))
	require.EqualError(t, err, `pipeline: remove egress: no stage "egress" in the chain (stages: decode, route)`)

	anon := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		return next.Handle(ctx, x)
	})
	_, err = o.Apply(pipeline.After("route", anon))
	require.ErrorContains(t, err, "must have a name")
	_, err = o.Apply(pipeline.After("route", nil))
	require.ErrorContains(t, err, "the stage is nil")
	_, err = o.Apply(pipeline.After("decode", &pipelinetest.Recorder{ID: "route", Log: &log}))
	require.EqualError(t, err, `pipeline: after decode: the chain has a stage "route" already (stages: decode, route)`)

	// Named gives a function a name; Replace may keep the name it replaces.
	got, err := o.Apply(pipeline.After("route", pipeline.Name("audit", anon)), pipeline.Replace("route", pipeline.Name("route", anon)))
	require.NoError(t, err)
	require.Equal(t, "decode -> route -> audit", got.String())
}

// TestNamedStageReachesLifecycle: a stage given a name by pipeline.Name is
// still provisioned, validated and closed.
func TestNamedStageReachesLifecycle(t *testing.T) {
	t.Parallel()
	var log pipelinetest.Log
	c, err := pipeline.New(context.Background(), []pipeline.Stage{pipeline.Name("renamed", &pipelinetest.Recorder{ID: "r", Log: &log})})
	require.NoError(t, err)
	require.Equal(t, []string{"renamed"}, c.Names())
	require.NoError(t, c.Close(context.Background()))
	require.Equal(t, []string{"provision r", "validate r", "close r"}, log.Events())
}

// TestChainThen: a chain run with Then goes on with the handler given
// where it ends (its stages' response phases after it), and one of its
// stages can stop the exchange before it.
func TestChainThen(t *testing.T) {
	t.Parallel()
	var log pipelinetest.Log
	inner, err := pipeline.New(context.Background(), []pipeline.Stage{&pipelinetest.Recorder{ID: "a", Log: &log}, &pipelinetest.Recorder{ID: "b", Log: &log}})
	require.NoError(t, err)
	rest := pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { log.Add("rest"); return nil })
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	require.NoError(t, inner.Then(context.Background(), x, rest))
	require.Equal(t, []string{"provision a", "provision b", "validate a", "validate b", "a>", "b>", "rest", "<b", "<a"}, log.Events())

	// Run alone, the same chain does not go on to a handler of an earlier run.
	require.NoError(t, inner.Handle(context.Background(), x))
	require.Equal(t, 1, countOf(log.Events(), "rest"))

	stop, err := pipeline.New(context.Background(), []pipeline.Stage{pipelinetest.Fail{Err: pipeline.Rejectf(403, "no")}})
	require.NoError(t, err)
	require.ErrorContains(t, stop.Then(context.Background(), x, rest), "403 no")
	require.Equal(t, 1, countOf(log.Events(), "rest"), "a stage that stops keeps the rest from running")
}

func countOf(events []string, e string) int {
	n := 0
	for _, v := range events {
		if v == e {
			n++
		}
	}
	return n
}

// TestStagesOfSomeProtocols: a stage that handles some protocols only is
// passed by for the others (a TCP rule's exchange, whose Request is nil,
// never reaches an HTTP stage); an exchange whose protocol is not known
// yet goes through it.
func TestStagesOfSomeProtocols(t *testing.T) {
	t.Parallel()
	var log pipelinetest.Log
	http := pipeline.ForProtocols(pipeline.HTTPProtocols, &pipelinetest.Recorder{ID: "http-only", Log: &log})
	named := pipeline.Name("renamed", http)
	c, err := pipeline.New(context.Background(), []pipeline.Stage{&pipelinetest.Recorder{ID: "all", Log: &log}, named})
	require.NoError(t, err)
	require.Equal(t, []string{"all", "renamed"}, c.Names())
	for _, tt := range []struct {
		proto pipeline.Protocol
		ran   bool
	}{{pipeline.ProtoTCP, false}, {pipeline.ProtoHTTP1, true}, {pipeline.ProtoGRPC, true}, {pipeline.ProtoUnknown, true}} {
		before := countOf(log.Events(), "http-only>")
		x := pipeline.Acquire(pipeline.Ingress)
		x.Protocol = tt.proto
		require.NoError(t, c.Handle(context.Background(), x))
		x.Release()
		require.Equal(t, tt.ran, countOf(log.Events(), "http-only>") > before, "protocol %s", tt.proto)
	}
	o, err := pipeline.Order{}.Apply()
	require.NoError(t, err)
	require.Empty(t, o)
	_, err = pipeline.Order{{Name: "a", Stage: pipelinetest.NoOp{}}}.Apply(pipeline.After("a", pipeline.ForProtocols(pipeline.HTTPProtocols, pipelinetest.NoOp{})))
	require.ErrorContains(t, err, "must have a name", "a stage without a name is refused by edits, wrapped or not")
}
