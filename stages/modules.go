package stages

import (
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/auth"
	"github.com/qtunnel/qtunnel/stages/headers"
	"github.com/qtunnel/qtunnel/stages/ipfilter"
)

// Modules returns the stage modules a rule's stage list may name in the
// gateway as shipped, one line each. A gateway of your own adds its own
// with gateway.WithModules.
func Modules() []pipeline.Module {
	return []pipeline.Module{
		auth.Module,
		headers.Module,
		ipfilter.Module,
	}
}
