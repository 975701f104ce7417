package gateway

import (
	"io"
	"log/slog"

	"github.com/qtunnel/qtunnel/config"
)

// NewLogger returns the logger cfg asks for, writing to w. Its level can
// be changed while it runs: a server given this logger applies a reloaded
// log.level to it.
func NewLogger(cfg config.Log, w io.Writer) (*slog.Logger, error) {
	level, err := config.ParseLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	lv := new(slog.LevelVar)
	lv.Set(level)
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(levelHandler{Handler: h, level: lv}), nil
}

// levelHandler is a handler whose level can change; the loggers derived
// from it (With) share it.
type levelHandler struct {
	slog.Handler
	level *slog.LevelVar
}

func (h levelHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return levelHandler{Handler: h.Handler.WithAttrs(as), level: h.level}
}

func (h levelHandler) WithGroup(name string) slog.Handler {
	return levelHandler{Handler: h.Handler.WithGroup(name), level: h.level}
}

// setLevel sets the level of log, if NewLogger made it; false otherwise.
func setLevel(log *slog.Logger, l slog.Level) bool {
	h, ok := log.Handler().(levelHandler)
	if ok {
		h.level.Set(l)
	}
	return ok
}

// requestRecord returns the level and message of the one record a finished
// request writes on each side: with the access log on (log.access), "access"
// at info; otherwise quiet, the record's own name ("request", "stream",
// "tcp connection"), at debug. The fields are the same either way. Check
// Enabled with the level before building the record, so that a request
// costs nothing when it is not logged.
func requestRecord(access bool, quiet string) (slog.Level, string) {
	if access {
		return slog.LevelInfo, "access"
	}
	return slog.LevelDebug, quiet
}
