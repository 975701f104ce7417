// Package setup writes a working server and client configuration in one
// step, what 'tunnel init' runs: the server's identity in a state
// directory, a random client token, and a server.yaml and a client.yaml
// that fit together (the client pins the written key and reads the token
// whose SHA-256 the server lists).
package setup

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/statedir"
	"github.com/qtunnel/qtunnel/transport"
)

// Names of what Init writes inside its directory.
const (
	StateDirName     = "server-state"
	TokenFileName    = "client.token"
	ServerConfigName = "server.yaml"
	ClientConfigName = "client.yaml"
)

// Defaults of Options.
const (
	DefaultPort       = "4443"
	DefaultPublicHTTP = ":8080"
	DefaultClientID   = "client1"
)

// Options says what Init writes.
type Options struct {
	// Dir is where the files go; made if missing. Default ".".
	Dir string
	// ServerAddress is the host:port clients dial (UDP); the server
	// listens on its port. Default: this host's name (127.0.0.1 if it has
	// none) with port 4443.
	ServerAddress string
	// PublicHTTP is the server's public HTTP listener. Default ":8080".
	PublicHTTP string
	// ClientID is the client's id. Default "client1".
	ClientID string
	// Force overwrites files that are there already.
	Force bool
}

// File is one file Init wrote.
type File struct {
	Path string
	What string
}

// Result is what Init wrote.
type Result struct {
	Files []File
	// Pin is the written key's pin, as server_pin.
	Pin string
	// ServerConfig and ClientConfig are the paths of the two
	// configuration files.
	ServerConfig, ClientConfig string
	o                          Options
}

// ExistsError is Init's refusal to overwrite files without Force.
type ExistsError struct{ Paths []string }

func (e *ExistsError) Error() string {
	return fmt.Sprintf("not overwriting %s, already there (--force overwrites them; a new server key then needs the new pin in every client)", strings.Join(e.Paths, ", "))
}

// The ids rules accept (rules.Rule's client).
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// withDefaults fills o's defaults and checks it; an error is a mistake in
// the options.
func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		o.Dir = "."
	}
	if o.ServerAddress == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "127.0.0.1"
		}
		o.ServerAddress = net.JoinHostPort(host, DefaultPort)
	}
	if o.PublicHTTP == "" {
		o.PublicHTTP = DefaultPublicHTTP
	}
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
	host, port, err := net.SplitHostPort(o.ServerAddress)
	if err != nil || host == "" {
		return o, fmt.Errorf("server address %q: want host:port, the address clients dial", o.ServerAddress)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return o, fmt.Errorf("server address %q: the port must be 1 to 65535", o.ServerAddress)
	}
	if _, _, err := net.SplitHostPort(o.PublicHTTP); err != nil {
		return o, fmt.Errorf("public HTTP address %q: want host:port or :port", o.PublicHTTP)
	}
	if !idPattern.MatchString(o.ClientID) {
		return o, fmt.Errorf("client id %q: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128", o.ClientID)
	}
	return o, nil
}

// Check fills o's defaults and reports a mistake in it, without writing
// anything.
func Check(o Options) error {
	_, err := o.withDefaults()
	return err
}

