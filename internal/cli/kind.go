package cli

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/qtunnel/qtunnel/config"
)

// Kind is the side a configuration file is for: "server" or "client".
type Kind string

// The two kinds of configuration file.
const (
	Server Kind = "server"
	Client Kind = "client"
)

// ParseKind returns the kind named s, if s names one.
func ParseKind(s string) (Kind, bool) {
	switch k := Kind(s); k {
	case Server, Client:
		return k, true
	}
	return "", false
}

// Top-level settings that only one side's configuration has, read from the
// yaml tags of config.Server and config.Client so that a new setting counts
// without a change here.
var serverOnly, clientOnly = func() (map[string]bool, map[string]bool) {
	s, c := yamlKeys(reflect.TypeFor[config.Server]()), yamlKeys(reflect.TypeFor[config.Client]())
	for k := range s {
		if c[k] {
			delete(s, k)
			delete(c, k)
		}
	}
	return s, c
}()

// yamlKeys lists the top-level keys of a struct type decoded from YAML,
// with those of its inlined structs.
func yamlKeys(t reflect.Type) map[string]bool {
	keys := map[string]bool{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-":
		case opts == "inline" && f.Type.Kind() == reflect.Struct:
			for k := range yamlKeys(f.Type) {
				keys[k] = true
			}
		case name == "":
			keys[strings.ToLower(f.Name)] = true
		default:
			keys[name] = true
		}
	}
	return keys
}

// GuessKind tells a server's configuration from a client's by the
// top-level settings that only one of them has (a server's: clients,
// rules, public_http, ...; a client's: id, server, server_pin, ...); the
// side with more of them in data wins. It returns the kind and, in the
// file's order, the settings that decided it. When data is not a YAML
// mapping, or has as many settings of one side as of the other (none
// included), it returns an error that says so.
func GuessKind(data []byte) (Kind, []string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return "", nil, fmt.Errorf("not YAML: %w", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return "", nil, errors.New("not a YAML mapping of settings")
	}
	var srv, cl []string
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		switch k := m.Content[i].Value; {
		case serverOnly[k]:
			srv = append(srv, k)
		case clientOnly[k]:
			cl = append(cl, k)
		}
	}
	switch {
	case len(srv) > len(cl):
		return Server, srv, nil
	case len(cl) > len(srv):
		return Client, cl, nil
	case len(srv) == 0:
		return "", nil, errors.New("it has no setting that only a server's configuration (clients, rules, public_http) or only a client's (id, server, server_pin) has")
	}
	return "", nil, fmt.Errorf("it has as many settings of a server's configuration (%s) as of a client's (%s)",
		strings.Join(srv, ", "), strings.Join(cl, ", "))
}
