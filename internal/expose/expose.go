// Package expose turns 'tunnel expose http 3000' into a client
// configuration: the rule the client declares, and the server and
// credentials it connects with (a client configuration file, the file
// 'tunnel login' wrote, environment variables or flags).
package expose

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/rules"
)

// Kinds of service expose takes.
const (
	HTTP  = "http"  // a local HTTP service (HTTP/1.1, h2c, gRPC, WebSocket)
	HTTPS = "https" // a local HTTPS service
	TCP   = "tcp"   // a local TCP service
)

// Request is what the user asked to expose.
type Request struct {
	Kind   string // HTTP, HTTPS or TCP
	Target string // "3000", "host:3000", or a URL for HTTP and HTTPS
	// Host asks for a public name: one label ("shop", taken under the
	// server's base domain) or a whole name. Empty: the server picks.
	Host string
	// Port asks for a public TCP port of the server. 0: the server picks.
	Port int
	// Name is the rule's name; default "<kind>-<port>".
	Name string
}

// Rule returns the rule the client declares for r, and whether the
// upstream's certificate goes unchecked (an HTTPS service on this host).
func (r Request) Rule() (rule rules.Rule, insecure bool, err error) {
	host, port, err := splitTarget(r.Target)
	if err != nil {
		return rule, false, err
	}
	name := r.Name
	if name == "" {
		name = r.Kind + "-" + port
	}
	rule = rules.Rule{ID: name, Direction: rules.Reverse}
	switch r.Kind {
	case HTTP, HTTPS:
		if r.Port != 0 {
			return rule, false, errors.New("--port is for tcp; an HTTP service is reached by its host name (--host)")
		}
		rule.Protocol, rule.Host = rules.ProtoHTTP, r.Host
		rule.Upstream = r.Kind + "://" + net.JoinHostPort(host, port)
		if u, ok := asURL(r.Target); ok {
			if u.Scheme != r.Kind {
				return rule, false, fmt.Errorf("%q is an %s URL; use 'expose %s'", r.Target, u.Scheme, u.Scheme)
			}
			rule.Upstream = strings.TrimSuffix(u.String(), "/")
		}
		if r.Kind == HTTPS && loopback(host) {
			// A service on this machine with a certificate made for
			// development: checking it would refuse every request.
			rule.UpstreamTLSInsecureSkipVerify, insecure = true, true
		}
	case TCP:
		if r.Host != "" {
			return rule, false, errors.New("--host is for http and https; a TCP service gets a port (--port)")
		}
		rule.Protocol, rule.Upstream = rules.ProtoTCP, net.JoinHostPort(host, port)
		if r.Port < 0 || r.Port > 65535 {
			return rule, false, fmt.Errorf("--port %d is not a port", r.Port)
		}
		if r.Port > 0 {
			rule.Listen = ":" + strconv.Itoa(r.Port)
		}
	default:
		return rule, false, fmt.Errorf("%q is not a kind of service: http, https or tcp", r.Kind)
	}
	if err := rule.ValidateClaim(0); err != nil {
		var fe *rules.FieldError
		if errors.As(err, &fe) {
			return rule, false, fmt.Errorf("%s: %s", fe.Field, fe.Msg)
		}
		return rule, false, err
	}
	return rule, insecure, nil
}

// splitTarget reads "3000", "host:3000" or a URL into host and port; the
// host defaults to 127.0.0.1.
func splitTarget(t string) (host, port string, err error) {
	if u, ok := asURL(t); ok {
		host, port = u.Hostname(), u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		return host, port, nil
	}
	host, port = "127.0.0.1", t
	if strings.Contains(t, ":") {
		if host, port, err = net.SplitHostPort(t); err != nil {
			return "", "", fmt.Errorf("%q is neither a port, host:port nor a URL", t)
		}
		if host == "" {
			host = "127.0.0.1"
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("%q is neither a port, host:port nor a URL", t)
	}
	return host, port, nil
}

func asURL(t string) (*url.URL, bool) {
	if !strings.Contains(t, "://") {
		return nil, false
	}
	u, err := url.Parse(t)
	return u, err == nil && u.Host != ""
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// Environment variables expose and login read.
const (
	ServerEnv = "QTUNNEL_SERVER"     // the server's tunnel address
	IDEnv     = "QTUNNEL_CLIENT_ID"  // the client's id
	PinEnv    = "QTUNNEL_SERVER_PIN" // the server key's pin
)

// Credentials say where the client connects and who it is. Empty fields
// are taken from the environment, then from a configuration file.
type Credentials struct {
	Config    string // a client configuration file; default LoginFile if it exists
	Server    string
	ID        string
	Pin       string
	TokenFile string
}

// DefaultInspectorPort is where the inspector's page listens first; the
// next nine ports are tried when it is taken.
const DefaultInspectorPort = 4040

// InspectorAddr returns want, or, when want is empty, the first loopback
// address of ports 4040-4049 free to listen on.
func InspectorAddr(want string) (string, error) {
	if want != "" {
		return want, nil
	}
	for p := DefaultInspectorPort; p < DefaultInspectorPort+10; p++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			_ = ln.Close()
			return addr, nil
		}
	}
	return "", fmt.Errorf("ports %d-%d of 127.0.0.1 are all taken: give --inspect-addr, or --no-inspect", DefaultInspectorPort, DefaultInspectorPort+9)
}

