package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LoadServer reads, defaults and validates a server configuration file.
// Relative file paths in it are taken from the file's directory.
func LoadServer(path string) (*Server, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseServer(path, data)
}

// LoadClient reads, defaults and validates a client configuration file.
// Relative file paths in it are taken from the file's directory.
func LoadClient(path string) (*Client, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseClient(path, data)
}

// ParseServer is LoadServer for bytes read from the file name: problems
// name it, and relative file paths are taken from its directory.
func ParseServer(name string, data []byte) (*Server, error) {
	var c Server
	if err := parse(name, data, &c, func() error {
		resolvePaths(filepath.Dir(name), c.filePaths())
		c.SetDefaults()
		return c.Validate()
	}); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseClient is LoadClient for bytes read from the file name: problems
// name it, and relative file paths are taken from its directory.
func ParseClient(name string, data []byte) (*Client, error) {
	var c Client
	if err := parse(name, data, &c, func() error {
		resolvePaths(filepath.Dir(name), c.filePaths())
		c.SetDefaults()
		return c.Validate()
	}); err != nil {
		return nil, err
	}
	return &c, nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// parse checks the document's tree against v's type (treeCheck), decodes
// what is sound into v, then validates with check, and returns every
// problem of both, each with its file and line, in the order of the file.
// A semantic problem of a setting that did not decode is not repeated.
func parse(name string, data []byte, v any, check func() error) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return decodeProblems(name, err) // syntax: the parser stops at the first
	}
	if len(doc.Content) == 0 {
		return Problems{{File: name, Msg: "file is empty"}}
	}
	tc := newTreeCheck(reflect.TypeOf(v).Elem())
	tc.root(doc.Content[0], reflect.TypeOf(v).Elem())
	ps := tc.ps
	if err := doc.Decode(v); err != nil {
		// What the tree check let through and the decoder still refused
		// (such as excessive aliasing): v is not to be trusted.
		var dps Problems
		errors.As(decodeProblems(name, err), &dps)
		return sorted(name, append(ps, dps...))
	}
	err := check()
	var sem Problems
	if err != nil && !errors.As(err, &sem) {
		if len(ps) == 0 {
			return err
		}
		sem = Problems{{Msg: err.Error()}}
	}
	for _, p := range sem {
		if !tc.isCovered(p.Path) {
			p.Line = lineOf(&doc, p.Path)
			ps = append(ps, p)
		}
	}
	return sorted(name, ps)
}

// sorted gives ps the file name and orders them by line (problems of the
// whole file first); nil if there are none.
func sorted(name string, ps Problems) error {
	if len(ps) == 0 {
		return nil
	}
	for i := range ps {
		ps[i].File = name
	}
	slices.SortStableFunc(ps, func(a, b Problem) int { return a.Line - b.Line })
	return ps
}

// decodeProblems turns yaml's "line N: ..." errors into Problems.
func decodeProblems(name string, err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var ps Problems
	for _, m := range msgs {
		p := Problem{File: name, Msg: strings.TrimPrefix(m, "yaml: ")}
		if sub := yamlLine.FindStringSubmatch(m); sub != nil {
			p.Line, _ = strconv.Atoi(sub[1])
			p.Msg = sub[2]
		}
		ps = append(ps, p)
	}
	return ps
}

var pathPart = regexp.MustCompile(`([^.\[\]]+)|\[(\d+)\]`)

// lineOf finds the line of a setting by its path ("rules[2].upstream"); if
// the setting is absent, the line of the closest enclosing one.
func lineOf(doc *yaml.Node, path string) int {
	n := doc
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	if n.Kind != yaml.MappingNode {
		// An empty document ("---") holds no setting to point at, and
		// the parser puts its implicit null on the line after the
		// marker, which may not exist.
		line = 0
	}
	for _, m := range pathPart.FindAllStringSubmatch(path, -1) {
		var next *yaml.Node
		switch {
		case m[1] != "" && n.Kind == yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == m[1] {
					next = n.Content[i+1]
					line = n.Content[i].Line
					break
				}
			}
		case m[2] != "" && n.Kind == yaml.SequenceNode:
			if i, _ := strconv.Atoi(m[2]); i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

// TokenEnv is the environment variable a client token can come from.
const TokenEnv = "QTUNNEL_TOKEN"

// ReadToken returns the client's token: the token setting, else the
// content of token_file, else the QTUNNEL_TOKEN environment variable.
func (c *Client) ReadToken() (string, error) {
	env := os.Getenv(TokenEnv)
	switch {
	case c.Token != "":
		return c.Token, nil
	case c.TokenFile != "":
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return "", fmt.Errorf("token_file: %w", err)
		}
		if err := privateTokenFile(c.TokenFile); err != nil {
			return "", fmt.Errorf("token_file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("token_file %s is empty", c.TokenFile)
		}
		return t, nil
	case env != "":
		return env, nil
	}
	return "", errors.New("no token: set token, token_file or QTUNNEL_TOKEN")
}

// privateTokenFile refuses a token file that group or others may read or
// change (any of the mode bits 077, as ssh does for private keys): the
// token is the client's password. Windows has no such modes.
func privateTokenFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 && os.PathSeparator == '/' {
		return fmt.Errorf("%s is open to group or others (mode %04o); a token must be private to its owner: chmod 600 %s", path, mode, path)
	}
	return nil
}

// CheckFiles reads the files a server configuration names (certificate and
// key, public_tls's) and reports each one that cannot be used, with its
// line. The server does the same at start; check-config runs it so that a
// bad file is found before a deploy, not during one.
func CheckFiles(name string, data []byte, c *Server) error {
	var k checker
	k.certPair("tls", c.TLS.CertFile, c.TLS.KeyFile)
	k.certPairs("public_tls", c.PublicTLS)
	return k.located(name, data)
}

// CheckClientFiles is CheckFiles for a client: token file, CA file and
// forward_tls's certificates and keys.
func CheckClientFiles(name string, data []byte, c *Client) error {
	var k checker
	if c.Token == "" && c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err == nil {
			err = privateTokenFile(c.TokenFile)
		}
		switch {
		case err != nil:
			k.add("token_file", "%v", err)
		case strings.TrimSpace(string(b)) == "":
			k.add("token_file", "%s is empty", c.TokenFile)
		}
	}
	if c.ServerCAFile != "" {
		pem, err := os.ReadFile(c.ServerCAFile)
		switch {
		case err != nil:
			k.add("server_ca_file", "%v", err)
		case !x509.NewCertPool().AppendCertsFromPEM(pem):
			k.add("server_ca_file", "%s holds no PEM certificate", c.ServerCAFile)
		}
	}
	k.certPairs("forward_tls", c.ForwardTLS)
	return k.located(name, data)
}

// located gives k's problems their file and line.
func (k *checker) located(name string, data []byte) error {
	if len(k.ps) == 0 {
		return nil
	}
	var doc yaml.Node
	_ = yaml.Unmarshal(data, &doc)
	for i := range k.ps {
		k.ps[i].File = name
		k.ps[i].Line = lineOf(&doc, k.ps[i].Path)
	}
	return k.ps
}
