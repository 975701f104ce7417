package gateway

import "github.com/qtunnel/qtunnel/rules"

// CorruptRulesForTest replaces the client's rule table behind the control
// protocol's back, as a bug or a bit flip might: the periodic hash check
// must notice and repair it.
func (c *Client) CorruptRulesForTest(t *rules.Table) { c.rules.Swap(t) }

// RaceDetector says the test binary was built with -race, whose detector
// allows 8128 live goroutines: tests that start thousands size their load
// by it.
const RaceDetector = raceDetector
