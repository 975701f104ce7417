package control_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
)

func revRule(id, client, host string) rules.Rule {
	return rules.Rule{ID: id, Client: client, Direction: rules.Reverse, Host: host, Upstream: "http://127.0.0.1:3000"}
}

// TestAPIChangesSurviveFileReloads: the admin API's changes (a rule added,
// a file rule replaced, a file rule deleted) stay in force when the file is
// reloaded, and every change is saved.
func TestAPIChangesSurviveFileReloads(t *testing.T) {
	t.Parallel()
	file := []rules.Rule{revRule("web", "c1", "web.test"), revRule("old", "c1", "old.test")}
	s, err := control.NewRuleStore(file, 0)
	require.NoError(t, err)
	var saved []control.Overlay
	_, _, err = s.UseOverlay(control.Overlay{}, func(o control.Overlay) error { saved = append(saved, o); return nil })
	require.NoError(t, err)

	_, err = s.Put(revRule("api", "c1", "api.test"))
	require.NoError(t, err)
	changed := revRule("web", "c1", "web.test")
	changed.PathPrefix = "/v2"
	_, err = s.Put(changed)
	require.NoError(t, err)
	_, err = s.Delete("old")
	require.NoError(t, err)
	require.Len(t, saved, 3, "each change is saved")
	require.Equal(t, "api", s.Source("api"))
	require.Equal(t, "api", s.Source("web"))

	// The file is reloaded (a comment added, and a rule of its own).
	file = append(file, revRule("new", "c1", "new.test"))
	_, _, err = s.Replace(file)
	require.NoError(t, err)
	tb := s.Table()
	require.NotNil(t, tb.ByID("api"), "a rule added through the API stays")
	require.Equal(t, "/v2", tb.ByID("web").PathPrefix, "a rule replaced through the API stays replaced")
	require.Nil(t, tb.ByID("old"), "a rule deleted through the API stays deleted")
	require.NotNil(t, tb.ByID("new"), "the file's new rule is in force")
	require.Equal(t, "file", s.Source("new"))
	require.Empty(t, s.Conflicts())

	// Deleting a rule only the API had leaves no tombstone behind.
	_, err = s.Delete("api")
	require.NoError(t, err)
	for _, ch := range s.Overlay().Changes {
		require.NotEqual(t, "api", ch.ID)
	}
}

// TestAPIChangeThatNoLongerFitsIsReportedNotDropped: when the file gives a
// host to another client, the API's rule for it is left out of the rules
// in force, reported, and kept until resolved.
func TestAPIChangeThatNoLongerFitsIsReportedNotDropped(t *testing.T) {
	t.Parallel()
	s, err := control.NewRuleStore([]rules.Rule{revRule("web", "c1", "web.test")}, 0)
	require.NoError(t, err)
	_, err = s.Put(revRule("shop", "c1", "shop.test"))
	require.NoError(t, err)

	_, _, err = s.Replace([]rules.Rule{revRule("web", "c1", "web.test"), revRule("theirs", "c2", "shop.test")})
	require.NoError(t, err)
	require.Nil(t, s.Table().ByID("shop"), "left out of the rules in force")
	require.NotNil(t, s.Table().ByID("theirs"))
	cs := s.Conflicts()
	require.Len(t, cs, 1)
	require.Equal(t, "shop", cs[0].Change.ID)
	require.Contains(t, cs[0].String(), `rule "shop" from the admin API`)
	require.Contains(t, cs[0].Err.Error(), "belongs to client")
	require.Len(t, s.Overlay().Changes, 1, "kept until someone resolves it")

	// Resolved by the file: the API's rule comes back into force.
	_, _, err = s.Replace([]rules.Rule{revRule("web", "c1", "web.test")})
	require.NoError(t, err)
	require.NotNil(t, s.Table().ByID("shop"))
	require.Empty(t, s.Conflicts())

	// A PUT that does not fit is refused outright, and not kept.
	_, _, err = s.Replace([]rules.Rule{revRule("web", "c1", "web.test"), revRule("theirs", "c2", "shop2.test")})
	require.NoError(t, err)
	_, err = s.Put(revRule("grab", "c1", "shop2.test"))
	require.Error(t, err)
	for _, ch := range s.Overlay().Changes {
		require.NotEqual(t, "grab", ch.ID)
	}
}

