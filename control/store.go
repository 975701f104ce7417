package control

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/qtunnel/qtunnel/rules"
)

// RuleStore is the server's rule set under version control (A4, S6, S13):
// every accepted change builds and validates a whole new table aside, then
// swaps it in atomically under a version one higher. A change that does not
// validate is refused with the reason and the table in force keeps serving.
// The store keeps the last tables so that a client behind by a few versions
// gets only what changed for it. Safe for concurrent use.
type RuleStore struct {
	mu      sync.Mutex
	current rules.Store
	history []*rules.Table // oldest first; the last is current
	keep    int
	subs    []func(*rules.Table)
	prepare func(*rules.Table) (commit func(), err error)

	// The rules in force are base (the configuration file's) with
	// overlay (the admin API's changes) applied; see overlay.go.
	base      []rules.Rule
	overlay   Overlay
	conflicts []Conflict
	persist   func(Overlay) error // nil: the overlay lives in memory only

	// The rules clients declared, by client (declare.go), and those of
	// them left out because the operator's rules took their place.
	declared      map[string][]rules.Rule
	declConflicts []Conflict
}

// DefaultHistory is how many past versions a store keeps for deltas.
const DefaultHistory = 64

// NewRuleStore validates rs as version 1.
func NewRuleStore(rs []rules.Rule, keep int) (*RuleStore, error) {
	t, err := rules.NewTable(1, rs)
	if err != nil {
		return nil, err
	}
	if keep <= 0 {
		keep = DefaultHistory
	}
	s := &RuleStore{keep: keep, history: []*rules.Table{t}, base: slices.Clone(rs)}
	s.current.Swap(t)
	return s, nil
}

// UseOverlay applies o, the admin API's changes kept from an earlier run,
// on top of the rules in force, and saves every later change of the
// overlay with persist (nil: the overlay lives in memory only, and is lost
// at restart). Changes whose rule the file has edited since they were made
// are superseded (see overlay.go): they are taken out and returned. It
// returns the changes left out as conflicts too.
func (s *RuleStore) UseOverlay(o Overlay, persist func(Overlay) error) (superseded []Change, conflicts []Conflict, err error) {
	s.mu.Lock()
	s.persist = persist
	s.mu.Unlock()
	var saveErr error
	_, err = s.change(func([]rules.Rule) ([]rules.Rule, func(), error) {
		var kept Overlay
		kept, superseded = supersede(s.base, o)
		merged, c, err := merge(s.base, kept)
		if err != nil {
			return nil, nil, err
		}
		conflicts = c
		all, dc := withDeclared(merged, s.declared)
		return all, func() {
			s.conflicts, s.declConflicts = c, dc
			saveErr = s.keepOverlay(kept, len(superseded) > 0)
		}, nil
	}, true)
	if errors.Is(err, ErrUnchanged) {
		err = nil
	}
	return superseded, conflicts, cmp.Or(err, saveErr)
}

// Conflicts returns the admin API's changes left out of the rules in force
// because they no longer fit the configuration file's rules, and the rules
// clients declared that the operator's rules have since displaced.
func (s *RuleStore) Conflicts() []Conflict {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Concat(s.conflicts, s.declConflicts)
}

// Source says where the rule with id in force comes from: "api" (set
// through the admin API), "declared" (declared by its client; see
// declare.go) or "file".
func (s *RuleStore) Source(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.declaredBy(id) != "" {
		return "declared"
	}
	for _, ch := range s.overlay.Changes {
		if ch.ID == id && ch.Rule != nil {
			return "api"
		}
	}
	return "file"
}

// Sources returns Source of every rule in force, in one pass under one
// lock (Source per rule would scan the overlay and the declared rules for
// each).
func (s *RuleStore) Sources() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	api := make(map[string]bool, len(s.overlay.Changes))
	for _, ch := range s.overlay.Changes {
		if ch.Rule != nil {
			api[ch.ID] = true
		}
	}
	declared := map[string]bool{}
	for _, rs := range s.declared {
		for _, r := range rs {
			declared[r.ID] = true
		}
	}
	t := s.current.Load()
	out := make(map[string]string, t.Len())
	for _, r := range t.Rules() {
		switch {
		case declared[r.ID]:
			out[r.ID] = "declared"
		case api[r.ID]:
			out[r.ID] = "api"
		default:
			out[r.ID] = "file"
		}
	}
	return out
}

