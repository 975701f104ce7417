package gateway

import (
	"fmt"
	"os"

	"github.com/qtunnel/qtunnel/control"
)

// keepAPIRules makes the rules changed through the admin API survive
// reloads and restarts: they are kept in the state directory
// (control.OverlayFile) and merged with the file's rules by the rule
// control/overlay.go documents. Without a state directory (a server
// configured in code) they survive reloads only.
func (s *Server) keepAPIRules() error {
	dir := s.cfg.StateDirectory(s.o.configFile)
	if dir == "" {
		_, _, err := s.store.UseOverlay(control.Overlay{}, nil)
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	o, err := control.LoadOverlay(dir)
	if err != nil {
		return fmt.Errorf("rules changed through the admin API: %w", err)
	}
	superseded, conflicts, err := s.store.UseOverlay(o, func(o control.Overlay) error { return control.SaveOverlay(dir, o) })
	s.logSuperseded(superseded)
	if err != nil {
		return fmt.Errorf("rules changed through the admin API (%s): %w", dir, err)
	}
	if n := len(o.Changes) - len(superseded); n > 0 {
		s.log.Info("rules changed through the admin API kept in force", "changes", n, "file", dir+"/"+control.OverlayFile)
	}
	s.logConflicts(conflicts)
	return nil
}

// logConflicts says, at warn, which of the admin API's changes are left
// out of the rules in force, and why.
func (s *Server) logConflicts(cs []control.Conflict) {
	for _, c := range cs {
		s.log.Warn("a rule changed through the admin API conflicts with the configuration file; left out until resolved",
			"rule", c.Change.ID, "changed_at", c.Change.At, "err", c.Err)
	}
}

// logSuperseded says, at warn, which of the admin API's changes gave way to
// a later edit of the same rule in the configuration file.
func (s *Server) logSuperseded(cs []control.Change) {
	for _, c := range cs {
		s.log.Warn("the configuration file's edit of a rule supersedes the earlier change made through the admin API",
			"rule", c.ID, "api_changed_at", c.At)
	}
}
