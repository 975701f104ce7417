package pipeline_test

import (
	"context"
	"fmt"
	"net/http"

	"github.com/qtunnel/qtunnel/pipeline"
)

// A chain of two stages: the first stamps a request id, the second rejects
// requests without a rule. The first stage is the outermost, so its response
// phase runs last.
func ExampleNew() {
	stamp := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		x.ID = "req-1"
		err := next.Handle(ctx, x)
		fmt.Println("stamp saw:", err)
		return err
	})
	route := pipeline.StageFunc(func(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
		if x.Rule == nil {
			return pipeline.Rejectf(http.StatusNotFound, "no rule for request %s", x.ID)
		}
		return next.Handle(ctx, x)
	})
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{stamp, route})
	if err != nil {
		panic(err)
	}
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	err = chain.Handle(context.Background(), x)
	status, msg, _ := pipeline.Answer(err)
	fmt.Println(status, msg)
	// Output:
	// stamp saw: 404 no rule for request req-1
	// 404 no rule for request req-1
}
