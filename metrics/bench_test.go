package metrics_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

// BenchmarkObserveStage measures the observe stage in front of a stage
// that does nothing: what metrics add to every request.
func BenchmarkObserveStage(b *testing.B) {
	reject := pipeline.Rejectf(http.StatusNotFound, "no route")
	overload := &pipeline.Reject{Status: http.StatusServiceUnavailable, RetryAfter: 1}
	for _, bc := range []struct {
		name string
		err  error
	}{
		{"ok", nil},
		{"reject404", reject},
		{"overload503", overload},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := metrics.New("server")
			c := newChain(b, m, func(*pipeline.Exchange) error { return bc.err })
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Protocol = pipeline.ProtoHTTP1
			if bc.err == nil {
				x.Rule = webRule
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				x.Status = 0
				if bc.err == nil {
					x.Status = http.StatusOK
				}
				_ = c.Handle(ctx, x)
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		m := metrics.New("server")
		c := newChain(b, m, func(*pipeline.Exchange) error { return nil })
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Protocol, x.Rule = pipeline.ProtoHTTP1, webRule
			for pb.Next() {
				x.Status = http.StatusOK
				_ = c.Handle(ctx, x)
			}
		})
	})
}

// BenchmarkChainWithoutObserve is the baseline: the same chain without
// the observe stage.
func BenchmarkChainWithoutObserve(b *testing.B) {
	c, err := pipeline.New(context.Background(), []pipeline.Stage{pipelinetest.NoOp{}, pipelinetest.NoOp{}})
	if err != nil {
		b.Fatal(err)
	}
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	x.Rule = webRule
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Handle(ctx, x)
	}
}
