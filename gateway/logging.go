package gateway

import (
	"io"
	"log/slog"

	"github.com/qtunnel/qtunnel/config"
)

// NewLogger returns the logger cfg asks for, writing to w.
func NewLogger(cfg config.Log, w io.Writer) (*slog.Logger, error) {
	level, err := config.ParseLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
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
