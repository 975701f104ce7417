package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/qtunnel/qtunnel/rules"
)

// The server's rules come from two places, merged by one documented rule:
//
//   - the configuration file's rules (the base), read at start and at every
//     reload;
//   - the changes made through the admin API (the overlay): each PUT stores
//     the rule it sets, each DELETE a tombstone for the id, the latest
//     change of an id replacing earlier ones. The overlay is kept in the
//     server's state directory (OverlayFile) and survives reloads and
//     restarts.
//
// The rules in force are the base with the overlay applied in the order the
// changes were made: a stored rule replaces the file's rule of its id (or
// is added), a tombstone removes it.
//
// The latest edit of a rule wins, wherever it was made. Each change keeps
// the file's rule of its id as it was when the change was made (File); when
// the file's rule of that id is later edited (changed, added or removed,
// noticed at a reload or at a restart), the file's edit is the newer one:
// the API's change is superseded, taken out of the overlay, and reported
// (Replace's result, the server's log). Reloading an unchanged file, or a
// file with other rules changed, keeps the API's changes in force.
//
// A change of the overlay that no longer fits the base (the file now gives
// its host to another client, say) is a conflict: it is left out of the
// rules in force, reported (Conflicts, the server's log, /rules), and kept
// in the overlay until someone resolves it: by changing the file, or by
// replacing or deleting the rule through the API. Nothing is dropped
// silently.

// OverlayFile is the file in the state directory that holds the overlay.
const OverlayFile = "api-rules.json"

// Change is one rule changed through the API: Rule set, or nil for a
// deletion.
type Change struct {
	ID   string      `json:"id"`
	Rule *rules.Rule `json:"rule,omitempty"`
	At   time.Time   `json:"at"`
	// File is the configuration file's rule of this id when the change was
	// made (nil: the file had none). A file whose rule of this id differs
	// from it was edited since, and its edit supersedes this change.
	File *rules.Rule `json:"file_rule,omitempty"`
}

// Overlay is the changes made through the API, oldest first, one per id.
type Overlay struct {
	Changes []Change `json:"changes"`
}

// Conflict is an overlay change left out of the rules in force.
type Conflict struct {
	Change Change
	Err    error
}

func (c Conflict) String() string {
	what := "deletion"
	if c.Change.Rule != nil {
		what = "rule"
	}
	return fmt.Sprintf("%s %q from the admin API (%s): %v", what, c.Change.ID, c.Change.At.Format(time.RFC3339), c.Err)
}

// with returns o with ch as the latest change of its id.
func (o Overlay) with(ch Change) Overlay {
	out := slices.DeleteFunc(slices.Clone(o.Changes), func(c Change) bool { return c.ID == ch.ID })
	return Overlay{Changes: append(out, ch)}
}

// sameRule says whether a and b (nil: no rule) are the same rule.
func sameRule(a, b *rules.Rule) bool {
	if a == nil || b == nil {
		return a == b
	}
	return rules.Hash([]rules.Rule{*a}) == rules.Hash([]rules.Rule{*b})
}

// fileRule returns base's rule with id, or nil.
func fileRule(base []rules.Rule, id string) *rules.Rule {
	i := slices.IndexFunc(base, func(r rules.Rule) bool { return r.ID == id })
	if i < 0 {
		return nil
	}
	r := base[i]
	return &r
}

// supersede splits o into the changes still newer than base's rules and
// those whose rule the file has edited since they were made.
func supersede(base []rules.Rule, o Overlay) (kept Overlay, superseded []Change) {
	for _, ch := range o.Changes {
		if sameRule(ch.File, fileRule(base, ch.ID)) {
			kept.Changes = append(kept.Changes, ch)
		} else {
			superseded = append(superseded, ch)
		}
	}
	return kept, superseded
}

// apply returns base with the changes applied in order.
func apply(base []rules.Rule, changes []Change) []rules.Rule {
	out := slices.Clone(base)
	for _, ch := range changes {
		i := slices.IndexFunc(out, func(r rules.Rule) bool { return r.ID == ch.ID })
		switch {
		case ch.Rule == nil && i >= 0:
			out = slices.Delete(out, i, i+1)
		case ch.Rule != nil && i >= 0:
			out[i] = *ch.Rule
		case ch.Rule != nil:
			out = append(out, *ch.Rule)
		}
	}
	return out
}

// merge applies o to base. If the whole does not validate, the changes are
// applied one at a time and those that do not fit are left out, as
// conflicts. The base itself must validate.
func merge(base []rules.Rule, o Overlay) ([]rules.Rule, []Conflict, error) {
	all := apply(base, o.Changes)
	if _, err := rules.NewTable(1, all); err == nil {
		return all, nil, nil
	}
	if _, err := rules.NewTable(1, base); err != nil {
		return nil, nil, err
	}
	var kept []Change
	var conflicts []Conflict
	for _, ch := range o.Changes {
		try := append(slices.Clone(kept), ch)
		if _, err := rules.NewTable(1, apply(base, try)); err != nil {
			conflicts = append(conflicts, Conflict{Change: ch, Err: err})
			continue
		}
		kept = try
	}
	return apply(base, kept), conflicts, nil
}

// LoadOverlay reads the overlay from dir/OverlayFile; a missing file is an
// empty overlay.
func LoadOverlay(dir string) (Overlay, error) {
	var o Overlay
	b, err := os.ReadFile(filepath.Join(dir, OverlayFile))
	if errors.Is(err, os.ErrNotExist) {
		return o, nil
	}
	if err != nil {
		return o, err
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return o, fmt.Errorf("%s: %w", filepath.Join(dir, OverlayFile), err)
	}
	return o, nil
}

// SaveOverlay writes o to dir/OverlayFile atomically (a temporary file,
// synced, then renamed over it), readable by its owner only.
func SaveOverlay(dir string, o Overlay) error {
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, OverlayFile+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename, there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, OverlayFile))
}
