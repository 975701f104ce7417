package pipeline_test

import (
	"context"
	"testing"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

// BenchmarkChain measures the chain's own cost: six no-op stages, the length
// of the design card's chain. It must report 0 allocs/op.
func BenchmarkChain(b *testing.B) {
	stages := make([]pipeline.Stage, 6)
	for i := range stages {
		stages[i] = pipelinetest.NoOp{}
	}
	c, err := pipeline.New(context.Background(), stages)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			x := pipeline.Acquire(pipeline.Ingress)
			if err := c.Handle(ctx, x); err != nil {
				b.Fatal(err)
			}
			x.Release()
		}
	})
}

func BenchmarkBufferPool(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			buf := pipeline.GetBuffer(64 << 10)
			buf.B = append(buf.B, 1)
			pipeline.PutBuffer(buf)
		}
	})
}

// BenchmarkChainThen is BenchmarkChain with a rule's own chain of two
// no-op stages run in the middle (Chain.Then), as the gateway runs a
// rule's stage list. It must report 0 allocs/op.
func BenchmarkChainThen(b *testing.B) {
	rule, err := pipeline.New(context.Background(), []pipeline.Stage{pipelinetest.NoOp{}, pipelinetest.NoOp{}})
	if err != nil {
		b.Fatal(err)
	}
	slot := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		return rule.Then(ctx, x, next)
	})
	c, err := pipeline.New(context.Background(), []pipeline.Stage{pipelinetest.NoOp{}, pipelinetest.NoOp{}, slot, pipelinetest.NoOp{}, pipelinetest.NoOp{}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			x := pipeline.Acquire(pipeline.Ingress)
			if err := c.Handle(ctx, x); err != nil {
				b.Fatal(err)
			}
			x.Release()
		}
	})
}
