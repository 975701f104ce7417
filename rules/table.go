package rules

import (
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
)

// Table is an immutable, validated and indexed rule set. Build one with
// NewTable, then share it freely: nothing in it changes. A nil *Table
// matches nothing.
type Table struct {
	version uint64
	hash    [32]byte
	rules   []Rule
	byID    map[string]*Rule
	// routes maps a listener key ("" for the server's public listener, the
	// listen address for forward rules) to its candidates, sorted so that
	// the first match wins: exact hosts before the catch-all, longer path
	// prefixes before shorter ones.
	routes map[string][]*Rule
	// public indexes the server's public listener's rules (routes[""])
	// by host, each host's sorted as routes' are: a match and a
	// conflict check look at one host's rules, not all of them.
	public map[string][]*Rule
	// byClient holds the indexes in rules of each client's rules.
	byClient map[string][]int
}

// NewTable normalises and validates rs and builds a table at version. Errors
// are *FieldError (one field of one rule) or a conflict between two rules;
// the first one found is returned.
func NewTable(version uint64, rs []Rule) (*Table, error) {
	t := &Table{
		version:  version,
		rules:    slices.Clone(rs),
		byID:     make(map[string]*Rule, len(rs)),
		routes:   make(map[string][]*Rule),
		public:   make(map[string][]*Rule),
		byClient: make(map[string][]int),
	}
	for i := range t.rules {
		r := &t.rules[i]
		r.Normalize()
		if err := r.Validate(i); err != nil {
			return nil, err
		}
		if other, dup := t.byID[r.ID]; dup {
			return nil, &FieldError{Index: i, Field: "id", Msg: fmt.Sprintf("%q is already used by another rule (client %q)", r.ID, other.Client)}
		}
		t.byID[r.ID] = r
		t.byClient[r.Client] = append(t.byClient[r.Client], i)
		key := r.listenerKey()
		// The rules r may conflict with: those of its listener; on the
		// public listener, where only the host and path tell rules apart,
		// those of its host.
		cands := t.routes[key]
		if key == "" {
			cands = t.public[r.Host]
		}
		// Ownership first: a host or a port of another client is the
		// conflict worth naming, whatever else matches.
		for _, other := range cands {
			if key != "" && other.Client != r.Client {
				return nil, &FieldError{Index: i, Field: "listen", Msg: fmt.Sprintf(
					"listen address %s belongs to client %q (rule %q)", r.Listen, other.Client, other.ID)}
			}
			if key == "" && other.Host == r.Host && other.Client != r.Client {
				return nil, &FieldError{Index: i, Field: "host", Msg: fmt.Sprintf(
					"host %q belongs to client %q (rule %q)", r.Host, other.Client, other.ID)}
			}
		}
		for _, other := range cands {
			if other.Host == r.Host && other.PathPrefix == r.PathPrefix {
				return nil, &FieldError{Index: i, Field: conflictField(r), Msg: fmt.Sprintf(
					"%s%s on %s is already routed by rule %q", r.Host, r.PathPrefix, describeListener(key), other.ID)}
			}
			if key != "" && (other.Protocol != r.Protocol || other.Direction != r.Direction || other.ListenTLS != r.ListenTLS || r.Protocol == ProtoTCP) {
				return nil, &FieldError{Index: i, Field: "listen", Msg: fmt.Sprintf(
					"listen address %s is already used by rule %q", r.Listen, other.ID)}
			}
		}
		t.routes[key] = append(t.routes[key], r)
		if key == "" {
			t.public[r.Host] = append(t.public[r.Host], r)
		}
	}
	for _, cands := range t.routes {
		sortCandidates(cands)
	}
	for _, cands := range t.public {
		sortCandidates(cands)
	}
	t.hash = Hash(t.rules)
	return t, nil
}

