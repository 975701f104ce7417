package config

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/qtunnel/qtunnel/rules"
)

// treeCheck walks a file's YAML tree along the Go type it will be decoded
// into, before it is decoded: every unknown key, every key set twice and
// every value of the wrong kind becomes a Problem with its path, its line
// and what was expected in plain words. A value that cannot be decoded is
// replaced by null in the tree, so that decoding the tree afterwards keeps
// the setting's zero value (its default) and the semantic checks run on
// everything else.
type treeCheck struct {
	ps Problems
	// covered are the paths whose semantic problems are not reported: a
	// value that did not decode, or a setting a misspelt key was meant to
	// set (its value went to the unknown key).
	covered []string
	// seen holds what walking an anchored node as a type gave, so that
	// aliases are walked once per type (a file of nested aliases would
	// otherwise take exponential time).
	seen map[visit]bool
	// other is the configuration type of the other side, whose settings
	// are named as such when they turn up at the top level.
	other     reflect.Type
	otherName string
}

type visit struct {
	n *yaml.Node
	t reflect.Type
}

var (
	serverType       = reflect.TypeFor[Server]()
	clientType       = reflect.TypeFor[Client]()
	durationType     = reflect.TypeFor[time.Duration]()
	ruleDurationType = reflect.TypeFor[rules.Duration]()
	sizeType         = reflect.TypeFor[Size]()
	sizeLimitType    = reflect.TypeFor[SizeLimit]()
	unmarshalerType  = reflect.TypeFor[yaml.Unmarshaler]()
	stageRefType     = reflect.TypeFor[rules.StageRef]()
	textType         = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func newTreeCheck(t reflect.Type) *treeCheck {
	c := &treeCheck{seen: map[visit]bool{}}
	switch t {
	case serverType:
		c.other, c.otherName = clientType, "client"
	case clientType:
		c.other, c.otherName = serverType, "server"
	}
	return c
}

func (c *treeCheck) add(line int, path, format string, args ...any) {
	c.ps = append(c.ps, Problem{Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// root checks a document's top node against t.
func (c *treeCheck) root(n *yaml.Node, t reflect.Type) {
	if target(n).Kind != yaml.MappingNode && !isNull(n) {
		c.add(n.Line, "", "want settings (name: value lines), not %s", describe(n))
		c.covered = append(c.covered, "")
		*n = *nullNode(n)
		return
	}
	c.value(n, t, "", n.Line)
}

// isCovered reports whether a semantic problem at path repeats one the
// walk already reported.
func (c *treeCheck) isCovered(path string) bool {
	for _, p := range c.covered {
		if p == "" || path == p || strings.HasPrefix(path, p+".") || strings.HasPrefix(path, p+"[") {
			return true
		}
	}
	return false
}

// value checks n, the value of the setting at path whose key is on line,
// against t. It returns false when n cannot be decoded into t: the caller
// then puts null in its place.
func (c *treeCheck) value(n *yaml.Node, t reflect.Type, path string, line int) bool {
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return true // the decoder reports it
		}
		k := visit{n.Alias, t}
		if ok, done := c.seen[k]; done {
			return ok
		}
		c.seen[k] = true // an alias inside its own anchor: the decoder reports it
		if n.Alias.Kind != yaml.ScalarNode {
			line = n.Alias.Line
		}
		ok := c.value(n.Alias, t, path, line)
		c.seen[k] = ok
		return ok
	}
	if isNull(n) {
		return true // the zero value: the default
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if isLeaf(t) {
		return c.leaf(n, t, path, line)
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return c.wrongKind(n, t, path, line)
		}
		c.mapping(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return c.wrongKind(n, t, path, line)
		}
		for i, item := range n.Content {
			if !c.value(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), item.Line) {
				n.Content[i] = nullNode(item)
			}
		}
	default:
		return c.leaf(n, t, path, line)
	}
	return true
}

func (c *treeCheck) wrongKind(n *yaml.Node, t reflect.Type, path string, line int) bool {
	c.add(line, path, "want %s, not %s", expected(t), describe(n))
	c.covered = append(c.covered, path)
	return false
}

// mapping checks the keys and values of n against the struct type t.
func (c *treeCheck) mapping(n *yaml.Node, t reflect.Type, path string) {
	fields := fieldsOf(t)
	first := map[string]int{} // key -> its line
	type unknown struct {
		name string
		line int
	}
	var unknowns []unknown
	kept := n.Content[:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := target(k)
		if key.Kind != yaml.ScalarNode {
			c.add(k.Line, path, "a setting's name must be a plain word, not %s", describe(k))
			continue
		}
		name := key.Value
		p := join(path, name)
		if l, dup := first[name]; dup {
			c.add(k.Line, p, "set twice (first at line %d)", l)
			continue
		}
		first[name] = k.Line
		switch ft, known := fields[name]; {
		case isMerge(k):
			if !c.merge(v, t, path, k.Line) {
				continue
			}
		case !known:
			// The decoder skips unknown keys: only the problem remains.
			unknowns = append(unknowns, unknown{name, k.Line})
		case !c.value(v, ft, p, k.Line):
			v = nullNode(v)
		}
		kept = append(kept, k, v)
	}
	clear(n.Content[len(kept):])
	n.Content = kept
	for _, u := range unknowns {
		p := join(path, u.name)
		if s := nearest(u.name, fieldNames(t)); s != "" {
			c.add(u.line, p, "unknown setting; did you mean %s?", s)
			if _, set := first[s]; !set {
				// Not set under its own name either: its problems (say,
				// "missing") come from the misspelling.
				c.covered = append(c.covered, join(path, s))
			}
			continue
		}
		if path == "" && c.other != nil {
			if _, ok := fieldsOf(c.other)[u.name]; ok {
				c.add(u.line, p, "unknown setting; it is a %s setting, for the %[1]s's file", c.otherName)
				continue
			}
		}
		c.add(u.line, p, "unknown setting")
	}
}

// merge checks the value of a merge key ("<<: *defaults"): a section or a
// list of sections whose settings apply here. It returns false when the
// merge key must be dropped.
func (c *treeCheck) merge(v *yaml.Node, t reflect.Type, path string, line int) bool {
	items := []*yaml.Node{v}
	if target(v).Kind == yaml.SequenceNode {
		items = target(v).Content
	}
	for _, it := range items {
		if target(it).Kind != yaml.MappingNode {
			c.add(line, join(path, "<<"), "merges sections (name: value lines), not %s", describe(it))
			return false
		}
	}
	for _, it := range items {
		c.value(it, t, path, it.Line)
	}
	return true
}

// leaf checks a single value by decoding it alone.
func (c *treeCheck) leaf(n *yaml.Node, t reflect.Type, path string, line int) bool {
	// A rule's stage entry decodes itself from a map of one key (or a bare
	// name): decoding it says whether it fits.
	if n.Kind != yaml.ScalarNode && t != stageRefType {
		if t.Kind() == reflect.Interface {
			return true
		}
		return c.wrongKind(n, t, path, line)
	}
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return true
	}
	c.add(line, path, "%s", leafMessage(n, t, err))
	c.covered = append(c.covered, path)
	return false
}

