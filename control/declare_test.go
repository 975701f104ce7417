package control_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
)

// TestDeclaredRulesYieldToTheOperators: a declared rule joins the rules in
// force after the operator's; when the file later takes its host it is
// left out and listed as a conflict, and it comes back when the file's
// rule goes. The admin API cannot change it, and Undeclare drops it.
func TestDeclaredRulesYieldToTheOperators(t *testing.T) {
	t.Parallel()
	file := []rules.Rule{revRule("web", "c1", "web.test")}
	s, err := control.NewRuleStore(file, 0)
	require.NoError(t, err)

	_, accepted, refused, err := s.Declare("c2", []rules.Rule{
		revRule("c2.app", "c2", "app.test"),
		revRule("c2.web", "c2", "web.test"), // the file's host, of another client
		revRule("c2.steal", "c1", "steal.test"),
	}, nil)
	require.NoError(t, err)
	require.Len(t, accepted, 1)
	assert.NoError(t, refused[0])
	assert.ErrorContains(t, refused[1], `host "web.test" belongs to client "c1"`)
	assert.ErrorContains(t, refused[2], `belongs to client "c1", not "c2"`)
	assert.Equal(t, "declared", s.Source("c2.app"))
	assert.Equal(t, "file", s.Source("web"))
	assert.Equal(t, map[string]string{"web": "file", "c2.app": "declared"}, s.Sources(), "Sources agrees with Source")

	// Declaring the same again changes nothing.
	_, _, _, err = s.Declare("c2", []rules.Rule{revRule("c2.app", "c2", "app.test")}, nil)
	require.ErrorIs(t, err, control.ErrUnchanged)

	// The API cannot change a declared rule.
	_, err = s.Put(revRule("c2.app", "c2", "other.test"))
	require.ErrorIs(t, err, control.ErrDeclared)
	_, err = s.Delete("c2.app")
	require.ErrorIs(t, err, control.ErrDeclared)

	// The file takes the host: the declared rule is left out, not lost.
	_, _, err = s.Replace(append(file, revRule("app", "c1", "app.test")))
	require.NoError(t, err)
	assert.Nil(t, s.Table().ByID("c2.app"))
	require.Len(t, s.Conflicts(), 1)
	assert.Contains(t, s.Conflicts()[0].Err.Error(), `declared by client "c2"`)
	// ... and comes back when the file gives the host up.
	_, _, err = s.Replace(file)
	require.NoError(t, err)
	assert.NotNil(t, s.Table().ByID("c2.app"))
	assert.Empty(t, s.Conflicts())

	// A check refuses claims with its reason.
	_, _, refused, err = s.Declare("c2", []rules.Rule{revRule("c2.app", "c2", "app.test")},
		func(r *rules.Rule, _ []rules.Rule) error { return rules.ErrNotClaimable })
	require.NoError(t, err, "the earlier declaration is replaced by an empty one")
	require.ErrorIs(t, refused[0], rules.ErrNotClaimable)
	assert.Nil(t, s.Table().ByID("c2.app"))

	_, _, _, err = s.Declare("c2", []rules.Rule{revRule("c2.app", "c2", "app.test")}, nil)
	require.NoError(t, err)
	_, err = s.Undeclare("c2")
	require.NoError(t, err)
	assert.Nil(t, s.Table().ByID("c2.app"))
	assert.Empty(t, s.Declared())
	_, err = s.Undeclare("c2")
	require.ErrorIs(t, err, control.ErrUnchanged)
}