// sortCandidates orders a listener's (or a host's) rules so that the first
// match wins: exact hosts before the catch-all, longer path prefixes before
// shorter ones.
func sortCandidates(cands []*Rule) {
	slices.SortStableFunc(cands, func(a, b *Rule) int {
		if (a.Host == "") != (b.Host == "") {
			if a.Host == "" {
				return 1
			}
			return -1
		}
		return len(b.PathPrefix) - len(a.PathPrefix)
	})
}

func conflictField(r *Rule) string {
	if r.Direction == Forward {
		return "listen"
	}
	return "host"
}

func describeListener(key string) string {
	if key == "" {
		return "the public listener"
	}
	_, addr, _ := strings.Cut(key, " ")
	return addr
}

// listenerKey names the listener a rule is served on: "" for the server's
// public HTTP listeners, else ListenerKey of the rule's own listener.
func (r *Rule) listenerKey() string {
	if r.Direction == Forward || r.Protocol == ProtoTCP {
		return ListenerKey(r.Direction, r.Listen)
	}
	return ""
}

// ListenerKey is how Match knows a rule-owned listener: its direction and
// address. The same address can be a forward listener on a client and a
// reverse TCP listener on the server.
func ListenerKey(dir Direction, addr string) string { return string(dir) + " " + addr }

// Version returns the version the table was built at.
func (t *Table) Version() uint64 {
	if t == nil {
		return 0
	}
	return t.version
}

// Hash returns the SHA-256 of the table's canonical encoding.
func (t *Table) Hash() [32]byte {
	if t == nil {
		return Hash(nil)
	}
	return t.hash
}

// HashHex returns Hash as lower-case hex, for logs and admin output.
func (t *Table) HashHex() string {
	h := t.Hash()
	return hex.EncodeToString(h[:])
}

// Rules returns a copy of the normalised rules in input order.
func (t *Table) Rules() []Rule {
	if t == nil {
		return nil
	}
	return slices.Clone(t.rules)
}

// Len returns the number of rules.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.rules)
}

// ByID returns the rule with id, or nil.
func (t *Table) ByID(id string) *Rule {
	if t == nil {
		return nil
	}
	return t.byID[id]
}

// Listener is a listen address some rules need, and what it serves.
type Listener struct {
	Addr      string
	Direction Direction
	Protocol  string
	TLS       bool
}

// Key is the listener's ListenerKey.
func (l Listener) Key() string { return ListenerKey(l.Direction, l.Addr) }

// Listeners returns the rule-owned listeners in direction dir (forward:
// the client's; reverse: the server's TCP listeners), sorted by address.
func (t *Table) Listeners(dir Direction) []Listener {
	if t == nil {
		return nil
	}
	var out []Listener
	for k, cands := range t.routes {
		if k == "" || len(cands) == 0 || cands[0].Direction != dir {
			continue
		}
		l := Listener{Addr: cands[0].Listen, Direction: dir, Protocol: cands[0].Protocol}
		for _, r := range cands {
			l.TLS = l.TLS || r.ListenTLS
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Listener) int { return strings.Compare(a.Addr, b.Addr) })
	return out
}

// Match returns the rule that routes a request for host and path arriving on
// listener ("" for the server's public listeners, else the ListenerKey of a
// rule-owned listener), or nil. host may carry a port and any case.
func (t *Table) Match(listener, host, path string) *Rule {
	if t == nil {
		return nil
	}
	host = NormalizeHost(host)
	cands := t.routes[listener]
	if listener == "" {
		cands = t.public[host] // every public rule has a host
	}
	if len(cands) == 0 {
		return nil
	}
	for _, r := range cands {
		if (r.Host == "" || r.Host == host) && pathHasPrefix(path, r.PathPrefix) {
			return r
		}
	}
	return nil
}

// MatchListener returns the rule served on a rule-owned listener whatever
// the request (TCP rules: one per listener), or nil.
func (t *Table) MatchListener(listener string) *Rule {
	if t == nil || listener == "" {
		return nil
	}
	if cands := t.routes[listener]; len(cands) > 0 {
		return cands[0]
	}
	return nil
}

