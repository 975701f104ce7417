package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/panjf2000/ants/v2"
	"github.com/valyala/bytebufferpool"
)

// Buffer is a pooled byte buffer; use B directly.
type Buffer = bytebufferpool.ByteBuffer

var buffers bytebufferpool.Pool

// GetBuffer returns a pooled buffer with len(B) == 0 and cap(B) >= n. Give it
// back with PutBuffer exactly once; its owner is whoever holds it last.
func GetBuffer(n int) *Buffer {
	b := buffers.Get()
	if cap(b.B) < n {
		b.B = make([]byte, 0, n)
	}
	return b
}

// PutBuffer returns b to the pool. b must not be used after.
func PutBuffer(b *Buffer) {
	// The pool sizes what it keeps by len(B) at Put; our buffers are used
	// as scratch up to their capacity, so report that.
	b.B = b.B[:cap(b.B)]
	buffers.Put(b)
}

// WorkerPool runs tasks on a bounded set of goroutines (ants). It never
// queues: when every worker is busy, Invoke fails at once with ErrOverloaded
// so the caller can refuse the work with a retryable answer (S3).
type WorkerPool[T any] struct {
	p *ants.PoolWithFuncGeneric[T]
}

// NewWorkerPool returns a pool of at most size goroutines running fn.
// A task that panics is recovered and reported to onPanic (which may be nil);
// the worker survives.
func NewWorkerPool[T any](size int, fn func(T), onPanic func(any)) (*WorkerPool[T], error) {
	if size <= 0 {
		return nil, fmt.Errorf("pipeline: worker pool size %d must be positive", size)
	}
	opts := []ants.Option{ants.WithNonblocking(true)}
	if onPanic != nil {
		opts = append(opts, ants.WithPanicHandler(onPanic))
	}
	p, err := ants.NewPoolWithFuncGeneric(size, fn, opts...)
	if err != nil {
		return nil, err
	}
	return &WorkerPool[T]{p: p}, nil
}

// Invoke runs fn(arg) on a free worker, or returns ErrOverloaded when none is
// free and ErrClosed after Close.
func (w *WorkerPool[T]) Invoke(arg T) error {
	err := w.p.Invoke(arg)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ants.ErrPoolOverload):
		return ErrOverloaded
	case errors.Is(err, ants.ErrPoolClosed):
		return ErrClosed
	}
	return err
}

// Running returns the number of busy workers.
func (w *WorkerPool[T]) Running() int { return w.p.Running() }

// Cap returns the pool's size.
func (w *WorkerPool[T]) Cap() int { return w.p.Cap() }

// Close stops accepting tasks and waits, until ctx is done, for the running
// ones to finish.
func (w *WorkerPool[T]) Close(ctx context.Context) error {
	err := w.p.ReleaseContext(ctx)
	if errors.Is(err, ants.ErrPoolClosed) {
		return nil
	}
	return err
}

// ErrClosed is returned by resources used after Close.
var ErrClosed = errors.New("closed")