// TestLaterFileEditSupersedesAPIChange: the latest edit of a rule wins.
// An API change stays in force while the file's rule of its id is as it
// was when the change was made; once the file edits that rule (changes,
// adds or removes it), at a reload or while the server was down, the
// file's edit is in force and the API's change is reported as superseded
// and taken out of the saved overlay.
func TestLaterFileEditSupersedesAPIChange(t *testing.T) {
	t.Parallel()
	withPrefix := func(r rules.Rule, p string) rules.Rule { r.PathPrefix = p; return r }
	web, dyn := revRule("web", "c1", "web.test"), revRule("dyn", "c1", "dyn.test")
	s, err := control.NewRuleStore([]rules.Rule{web}, 0)
	require.NoError(t, err)
	var saved control.Overlay
	_, _, err = s.UseOverlay(control.Overlay{}, func(o control.Overlay) error { saved = o; return nil })
	require.NoError(t, err)

	// The API sets a rule the file does not have, and changes one it has.
	_, err = s.Put(withPrefix(dyn, "/api"))
	require.NoError(t, err)
	_, err = s.Put(withPrefix(web, "/api"))
	require.NoError(t, err)

	// A reload with the file as it was: both API changes stay.
	_, sup, err := s.Replace([]rules.Rule{web})
	require.ErrorIs(t, err, control.ErrUnchanged)
	require.Empty(t, sup)
	require.Equal(t, "/api", s.Table().ByID("dyn").PathPrefix)

	// The file now adds dyn: its edit is the newer, the API's is superseded.
	_, sup, err = s.Replace([]rules.Rule{web, withPrefix(dyn, "/file")})
	require.NoError(t, err)
	require.Len(t, sup, 1)
	require.Equal(t, "dyn", sup[0].ID)
	require.Equal(t, "/file", s.Table().ByID("dyn").PathPrefix)
	require.Equal(t, "file", s.Source("dyn"))
	require.Equal(t, "/api", s.Table().ByID("web").PathPrefix, "web's file rule was not edited: the API's change stays")
	require.Len(t, saved.Changes, 1, "the superseded change is taken out of the saved overlay")

	// The API deletes dyn; then the file removes dyn too: nothing to
	// supersede in force (dyn stays gone), and the tombstone goes.
	_, err = s.Delete("dyn")
	require.NoError(t, err)
	require.Nil(t, s.Table().ByID("dyn"))
	_, sup, err = s.Replace([]rules.Rule{web})
	require.ErrorIs(t, err, control.ErrUnchanged)
	require.Len(t, sup, 1)
	require.Nil(t, s.Table().ByID("dyn"))

	// While the server was down, the file changed web: at the restart the
	// file's edit wins over the saved API change.
	s2, err := control.NewRuleStore([]rules.Rule{withPrefix(web, "/new")}, 0)
	require.NoError(t, err)
	sup, conflicts, err := s2.UseOverlay(saved, func(o control.Overlay) error { saved = o; return nil })
	require.NoError(t, err)
	require.Empty(t, conflicts)
	require.Len(t, sup, 1)
	require.Equal(t, "/new", s2.Table().ByID("web").PathPrefix)
	require.Empty(t, saved.Changes)
}

// TestOverlayFile: the overlay is written atomically, owner-only, and read
// back; a missing file is an empty overlay; a save that fails says the
// change is in force but not saved.
func TestOverlayFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o, err := control.LoadOverlay(dir)
	require.NoError(t, err)
	require.Empty(t, o.Changes)

	r := revRule("api", "c1", "api.test")
	want := control.Overlay{Changes: []control.Change{{ID: "api", Rule: &r}, {ID: "gone"}}}
	require.NoError(t, control.SaveOverlay(dir, want))
	fi, err := os.Stat(filepath.Join(dir, control.OverlayFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	got, err := control.LoadOverlay(dir)
	require.NoError(t, err)
	require.Equal(t, want, got)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left behind")

	require.NoError(t, os.WriteFile(filepath.Join(dir, control.OverlayFile), []byte("{not json"), 0o600))
	_, err = control.LoadOverlay(dir)
	require.ErrorContains(t, err, control.OverlayFile)

	s, err := control.NewRuleStore(nil, 0)
	require.NoError(t, err)
	_, _, err = s.UseOverlay(control.Overlay{}, func(control.Overlay) error { return errors.New("disk full") })
	require.NoError(t, err)
	_, err = s.Put(r)
	require.ErrorIs(t, err, control.ErrNotSaved)
	require.NotNil(t, s.Table().ByID("api"), "in force, though not saved")
}

// TestOverlaySavesFollowTheChanges: API changes and file reloads made at
// once are saved in the order they take effect, so the overlay saved last
// is the one in force (a save made after the store's lock was released
// could write an older overlay last, and lose a change at the restart).
func TestOverlaySavesFollowTheChanges(t *testing.T) {
	t.Parallel()
	file := []rules.Rule{revRule("web", "c1", "web.test")}
	s, err := control.NewRuleStore(file, 0)
	require.NoError(t, err)
	var mu sync.Mutex
	var last control.Overlay
	_, _, err = s.UseOverlay(control.Overlay{}, func(o control.Overlay) error {
		mu.Lock()
		last = o
		mu.Unlock()
		return nil
	})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			_, err := s.Put(revRule(fmt.Sprintf("api%d", i), "c1", fmt.Sprintf("api%d.test", i)))
			assert.NoError(t, err)
		})
		wg.Go(func() {
			// The file edits web each time: the API's change of web, if
			// any, is superseded and the overlay saved again.
			_, _ = s.Put(revRule("web", "c1", fmt.Sprintf("web%d.test", i)))
			_, _, _ = s.Replace([]rules.Rule{revRule("web", "c1", fmt.Sprintf("file%d.test", i))})
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, s.Overlay(), last, "the overlay saved last is the one in force")
	ids := 0
	for _, ch := range last.Changes {
		if strings.HasPrefix(ch.ID, "api") {
			ids++
		}
	}
	require.Equal(t, 40, ids, "no API change was lost")
}
