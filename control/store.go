package control

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"

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
	s := &RuleStore{keep: keep, history: []*rules.Table{t}}
	s.current.Swap(t)
	return s, nil
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

// Replace makes rs the whole rule set (a reloaded configuration file).
func (s *RuleStore) Replace(rs []rules.Rule) (*rules.Table, error) {
	return s.change(func([]rules.Rule) ([]rules.Rule, error) { return slices.Clone(rs), nil })
}

// Put adds r, or replaces the rule with r's id.
func (s *RuleStore) Put(r rules.Rule) (*rules.Table, error) {
	return s.change(func(cur []rules.Rule) ([]rules.Rule, error) {
		for i := range cur {
			if cur[i].ID == r.ID {
				cur[i] = r
				return cur, nil
			}
		}
		return append(cur, r), nil
	})
}

// Delete removes the rule with id.
func (s *RuleStore) Delete(id string) (*rules.Table, error) {
	return s.change(func(cur []rules.Rule) ([]rules.Rule, error) {
		for i := range cur {
			if cur[i].ID == id {
				return slices.Delete(cur, i, i+1), nil
			}
		}
		return nil, fmt.Errorf("%w: %q", ErrNoRule, id)
	})
}

func (s *RuleStore) change(edit func([]rules.Rule) ([]rules.Rule, error)) (*rules.Table, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.current.Load()
	next, err := edit(cur.Rules())
	if err != nil {
		return nil, err
	}
	t, err := rules.NewTable(cur.Version()+1, next)
	if err != nil {
		return nil, err
	}
	if t.Hash() == cur.Hash() {
		return cur, ErrUnchanged
	}
	var commit func()
	if s.prepare != nil {
		if commit, err = s.prepare(t); err != nil {
			return nil, err
		}
	}
	s.current.Swap(t)
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
