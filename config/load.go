package config

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LoadServer reads, defaults and validates a server configuration file.
func LoadServer(path string) (*Server, error) {
	var c Server
	if err := load(path, &c, func() error { c.SetDefaults(); return c.Validate() }); err != nil {
		return nil, err
	}
	return &c, nil
}

// LoadClient reads, defaults and validates a client configuration file.
func LoadClient(path string) (*Client, error) {
	var c Client
	if err := load(path, &c, func() error { c.SetDefaults(); return c.Validate() }); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseServer is LoadServer for bytes; name is used in error messages.
func ParseServer(name string, data []byte) (*Server, error) {
	var c Server
	if err := parse(name, data, &c, func() error { c.SetDefaults(); return c.Validate() }); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseClient is LoadClient for bytes; name is used in error messages.
func ParseClient(name string, data []byte) (*Client, error) {
	var c Client
	if err := parse(name, data, &c, func() error { c.SetDefaults(); return c.Validate() }); err != nil {
		return nil, err
	}
	return &c, nil
}

func load(path string, v any, check func() error) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return parse(path, data, v, check)
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// parse decodes strictly (unknown keys are errors), then validates, and
// gives every problem its file and line.
func parse(name string, data []byte, v any, check func() error) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return decodeProblems(name, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return Problems{{File: name, Msg: "file is empty"}}
		}
		return decodeProblems(name, err)
	}
	err := check()
	var ps Problems
	if !errors.As(err, &ps) {
		return err
	}
	for i := range ps {
		ps[i].File = name
		ps[i].Line = lineOf(&doc, ps[i].Path)
	}
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
// key) and reports the ones that cannot be used, with their lines. The
// server does the same at start; check-config runs it so that a bad file is
// found before a deploy, not during one.
func CheckFiles(name string, data []byte, c *Server) error {
	var k checker
	if c.TLS.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile); err != nil {
			k.add("tls.cert_file", "%v", err)
		}
	}
	return k.located(name, data)
}

// CheckClientFiles is CheckFiles for a client: token file and CA file.
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