// Init writes, into o.Dir: the server's state directory with a new
// identity (server-state/identity.key, .crt, .pin), a random 32-byte token
// (client.token, base64url, mode 0600), server.yaml (listen, public_http,
// state_dir, the client with the token's SHA-256, commented example rules)
// and client.yaml (id, server, server_pin, token_file). It refuses, with an
// ExistsError naming them, when any of these files is there and o.Force is
// not set; then it writes nothing.
func Init(o Options) (*Result, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	state := filepath.Join(o.Dir, StateDirName)
	r := &Result{
		ServerConfig: filepath.Join(o.Dir, ServerConfigName),
		ClientConfig: filepath.Join(o.Dir, ClientConfigName),
		o:            o,
	}
	keyPath, certPath, pinPath := filepath.Join(state, statedir.KeyFile), filepath.Join(state, statedir.CertFile), filepath.Join(state, statedir.PinFile)
	tokenPath := filepath.Join(o.Dir, TokenFileName)
	if !o.Force {
		var there []string
		for _, p := range []string{keyPath, certPath, pinPath, tokenPath, r.ServerConfig, r.ClientConfig} {
			if _, err := os.Lstat(p); err == nil {
				there = append(there, p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
		}
		if len(there) > 0 {
			return nil, &ExistsError{Paths: there}
		}
	}

	host, port, _ := net.SplitHostPort(o.ServerAddress)
	cert, err := transport.SelfSigned(certHosts(host)...)
	if err != nil {
		return nil, err
	}
	if r.Pin, err = transport.CertificatePin(cert); err != nil {
		return nil, err
	}
	raw := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, raw); err != nil {
		return nil, err
	}
	token := base64.RawURLEncoding.EncodeToString(raw)
	serverYAML := serverConfig(o, port, control.HashToken(token).String())
	// token_file is relative: a client takes it from client.yaml's
	// directory, so the two files can move together.
	clientYAML := clientConfig(o, r.Pin, TokenFileName)
	// Never write a configuration that does not load, examples included.
	if _, err := config.ParseServer(r.ServerConfig, []byte(UncommentExamples(serverYAML))); err != nil {
		return nil, fmt.Errorf("the server configuration to write does not validate: %w", err)
	}
	if _, err := config.ParseClient(r.ClientConfig, []byte(clientYAML)); err != nil {
		return nil, fmt.Errorf("the client configuration to write does not validate: %w", err)
	}

	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	if _, err := statedir.Open(state); err != nil {
		return nil, err
	}
	if err := statedir.WriteIdentity(state, cert); err != nil {
		return nil, err
	}
	if err := statedir.WriteFile(tokenPath, []byte(token+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := statedir.WriteFile(r.ServerConfig, []byte(serverYAML), 0o600); err != nil {
		return nil, err
	}
	if err := statedir.WriteFile(r.ClientConfig, []byte(clientYAML), 0o600); err != nil {
		return nil, err
	}
	r.Files = []File{
		{keyPath, "the server's private key (mode 0600; keep it, and keep it secret)"},
		{certPath, "the server's certificate"},
		{pinPath, "its pin, " + r.Pin},
		{tokenPath, o.ClientID + "'s token (mode 0600; the server keeps only its SHA-256)"},
		{r.ServerConfig, fmt.Sprintf("the server: tunnel %s, public_http %s, client %s, example rules (commented)", listenAddr(port), o.PublicHTTP, o.ClientID)},
		{r.ClientConfig, fmt.Sprintf("client %s: server %s, server_pin, token_file", o.ClientID, o.ServerAddress)},
	}
	return r, nil
}

// Print writes what Init wrote and the commands that run the two sides.
func (r *Result) Print(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Wrote a server and a client configuration:\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, f := range r.Files {
		fmt.Fprintf(tw, "  %s\t%s\n", f.Path, f.What)
	}
	_ = tw.Flush()
	fmt.Fprintf(&b, "\nAdd rules to %s (two commented examples are in it), then start the server:\n", r.ServerConfig)
	fmt.Fprintf(&b, "  tunnel server %s\n", r.ServerConfig)
	fmt.Fprintf(&b, "and the client, on the machine of its upstreams (copy %s and %s there,\ntogether):\n", ClientConfigName, TokenFileName)
	fmt.Fprintf(&b, "  tunnel client %s\n", r.ClientConfig)
	fmt.Fprintf(&b, "or, with no rule written, expose a local port from there in one command:\n")
	fmt.Fprintf(&b, "  tunnel expose http 3000 --config %s\n", r.ClientConfig)
	_, err := io.WriteString(w, b.String())
	return err
}

func listenAddr(port string) string { return ":" + port }

// certHosts are the names the certificate is made for: the server's host
// and loopback, as a server listening on every address gets. Clients
// check the pin, not the names.
func certHosts(host string) []string {
	hosts := []string{host}
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if h != host {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// exampleLine matches a line of the commented example rules (not one of
// the comments about them): "  # - id: ..." or "  #   key: ...".
var exampleLine = regexp.MustCompile(`(?m)^  # (- id: |  [a-z_]+: )`)

// UncommentExamples returns a server.yaml written by Init with its
// example rules uncommented.
func UncommentExamples(serverYAML string) string {
	return exampleLine.ReplaceAllString(serverYAML, "  $1")
}

func serverConfig(o Options, port, tokenHash string) string {
	id := o.ClientID
	ex := func(lines ...string) string {
		var b strings.Builder
		for _, l := range lines {
			b.WriteString("  # " + l + "\n")
		}
		return b.String()
	}
	return fmt.Sprintf(`# qtunnel server, written by 'tunnel init'. Every setting, with its default,
# is in examples/server.yaml of the qtunnel repository.
# Check it:  tunnel check-config %[1]s
# Run it:    tunnel server %[1]s

listen: %[2]q          # QUIC (UDP); clients dial %[3]s
public_http: %[4]q     # public HTTP listener for reverse rules

# The server's state: its identity (identity.key, identity.crt; the pin is
# in identity.pin and in the log line "server started ... pin="), kept
# across restarts so that the pin clients check stays the same. Relative
# to this file's directory.
state_dir: %[5]s

clients:
  - id: %[6]s
    # SHA-256 of the token in %[7]s (tunnel hash-token --token-file %[7]s)
    token_sha256: %[8]s
    # What %[6]s may expose on its own ('tunnel expose http 3000'): any
    # name one label under base_domain (every *.localhost name is this
    # machine to browsers and curl; put your domain here), TCP ports of
    # this server for 'tunnel expose tcp'.
    declare:
      base_domain: localhost
      tcp_ports: ["20000-20099"]

# Rules: each belongs to one client. To use an example, uncomment it.
# This file is watched: a change applies without a restart.
rules:
  # Reverse: http://app.example.com/ on public_http is served by
  # http://127.0.0.1:3000 on %[6]s's machine.
%[9]s  # Forward: 127.0.0.1:9000 on %[6]s's machine reaches
  # http://127.0.0.1:8081 on this machine.
%[10]s`,
		ServerConfigName, listenAddr(port), o.ServerAddress, o.PublicHTTP, StateDirName, id, TokenFileName, tokenHash,
		ex("- id: app",
			"  client: "+id,
			"  direction: reverse",
			"  host: app.example.com",
			"  upstream: http://127.0.0.1:3000"),
		ex("- id: admin-ui",
			"  client: "+id,
			"  direction: forward",
			"  listen: 127.0.0.1:9000",
			"  upstream: http://127.0.0.1:8081"))
}

func clientConfig(o Options, pin, tokenFile string) string {
	return fmt.Sprintf(`# qtunnel client, written by 'tunnel init'. Every setting, with its default,
# is in examples/client.yaml of the qtunnel repository.
# Run it:  tunnel client %[1]s

id: %[2]s
server: %[3]q
# The pin of the server's key (its state directory's identity.pin; the
# server also logs it: "server started ... pin="). If the server's key
# changes, the client stops and says so: put the new pin here.
server_pin: %[4]q
token_file: %[5]s      # relative to this file's directory
`, ClientConfigName, o.ClientID, o.ServerAddress, pin, tokenFile)
}
