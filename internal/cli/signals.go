package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// ShutdownContext returns a context that the first SIGINT or SIGTERM
// cancels, which starts a graceful stop. A second signal calls forced,
// which should end the process at once (os.Exit(ExitForced) in the
// binary). stop stops listening for the signals and cancels the context.
func ShutdownContext(parent context.Context, log *slog.Logger, forced func()) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case s, ok := <-sigs:
			if !ok {
				return // stopped
			}
			log.Info("signal received; shutting down (signal again to force)", "signal", s.String())
			cancel()
		case <-ctx.Done():
			return
		}
		if _, ok := <-sigs; ok {
			log.Error("second signal: forced exit")
			forced()
		}
	}()
	return ctx, func() { signal.Stop(sigs); cancel(); close(sigs) }
}

// OnHangup calls fn on each SIGHUP, one call at a time, until the returned
// stop is called; stop waits for a call in progress to end.
func OnHangup(fn func()) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-hup:
				fn()
			case <-done:
				return
			}
		}
	})
	return func() { signal.Stop(hup); close(done); wg.Wait() }
}