// ForClient returns the rules that belong to client, in order.
func (t *Table) ForClient(client string) []Rule {
	if t == nil {
		return nil
	}
	idx := t.byClient[client]
	if len(idx) == 0 {
		return nil
	}
	out := make([]Rule, len(idx))
	for i, j := range idx {
		out[i] = t.rules[j]
	}
	return out
}

// Clients returns the ids of the clients that have rules in t.
func (t *Table) Clients() []string {
	if t == nil {
		return nil
	}
	out := make([]string, 0, len(t.byClient))
	for c := range t.byClient {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// ChangedClients returns the clients whose rules differ between old and
// new (added, removed or changed), sorted: those a change of the rule set
// must be sent to. It compares rules by id, so it costs one pass over both
// tables, whatever the number of clients.
func ChangedClients(old, new *Table) []string {
	changed := map[string]bool{}
	if new != nil {
		for i := range new.rules {
			r := &new.rules[i]
			if o := old.ByID(r.ID); o == nil || !reflect.DeepEqual(o, r) {
				changed[r.Client] = true
				if o != nil {
					changed[o.Client] = true
				}
			}
		}
	}
	if old != nil {
		for i := range old.rules {
			if r := &old.rules[i]; new.ByID(r.ID) == nil {
				changed[r.Client] = true
			}
		}
	}
	out := make([]string, 0, len(changed))
	for c := range changed {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// pathHasPrefix matches on segment boundaries; a prefix ending in "/" matches
// anything below it.
func pathHasPrefix(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	if len(path) == len(prefix) || strings.HasSuffix(prefix, "/") {
		return true
	}
	c := path[len(prefix)]
	return c == '/' || c == '?'
}

// Store holds the current table of one side and swaps it atomically (S6):
// readers see the old table or the new one, never a half-built one. The zero
// value holds no table. Safe for concurrent use.
type Store struct {
	p atomic.Pointer[Table]
}

// Load returns the current table (nil before the first Swap).
func (s *Store) Load() *Table { return s.p.Load() }

// Swap installs t and returns the table it replaced.
func (s *Store) Swap(t *Table) *Table { return s.p.Swap(t) }

// NormalizePath returns the canonical form of an escaped request path
// (RFC 3986, section 6.2.2): percent-encoded unreserved characters decoded
// ("%2e" is "."), then dot segments removed ("/a/./b/../c" is "/a/c"; a
// ".." at the root stays at the root). Other escapes are left as they are,
// so "%2F" stays data within a segment, never a separator; repeated slashes
// are kept. Rules match, and upstreams receive, the normalised path, so
// that "/api/../secret" cannot reach what only "/secret" should. A path
// that does not start with "/" ("*", an absolute URL) is returned as is.
// Paths with nothing to normalise are returned without allocating.
func NormalizePath(p string) string {
	if p == "" || p[0] != '/' || !needsNormalizing(p) {
		return p
	}
	b := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '%' {
			c, ok := byte(0), false
			if i+2 < len(p) {
				c, ok = unhex2(p[i+1], p[i+2])
			}
			switch {
			case !ok:
				// Not an escape: a '%' of its own, escaped so that no
				// escape appears that was not there ("%7%41" must not
				// become "%7A", which a second pass would decode).
				b = append(b, "%25"...)
				continue
			case unreserved(c):
				b = append(b, c)
				i += 2
				continue
			}
		}
		b = append(b, p[i])
	}
	return removeDotSegments(string(b))
}

// needsNormalizing reports whether p has an escape or a "." or ".." segment.
func needsNormalizing(p string) bool {
	if strings.IndexByte(p, '%') >= 0 {
		return true
	}
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		rest := p[i+1:]
		if rest == "." || rest == ".." || strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../") {
			return true
		}
	}
	return false
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// removeDotSegments is RFC 3986, section 5.2.4, for a path starting with
// "/": segments "." are dropped, ".." drops the segment before it.
func removeDotSegments(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "") // "/a/." is "/a/"
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}
