package gateway

import (
	"log/slog"
	"runtime"
	"runtime/debug"

	"github.com/qtunnel/qtunnel/config"
)

// ApplyRuntime applies the runtime settings of cfg to this process and logs
// what it changed. Call it once, at start, before serving.
func ApplyRuntime(cfg config.Runtime, log *slog.Logger) {
	if cfg.MaxProcs > 0 {
		prev := runtime.GOMAXPROCS(cfg.MaxProcs)
		log.Info("runtime: GOMAXPROCS set", "max_procs", cfg.MaxProcs, "was", prev)
	}
	if cfg.GCPercent > 0 {
		prev := debug.SetGCPercent(cfg.GCPercent)
		log.Info("runtime: GC target set", "gc_percent", cfg.GCPercent, "was", prev)
	}
	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(int64(cfg.MemoryLimit))
		log.Info("runtime: soft memory limit set", "memory_limit", cfg.MemoryLimit.String())
	}
}