var (
	yamlLinePrefix = regexp.MustCompile(`^line \d+: `)
	wholeNumber    = regexp.MustCompile(`^[-+]?[0-9]+$`)
)

// leafMessage says why the scalar n is not a t.
func leafMessage(n *yaml.Node, t reflect.Type, err error) string {
	if t == stageRefType {
		return yamlLinePrefix.ReplaceAllString(err.Error(), "") // it says what it takes
	}
	v := n.Value
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 && t.Kind() != reflect.String {
		plain := *n
		plain.Style, plain.Tag = 0, ""
		if plain.Decode(reflect.New(t).Interface()) == nil {
			return fmt.Sprintf("%q is in quotes, which makes it text: write it without quotes", v)
		}
	}
	var te *yaml.TypeError
	if reflect.PointerTo(t).Implements(unmarshalerType) && errors.As(err, &te) && len(te.Errors) == 1 {
		// Size and SizeLimit say themselves what they take.
		return yamlLinePrefix.ReplaceAllString(te.Errors[0], "")
	}
	switch {
	case t == durationType || t == ruleDurationType:
		if _, ferr := strconv.ParseFloat(v, 64); ferr == nil {
			if _, derr := time.ParseDuration(v + "s"); derr == nil {
				return fmt.Sprintf("%q is not %s: did you mean %ss?", v, expected(t), v)
			}
		}
	case isInt(t) && wholeNumber.MatchString(v):
		if _, perr := strconv.ParseInt(v, 10, t.Bits()); errors.Is(perr, strconv.ErrRange) {
			if strings.HasPrefix(v, "-") {
				return fmt.Sprintf("%q is too small (at least %d)", v, int64(-1)<<(t.Bits()-1))
			}
			return fmt.Sprintf("%q is too large (at most %d)", v, int64(math.MaxInt64>>(64-t.Bits())))
		}
	case isUint(t) && wholeNumber.MatchString(v) && !strings.HasPrefix(v, "-"):
		if _, perr := strconv.ParseUint(v, 10, t.Bits()); errors.Is(perr, strconv.ErrRange) {
			return fmt.Sprintf("%q is too large (at most %d)", v, uint64(math.MaxUint64)>>(64-t.Bits()))
		}
	}
	return fmt.Sprintf("%q is not %s", v, expected(t))
}