// ErrMissing is wrapped by ClientConfig's error when a credential is
// missing: a usage error.
var ErrMissing = errors.New("missing")

// LoginFile is where 'tunnel login' keeps the credentials:
// $XDG_CONFIG_HOME/qtunnel/login.yaml (or the system's equivalent).
func LoginFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "qtunnel", "login.yaml"), nil
}

// ClientConfig returns the client configuration c and the environment
// give, and where it came from (for messages).
func ClientConfig(c Credentials, getenv func(string) string) (*config.Client, string, error) {
	c.Server = first(c.Server, getenv(ServerEnv))
	c.ID = first(c.ID, getenv(IDEnv))
	c.Pin = first(c.Pin, getenv(PinEnv))
	from := c.Config
	if from == "" && (c.Server == "" || c.ID == "" || c.Pin == "") {
		if p, err := LoginFile(); err == nil {
			if _, err := os.Stat(p); err == nil {
				from = p
			}
		}
	}
	var cfg config.Client
	source := "flags and environment"
	if from != "" {
		loaded, err := config.LoadClient(from)
		if err != nil {
			return nil, from, err
		}
		cfg, source = *loaded, from
	}
	if c.Server != "" {
		cfg.Server = c.Server
	}
	if c.ID != "" {
		cfg.ID = c.ID
	}
	if c.Pin != "" {
		cfg.ServerPin, cfg.ServerCAFile = c.Pin, ""
	}
	if c.TokenFile != "" {
		cfg.Token, cfg.TokenFile = "", c.TokenFile
	}
	var missing []string
	for _, m := range []struct{ v, what string }{
		{cfg.Server, "the server's address (--server or " + ServerEnv + ")"},
		{cfg.ID, "the client's id (--id or " + IDEnv + ")"},
		{cfg.ServerPin + cfg.ServerCAFile, "the server's pin (--pin or " + PinEnv + ")"},
		{cfg.Token + cfg.TokenFile + getenv(config.TokenEnv), "the token (--token-file or " + config.TokenEnv + ")"},
	} {
		if m.v == "" {
			missing = append(missing, m.what)
		}
	}
	if len(missing) > 0 {
		return nil, source, fmt.Errorf("%w %s: give them, a client configuration (--config, such as the client.yaml 'tunnel init' wrote), or run 'tunnel login' once", ErrMissing, strings.Join(missing, ", "))
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, source, err
	}
	return &cfg, source, nil
}

// WriteLogin keeps cfg's server, id, pin (or CA file) and token in path,
// readable by its owner only, for later 'tunnel expose' commands.
func WriteLogin(path string, cfg *config.Client) error {
	token, err := cfg.ReadToken()
	if err != nil {
		return err
	}
	ca := cfg.ServerCAFile
	if ca != "" {
		if ca, err = filepath.Abs(ca); err != nil {
			return err
		}
	}
	b, err := yaml.Marshal(struct {
		ID           string `yaml:"id"`
		Server       string `yaml:"server"`
		ServerName   string `yaml:"server_name,omitempty"`
		ServerPin    string `yaml:"server_pin,omitempty"`
		ServerCAFile string `yaml:"server_ca_file,omitempty"`
		Token        string `yaml:"token"`
	}{cfg.ID, cfg.Server, cfg.ServerName, cfg.ServerPin, ca, token})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	head := "# qtunnel login, written by 'tunnel login': the server and the credentials\n# 'tunnel expose' uses. Keep it secret: it holds the token.\n"
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append([]byte(head), b...), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
