package control

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/qtunnel/qtunnel/rules"
)

// Rules a client declares are the store's third source, after the
// configuration file's and the admin API's (the operator's rules):
//
//   - a client declares its rules over its control stream; the server
//     checks each against what its configuration lets that client declare
//     (rules.Claims) and against every rule in force, and refuses the ones
//     that do not fit, each with its reason;
//   - the operator's rules win: a declared rule is added after them, and
//     when a later change of the operator's rules takes its host or port,
//     it is left out of the rules in force and listed with the conflicts
//     (it comes back if the operator's rule goes);
//   - declared rules live as long as the client's session: they are not
//     saved, a client declares them again on every connection, and they go
//     when the session ends (Undeclare).

// ErrDeclared is returned when the admin API tries to change a rule that a
// client declared: it is the client's, and goes with its session.
var ErrDeclared = errors.New("the rule was declared by a client; it goes with the client's session")

// ClaimCheck fills in and checks one claim of a client before it is
// added: it may set the rule's defaults (a free host or port, say) from
// inForce, the rules it would join, and returns why the claim is refused,
// or nil.
type ClaimCheck func(r *rules.Rule, inForce []rules.Rule) error

// Declare makes claims the rules client declares, replacing those it
// declared before. Each claim's ID must be unique and its Client client.
// check runs on each claim in turn; a claim it refuses, or that conflicts
// with a rule in force (another client's host, say), is left out. refused
// holds, for each claim, why it was left out, or nil. A declaration that
// changes nothing returns ErrUnchanged, with refused filled in.
func (s *RuleStore) Declare(client string, claims []rules.Rule, check ClaimCheck) (t *rules.Table, accepted []rules.Rule, refused []error, err error) {
	refused = make([]error, len(claims))
	t, err = s.change(func(cur []rules.Rule) ([]rules.Rule, func(), error) {
		// The rules in force without this client's earlier declaration.
		mine := idsOf(s.declared[client])
		in := slices.DeleteFunc(slices.Clone(cur), func(r rules.Rule) bool { return mine[r.ID] })
		// Its declared rules left out for conflicts stay out of the way
		// of the new ones: they are replaced.
		accepted = accepted[:0]
		for i := range claims {
			r := claims[i]
			if r.Client != client {
				refused[i] = fmt.Errorf("rule %q belongs to client %q, not %q", r.ID, r.Client, client)
				continue
			}
			if check != nil {
				if err := check(&r, in); err != nil {
					refused[i] = err
					continue
				}
			}
			if s.operatorID(r.ID) {
				refused[i] = fmt.Errorf("id %q is the id of one of the server's rules", r.ID)
				continue
			}
			try := append(slices.Clone(in), r)
			if _, err := rules.NewTable(1, try); err != nil {
				refused[i] = err
				continue
			}
			in = try
			accepted = append(accepted, r)
		}
		kept := slices.Clone(accepted)
		return in, func() {
			if s.declared == nil {
				s.declared = map[string][]rules.Rule{}
			}
			if len(kept) == 0 {
				delete(s.declared, client)
			} else {
				s.declared[client] = kept
			}
			s.declConflicts = slices.DeleteFunc(s.declConflicts, func(c Conflict) bool { return c.Change.Rule.Client == client })
		}, nil
	}, true)
	return t, accepted, refused, err
}

// Undeclare drops every rule client declared (its session ended).
func (s *RuleStore) Undeclare(client string) (*rules.Table, error) {
	s.mu.Lock()
	_, any := s.declared[client]
	s.mu.Unlock()
	if !any {
		return s.Table(), ErrUnchanged
	}
	t, _, _, err := s.Declare(client, nil, nil)
	return t, err
}

// Declared returns the rules each client declared, in force or left out
// for a conflict.
func (s *RuleStore) Declared() map[string][]rules.Rule {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]rules.Rule, len(s.declared))
	for c, rs := range s.declared {
		out[c] = slices.Clone(rs)
	}
	return out
}

// DeclaredBy returns the client that declared the rule with id, or "".
func (s *RuleStore) DeclaredBy(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.declaredBy(id)
}

func (s *RuleStore) declaredBy(id string) string {
	for c, rs := range s.declared {
		if slices.ContainsFunc(rs, func(r rules.Rule) bool { return r.ID == id }) {
			return c
		}
	}
	return ""
}

// operatorID says whether id is the id of a rule of the file or the admin
// API. Called with the store locked.
func (s *RuleStore) operatorID(id string) bool {
	if fileRule(s.base, id) != nil {
		return true
	}
	return slices.ContainsFunc(s.overlay.Changes, func(c Change) bool { return c.ID == id && c.Rule != nil })
}

// withDeclared returns operator, the operator's rules, with the declared
// rules added after them, and the declared rules left out because they no
// longer fit. Clients are taken in the order of their ids.
func withDeclared(operator []rules.Rule, declared map[string][]rules.Rule) ([]rules.Rule, []Conflict) {
	if len(declared) == 0 {
		return operator, nil
	}
	clients := slices.Sorted(maps.Keys(declared))
	all := slices.Clone(operator)
	for _, c := range clients {
		all = append(all, declared[c]...)
	}
	if _, err := rules.NewTable(1, all); err == nil {
		return all, nil
	}
	all = slices.Clone(operator)
	var left []Conflict
	for _, c := range clients {
		for _, r := range declared[c] {
			try := append(slices.Clone(all), r)
			if _, err := rules.NewTable(1, try); err != nil {
				r := r
				left = append(left, Conflict{Change: Change{ID: r.ID, Rule: &r}, Err: fmt.Errorf("declared by client %q: %w", c, err)})
				continue
			}
			all = try
		}
	}
	return all, left
}

func idsOf(rs []rules.Rule) map[string]bool {
	m := make(map[string]bool, len(rs))
	for _, r := range rs {
		m[r.ID] = true
	}
	return m
}
