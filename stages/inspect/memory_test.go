package inspect_test

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/inspect"
)

// zeros is a body of n bytes that costs nothing to make: Read hands back
// the caller's buffer as it is.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	k := int64(len(p))
	if k > z.n {
		k = z.n
	}
	z.n -= k
	return int(k), nil
}

func (z *zeros) Close() error { return nil }

// TestInspectorMemoryIsBounded sends 100,000 requests with 1 MiB bodies
// (and 1 MiB answers) through the inspector, over 10 rules, as the
// gateway's chain runs it: the request body read by the upstream stage,
// the answer's body by the delivery, then the exchange finished. The heap
// afterwards holds what the settings allow, whatever went through: the
// stated bound is 10 rules x 100 entries x (2 x 4 KiB previews + 2 KiB of
// fields and bookkeeping) = 10 MiB, and the test allows 16 MiB above
// the heap before it.
func TestInspectorMemoryIsBounded(t *testing.T) {
	const (
		requests = 100_000
		size     = 1 << 20
		ruleN    = 10
		bound    = 16 << 20
	)
	in := inspect.New(inspect.Config{})
	rs := make([]*rules.Rule, ruleN)
	for i := range rs {
		rs[i] = &rules.Rule{ID: "rule-" + strconv.Itoa(i), Direction: rules.Reverse}
	}
	upstream := pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
		if _, err := io.Copy(io.Discard, x.Request.Body); err != nil {
			return err
		}
		resp := x.NewResponse()
		resp.StatusCode, resp.Header = http.StatusOK, http.Header{"Content-Type": {"application/octet-stream"}}
		resp.Body, resp.ContentLength = &zeros{n: size}, size
		return nil
	})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var moved int64
	for i := range requests {
		x := pipeline.Acquire(pipeline.Egress)
		req, err := http.NewRequest(http.MethodPost, "http://app.test/upload/"+strconv.Itoa(i), &zeros{n: size})
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer secret")
		x.Request, x.Rule, x.Protocol, x.ID = req, rs[i%ruleN], pipeline.ProtoHTTP1, strconv.Itoa(i)
		err = in.Handle(context.Background(), x, upstream)
		require.NoError(t, err)
		n, err := io.Copy(io.Discard, x.Response.Body) // the delivery
		require.NoError(t, err)
		moved += n
		x.Status = http.StatusOK
		require.NoError(t, x.Finish(nil))
		x.Release()
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d requests, %d GiB of answers through the inspector; heap %d KiB before, %d KiB after (+%d KiB); bound +%d KiB",
		requests, moved>>30, before.HeapAlloc>>10, after.HeapAlloc>>10, grew>>10, bound>>10)
	assert.Less(t, grew, int64(bound), "the inspector's memory is bounded by its settings")

	es := in.Entries()
	require.Len(t, es, ruleN*inspect.DefaultEntries, "each rule keeps its last 100")
	assert.EqualValues(t, requests, es[0].Seq)
	assert.EqualValues(t, size, es[0].RequestBody.Size)
	assert.Len(t, es[0].RequestBody.Preview, inspect.DefaultBodyCapture)
	assert.True(t, es[0].ResponseBody.Truncated)
	runtime.KeepAlive(in)
}
