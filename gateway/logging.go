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
