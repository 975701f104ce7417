package gateway

import (
	"fmt"

	"github.com/qtunnel/qtunnel/rules"
)

// What the admin listener shows of a side's state: the rule table on
// /config (both sides) and GET /rules (the server's rules API), and the
// reason /readyz gives.

// ruleView is a rule as /config shows it.
type ruleView struct {
	rules.Rule
	// Source is where a server's rule comes from: "file" or "api" (GET
	// /rules only).
	Source string `json:"source,omitempty"`
}

// tableView is what /config shows of a rule table.
type tableView struct {
	Version uint64     `json:"version"`
	Hash    string     `json:"hash"`
	Rules   []ruleView `json:"rules"`
}

func viewOf(t *rules.Table) tableView {
	v := tableView{Version: t.Version(), Hash: t.HashHex(), Rules: []ruleView{}}
	for _, r := range t.Rules() {
		v.Rules = append(v.Rules, ruleView{Rule: r})
	}
	return v
}

// notReady is the reason /readyz gives.
func notReady(format string, args ...any) error { return fmt.Errorf(format, args...) }