func isInt(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return true
	}
	return false
}

func isUint(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return true
	}
	return false
}

// expected says in words what a setting of type t takes.
func expected(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == sizeType:
		return "a size such as 64KiB or 10MiB"
	case t == sizeLimitType:
		return "a size such as 64KiB or 10MiB, or unlimited"
	case t == durationType || t == ruleDurationType:
		return "a duration such as 30s or 1m"
	case isInt(t):
		return "a whole number"
	case isUint(t):
		return "a whole number of 0 or more"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct, reflect.Map:
		return "a section (name: value lines)"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "a single value"
}

// describe names what a node holds, for "want X, not Y".
func describe(n *yaml.Node) string {
	switch n = target(n); n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a section"
	}
	return strconv.Quote(n.Value)
}

// target is the node an alias stands for, or n.
func target(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// isMerge reports whether k is a merge key, as the decoder sees it.
func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge")
}

// nullNode is a null in place of n.
func nullNode(n *yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Line, Column: n.Column}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// isLeaf reports whether t is decoded from one scalar: a type that decodes
// itself, or anything but a struct, a list or a map.
func isLeaf(t reflect.Type) bool {
	if reflect.PointerTo(t).Implements(unmarshalerType) || reflect.PointerTo(t).Implements(textType) {
		return true
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Slice, reflect.Array, reflect.Map, reflect.Pointer:
		return false
	}
	return true
}

type structFields struct {
	byName map[string]reflect.Type
	names  []string // in declaration order
}

var fieldCache sync.Map // reflect.Type -> *structFields

// fieldsOf returns the settings of struct type t by their YAML names, as
// the decoder finds them: tagged names, lower-cased field names, inline
// structs' fields; "-" and unexported fields are not settings.
func fieldsOf(t reflect.Type) map[string]reflect.Type { return structInfo(t).byName }

func fieldNames(t reflect.Type) []string { return structInfo(t).names }

func structInfo(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	s := &structFields{byName: map[string]reflect.Type{}}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" || (!f.IsExported() && !f.Anonymous) {
				continue
			}
			if slices.Contains(strings.Split(opts, ","), "inline") {
				walk(f.Type)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			s.byName[name] = f.Type
			s.names = append(s.names, name)
		}
	}
	walk(t)
	f, _ := fieldCache.LoadOrStore(t, s)
	return f.(*structFields)
}

// nearest returns the name in names that key most likely meant: the same
// but for case and '-' for '_', else the closest within two edits (one for
// keys of three letters or fewer), else "".
func nearest(key string, names []string) string {
	fold := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	for _, n := range names {
		if fold(n) == fold(key) {
			return n
		}
	}
	best, bestD := "", min(2, len([]rune(key))/2)+1
	for _, n := range names {
		if d := editDistance(key, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and swaps of two neighbours.
func editDistance(a, b string) int {
	s, t := []rune(a), []rune(b)
	if d := len(s) - len(t); d > 2 || d < -2 {
		return max(d, -d) // more than the two edits nearest cares about
	}
	d := make([][]int, len(s)+1)
	for i := range d {
		d[i] = make([]int, len(t)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(s); i++ {
		for j := 1; j <= len(t); j++ {
			cost := 1
			if s[i-1] == t[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && s[i-1] == t[j-2] && s[i-2] == t[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(s)][len(t)]
}
