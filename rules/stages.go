package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// StageRef is one entry of a rule's stage list: the name of a stage module
// the gateway knows (auth, ipfilter, headers, or one compiled into a
// gateway of your own) and its settings. In YAML and JSON an entry is a map
// of one key, the name, to the settings:
//
//	stages:
//	  - ipfilter: {allow: [10.0.0.0/8]}
//	  - auth: {basic: {users: ["alice:$2y$10$..."]}}
//
// The settings are kept as canonical JSON (keys sorted), so that a rule's
// hash changes with them and both sides see the same bytes.
type StageRef struct {
	Name     string
	Settings json.RawMessage // canonical JSON; nil for none
}

// MaxStages bounds a rule's stage list.
const MaxStages = 16

var stageNamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

// Decode fills v, a stage's Config, from the settings, by its yaml field
// names; a field v does not have is an error. With no settings v is left
// as it is.
func (s StageRef) Decode(v any) error {
	if len(s.Settings) == 0 || string(s.Settings) == "null" {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(s.Settings)) // JSON is YAML
	dec.KnownFields(true)
	err := dec.Decode(v)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("settings: %w", err)
	}
	// Said in the file's words: the setting, not the Go type.
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		m = lineNumber.ReplaceAllString(m, "")
		if f := unknownField.FindStringSubmatch(m); f != nil {
			m = fmt.Sprintf("unknown setting %q (settings: %s)", f[1], strings.Join(settingNames(v), ", "))
		} else if c := cannotDecode.FindStringSubmatch(m); c != nil {
			m = fmt.Sprintf("%s is not a %s", c[1], c[2])
		}
		msgs[i] = m
	}
	return errors.New(strings.Join(msgs, "; "))
}

var (
	lineNumber   = regexp.MustCompile(`^line \d+: `)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	cannotDecode = regexp.MustCompile(`^cannot unmarshal !!\w+ (.*) into (\S+)$`)
)

// settingNames lists the yaml names of the fields of the struct v points
// to, for a message about a setting that is not one of them.
func settingNames(v any) []string {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var names []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		names = append(names, name)
	}
	return names
}

// MarshalJSON writes {"name": settings}.
func (s StageRef) MarshalJSON() ([]byte, error) {
	settings := s.Settings
	if len(settings) == 0 {
		settings = json.RawMessage("null")
	}
	return json.Marshal(map[string]json.RawMessage{s.Name: settings})
}

// UnmarshalJSON reads {"name": settings}.
func (s *StageRef) UnmarshalJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	return s.fromMap(m)
}

// UnmarshalYAML reads a map of one key, the stage's name, to its settings;
// a bare name is a stage with no settings.
func (s *StageRef) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = StageRef{Name: n.Value}
		return nil
	}
	var m map[string]any
	if err := n.Decode(&m); err != nil {
		return fmt.Errorf("a stage is a map of its name to its settings, such as {ipfilter: {allow: [10.0.0.0/8]}}: %w", err)
	}
	return s.fromMap(m)
}

func (s *StageRef) fromMap(m map[string]any) error {
	if len(m) != 1 {
		return fmt.Errorf("a stage is a map of one key, its name, to its settings (got %d keys)", len(m))
	}
	for name, v := range m {
		*s = StageRef{Name: name}
		if v == nil {
			return nil
		}
		b, err := json.Marshal(v) // sorted keys: canonical
		if err != nil {
			return fmt.Errorf("stage %q: settings: %w", name, err)
		}
		s.Settings = b
	}
	return nil
}

// validateStages checks the names of a rule's stage list; the settings are
// checked by the stages themselves, when a side builds them.
func validateStages(stages []StageRef) (field, msg string) {
	if len(stages) > MaxStages {
		return "stages", fmt.Sprintf("%d stages; at most %d", len(stages), MaxStages)
	}
	seen := map[string]bool{}
	for i, s := range stages {
		switch {
		case !stageNamePattern.MatchString(s.Name):
			return fmt.Sprintf("stages[%d]", i), fmt.Sprintf("%q is not a stage name (lower-case letters, digits, '_')", s.Name)
		case seen[s.Name]:
			return fmt.Sprintf("stages[%d]", i), fmt.Sprintf("stage %q is listed twice", s.Name)
		}
		seen[s.Name] = true
	}
	return "", ""
}