// Overlay returns the admin API's changes in force or in conflict.
func (s *RuleStore) Overlay() Overlay {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Overlay{Changes: slices.Clone(s.overlay.Changes)}
}

// Table returns the table in force.
func (s *RuleStore) Table() *rules.Table { return s.current.Load() }

// Store returns the atomic holder of the table in force, for the route
// stage to read.
func (s *RuleStore) Store() *rules.Store { return &s.current }

// Subscribe calls f with every new table, after it is in force, in order.
// f must not block: it runs while the store is locked.
func (s *RuleStore) Subscribe(f func(*rules.Table)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, f)
}

// OnChange sets what must be ready before a new table goes into force:
// prepare runs with the new table before the swap (it binds listeners, for
// example); if it fails, the change is refused and nothing changed. commit
// runs after the swap. Both run while the store is locked.
func (s *RuleStore) OnChange(prepare func(*rules.Table) (commit func(), err error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prepare = prepare
}

// ErrNoRule is returned when a change names a rule that does not exist.
var ErrNoRule = errors.New("no such rule")

// ErrUnchanged is returned when a change would leave the rules as they are.
var ErrUnchanged = errors.New("rules unchanged")

// Replace makes rs the configuration file's rules (a reloaded file): the
// rules in force become rs with the admin API's changes applied. A change
// whose rule the file has edited since it was made is superseded by the
// file's edit: it is taken out of the overlay and returned. Changes that no
// longer fit are left out and returned by Conflicts.
func (s *RuleStore) Replace(rs []rules.Rule) (*rules.Table, []Change, error) {
	var superseded []Change
	var saveErr error
	t, err := s.change(func([]rules.Rule) ([]rules.Rule, func(), error) {
		var kept Overlay
		kept, superseded = supersede(rs, s.overlay)
		merged, conflicts, err := merge(rs, kept)
		if err != nil {
			return nil, nil, err
		}
		all, dc := withDeclared(merged, s.declared)
		return all, func() {
			s.base, s.conflicts, s.declConflicts = slices.Clone(rs), conflicts, dc
			saveErr = s.keepOverlay(kept, len(superseded) > 0)
		}, nil
	}, true)
	if err != nil && !errors.Is(err, ErrUnchanged) {
		return t, nil, err
	}
	if saveErr != nil {
		return t, superseded, saveErr
	}
	return t, superseded, err
}

// Put adds r, or replaces the rule with r's id, as a change of the admin
// API: kept across reloads of the file (and restarts, with an overlay
// saved by UseOverlay's persist).
func (s *RuleStore) Put(r rules.Rule) (*rules.Table, error) {
	return s.apiChange(Change{ID: r.ID, Rule: &r, At: time.Now().UTC()})
}

// Delete removes the rule with id, as a change of the admin API.
func (s *RuleStore) Delete(id string) (*rules.Table, error) {
	if s.Table().ByID(id) == nil {
		return nil, fmt.Errorf("%w: %q", ErrNoRule, id)
	}
	return s.apiChange(Change{ID: id, At: time.Now().UTC()})
}

// apiChange applies ch on top of the overlay. A change that does not fit
// is refused, and nothing changes; an accepted one is saved.
func (s *RuleStore) apiChange(ch Change) (*rules.Table, error) {
	var saveErr error
	t, err := s.change(func([]rules.Rule) ([]rules.Rule, func(), error) {
		if c := s.declaredBy(ch.ID); c != "" {
			return nil, nil, fmt.Errorf("%w: rule %q of client %q", ErrDeclared, ch.ID, c)
		}
		ch.File = fileRule(s.base, ch.ID)
		next := s.overlay.with(ch)
		if ch.Rule == nil && !slices.ContainsFunc(s.base, func(r rules.Rule) bool { return r.ID == ch.ID }) {
			// A rule only the API had: no tombstone needed.
			next.Changes = next.Changes[:len(next.Changes)-1]
		}
		merged, conflicts, err := merge(s.base, next)
		if err != nil {
			return nil, nil, err
		}
		for _, c := range conflicts {
			if c.Change.ID == ch.ID {
				return nil, nil, c.Err
			}
		}
		all, dc := withDeclared(merged, s.declared)
		return all, func() {
			s.conflicts, s.declConflicts = conflicts, dc
			saveErr = s.keepOverlay(next, true)
		}, nil
	}, false)
	if err != nil {
		return t, err
	}
	return t, saveErr
}

// keepOverlay puts o in force and, if it changed, saves it with persist.
// It runs under the store's lock, from change's keep: saves are made in
// the order of the changes, so a Put racing a reload cannot have the older
// overlay written last (and its change lost at the next restart).
func (s *RuleStore) keepOverlay(o Overlay, changed bool) error {
	s.overlay = o
	if !changed || s.persist == nil {
		return nil
	}
	if err := s.persist(o); err != nil {
		return fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	return nil
}

// ErrNotSaved is returned when a change of the admin API is in force but
// could not be saved: it would be lost at the next restart.
var ErrNotSaved = errors.New("the change is in force but could not be saved")

// change builds the table edit returns and puts it in force. edit runs
// under the store's lock; the state it returns to keep (keep, may be nil)
// is kept only if the table goes into force, or if it equals the one in
// force and keepUnchanged is set.
func (s *RuleStore) change(edit func([]rules.Rule) ([]rules.Rule, func(), error), keepUnchanged bool) (*rules.Table, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.current.Load()
	next, keep, err := edit(cur.Rules())
	if err != nil {
		return nil, err
	}
	t, err := rules.NewTable(cur.Version()+1, next)
	if err != nil {
		return nil, err
	}
	if keep == nil {
		keep = func() {}
	}
	if t.Hash() == cur.Hash() {
		if keepUnchanged {
			keep()
		}
		return cur, ErrUnchanged
	}
	var commit func()
	if s.prepare != nil {
		if commit, err = s.prepare(t); err != nil {
			return nil, err
		}
	}
	s.current.Swap(t)
	keep()
	if commit != nil {
		commit()
	}
	s.history = append(s.history, t)
	if len(s.history) > s.keep {
		s.history = slices.Delete(s.history, 0, len(s.history)-s.keep)
	}
	for _, f := range s.subs {
		f(t)
	}
	return t, nil
}

// ClientDelta is what one client must change to go from an earlier
// version to the table in force.
type ClientDelta struct {
	Upsert []rules.Rule
	Delete []string
}

// DeltaFor returns client's changes from version from, whose rules for the
// client hash to fromHash, to t (a table the store made). It returns false
// when the store does not hold that version with that content (the client
// was behind by too much, or saw another server's version): the client
// then needs a snapshot.
func (s *RuleStore) DeltaFor(client string, from uint64, fromHash []byte, t *rules.Table) (ClientDelta, bool) {
	s.mu.Lock()
	var old *rules.Table
	for _, h := range s.history {
		if h.Version() == from {
			old = h
			break
		}
	}
	s.mu.Unlock()
	if old == nil {
		return ClientDelta{}, false
	}
	before := old.ForClient(client)
	if h := rules.Hash(before); string(h[:]) != string(fromHash) {
		return ClientDelta{}, false
	}
	return Diff(before, t.ForClient(client)), true
}

// Diff returns the upserts and deletes that turn rule set a into b.
func Diff(a, b []rules.Rule) ClientDelta {
	var d ClientDelta
	before := make(map[string]rules.Rule, len(a))
	for _, r := range a {
		before[r.ID] = r
	}
	for _, r := range b {
		if old, ok := before[r.ID]; !ok || !reflect.DeepEqual(old, r) {
			d.Upsert = append(d.Upsert, r)
		}
		delete(before, r.ID)
	}
	for id := range before {
		d.Delete = append(d.Delete, id)
	}
	slices.Sort(d.Delete)
	return d
}

// ApplyDelta returns rs with d applied: the client's side of Diff.
func ApplyDelta(rs []rules.Rule, d ClientDelta) []rules.Rule {
	out := make([]rules.Rule, 0, len(rs)+len(d.Upsert))
	gone := make(map[string]bool, len(d.Delete)+len(d.Upsert))
	for _, id := range d.Delete {
		gone[id] = true
	}
	for _, r := range d.Upsert {
		gone[r.ID] = true
	}
	for _, r := range rs {
		if !gone[r.ID] {
			out = append(out, r)
		}
	}
	return append(out, d.Upsert...)
}
