package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/transport"
)

// withLines replaces each @marker@ in want with the line of doc that holds
// marker.
func withLines(t *testing.T, doc string, want []string) []string {
	t.Helper()
	out := make([]string, len(want))
	for i, w := range want {
		parts := strings.Split(w, "@")
		require.Len(t, parts, 3, "want %q holds one @marker@", w)
		out[i] = parts[0] + fmt.Sprint(lineNo(t, doc, parts[1])) + parts[2]
	}
	return out
}

// TestEveryProblemAtOnce: type errors in three places, an unknown setting
// and an upstream without a scheme are all reported by one parse, each at
// its line with its path and what was expected in plain words; the rule
// whose upstream key is misspelt is not also reported as missing its
// upstream.
func TestEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	doc := serverDoc(`clients:
  - id: laptop
    token_sha256: HASH1
rules:
  - id: app
    client: laptop
    direction: reverse
    host: app.example.test
    upsteam: http://127.0.0.1:3000
  - id: api
    client: laptop
    direction: reverse
    host: api.example.test
    upstream: 127.0.0.1:3000
    retries: two
limits:
  request_timeout: soon
admin:
  pprof: maybe
`)
	_, err := config.ParseServer("server.yaml", []byte(doc))
	require.Equal(t, withLines(t, doc, []string{
		"server.yaml:@upsteam@: rules[0].upsteam: unknown setting; did you mean upstream?",
		`server.yaml:@upstream: 127.0.0.1:3000@: rules[1].upstream: "127.0.0.1:3000" has no scheme: write http://127.0.0.1:3000 or https://...`,
		`server.yaml:@two@: rules[1].retries: "two" is not a whole number`,
		`server.yaml:@soon@: limits.request_timeout: "soon" is not a duration such as 30s or 1m`,
		`server.yaml:@maybe@: admin.pprof: "maybe" is not true or false`,
	}), errorLines(problems(t, err)))
}

// TestTypeProblemsInPlainWords: what each kind of setting expects, said
// in words, with the setting's path and line, and the semantic checks of
// the rest of the file still run.
func TestTypeProblemsInPlainWords(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, want string
	}{
		{"whole number", "limits:\n  max_in_flight: two # here\n", `limits.max_in_flight: "two" is not a whole number`},
		{"whole number, quoted", "limits:\n  max_in_flight: \"100\" # here\n", `limits.max_in_flight: "100" is in quotes, which makes it text: write it without quotes`},
		{"whole number too large", "limits:\n  max_in_flight: 99999999999999999999 # here\n", `limits.max_in_flight: "99999999999999999999" is too large (at most 9223372036854775807)`},
		{"whole number, not a list", "limits:\n  max_in_flight: [1, 2] # here\n", `limits.max_in_flight: want a whole number, not a list`},
		{"non-negative whole number", "quic:\n  stream_window: -1 # here\n", `quic.stream_window: "-1" is not a whole number of 0 or more`},
		{"duration", "shutdown_grace: soon # here\n", `shutdown_grace: "soon" is not a duration such as 30s or 1m`},
		{"duration without a unit", "shutdown_grace: 30 # here\n", `shutdown_grace: "30" is not a duration such as 30s or 1m: did you mean 30s?`},
		{"size", "limits:\n  max_header_bytes: lots # here\n", `limits.max_header_bytes: "lots" is not a size (such as 4096, 64KiB, 10MiB)`},
		{"size, not a section", "limits:\n  max_header_bytes: {a: 1} # here\n", `limits.max_header_bytes: want a size such as 64KiB or 10MiB, not a section`},
		{"size limit", "limits:\n  max_body_size: huge # here\n", `limits.max_body_size: "huge" is neither a size (such as 4096, 64KiB, 10MiB) nor unlimited`},
		{"true or false", "tracing:\n  insecure: sometimes # here\n", `tracing.insecure: "sometimes" is not true or false`},
		{"number", "rate_limit:\n  per_ip: {rate: fast} # here\n", `rate_limit.per_ip.rate: "fast" is not a number`},
		{"list", "trusted_proxies: 10.0.0.0/8 # here\n", `trusted_proxies: want a list, not "10.0.0.0/8"`},
		{"single value", "listen: [a, b] # here\n", `listen: want a single value, not a list`},
		{"section", "limits: 5 # here\n", `limits: want a section (name: value lines), not "5"`},
		{"rule in a list", "rules:\n  - just-a-name # here\n", `rules[0]: want a section (name: value lines), not "just-a-name"`},
		{"rule duration", "rules:\n  - id: r\n    client: c1\n    direction: reverse\n    host: h.test\n    upstream: http://127.0.0.1:1\n    health_check: {path: /h, interval: often} # here\n",
			`rules[0].health_check.interval: "often" is not a duration such as 30s or 1m`},
		{"key set twice", "shutdown_grace: 1s\nshutdown_grace: 2s # here\n", `shutdown_grace: set twice (first at line 6)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A semantic problem elsewhere in the file is reported too.
			doc := serverDoc(minimalServer) + "log:\n  format: xml # format\n" + tt.yaml
			_, err := config.ParseServer("s.yaml", []byte(doc))
			require.Equal(t, withLines(t, doc, []string{
				`s.yaml:@# format@: log.format: "xml" is neither text nor json`,
				"s.yaml:@# here@: " + tt.want,
			}), errorLines(problems(t, err)))
		})
	}
}

// TestUnknownSettingDidYouMean: an unknown key names the nearest valid key
// at its place (at most two edits, or the same but for case, '-' for '_');
// none when nothing is close.
func TestUnknownSettingDidYouMean(t *testing.T) {
	t.Parallel()
	rule := "rules:\n  - id: r\n    client: c1\n    direction: reverse\n    host: h.test\n    upstream: http://127.0.0.1:1\n"
	tests := []struct {
		name, yaml, want string
	}{
		{"top level", "shutdown_grase: 1s # here\n", "shutdown_grase: unknown setting; did you mean shutdown_grace?"},
		{"top level, case", "Listen: ':1' # here\n", "Listen: unknown setting; did you mean listen?"},
		{"top level, dashes", "shutdown-grace: 1s # here\n", "shutdown-grace: unknown setting; did you mean shutdown_grace?"},
		{"top level, two edits", "trustd_proxis: [] # here\n", "trustd_proxis: unknown setting; did you mean trusted_proxies?"},
		{"limits", "limits:\n  max_in_fligt: 5 # here\n", "limits.max_in_fligt: unknown setting; did you mean max_in_flight?"},
		{"limits, transposition", "limits:\n  max_in_fligth: 5 # here\n", "limits.max_in_fligth: unknown setting; did you mean max_in_flight?"},
		{"rule", rule + "    path_prefx: /a # here\n", "rules[0].path_prefx: unknown setting; did you mean path_prefix?"},
		{"rule health check", rule + "    health_check: {path: /h, intervl: 5s} # here\n", "rules[0].health_check.intervl: unknown setting; did you mean interval?"},
		{"nothing close", "colour: blue # here\n", "colour: unknown setting"},
		{"nothing close in limits", "limits:\n  speed: 5 # here\n", "limits.speed: unknown setting"},
		{"short keys need one edit", "lag: {} # here\n", "lag: unknown setting; did you mean log?"},
		{"three letters, two edits is too far", "foo: 1 # here\n", "foo: unknown setting"},
		{"a client's setting", "server_pin: x # here\n", "server_pin: unknown setting; it is a client setting, for the client's file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := serverDoc(minimalServer) + tt.yaml
			_, err := config.ParseServer("s.yaml", []byte(doc))
			require.Equal(t, withLines(t, doc, []string{"s.yaml:@# here@: " + tt.want}), errorLines(problems(t, err)))
		})
	}

	t.Run("client file", func(t *testing.T) {
		t.Parallel()
		doc := "id: c1\ntoken: t\nserver: 127.0.0.1:4443\nserver_pn: " + pin + " # pin\nreconect: {max: 1s} # reconnect\nrules: [] # rules\n"
		_, err := config.ParseClient("c.yaml", []byte(doc))
		require.Equal(t, withLines(t, doc, []string{
			"c.yaml:@# pin@: server_pn: unknown setting; did you mean server_pin?",
			"c.yaml:@# reconnect@: reconect: unknown setting; did you mean reconnect?",
			"c.yaml:@# rules@: rules: unknown setting; it is a server setting, for the server's file",
		}), errorLines(problems(t, err)), "server_pin misspelt is not also reported missing")
	})
}

// TestDecimalSizeUnitsAreRefused: KB, MB and GB are refused with the binary
// unit the user most likely meant; the exact byte count is the other way.
func TestDecimalSizeUnitsAreRefused(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"10MB", `"10MB" is not a size (such as 4096, 64KiB, 10MiB): did you mean 10MiB? Units are powers of 1024; for 10000000 bytes write 10000000`},
		{"64KB", `"64KB" is not a size (such as 4096, 64KiB, 10MiB): did you mean 64KiB? Units are powers of 1024; for 64000 bytes write 64000`},
		{"1 GB", `"1 GB" is not a size (such as 4096, 64KiB, 10MiB): did you mean 1GiB? Units are powers of 1024; for 1000000000 bytes write 1000000000`},
		{"64kib", `"64kib" is not a size (such as 4096, 64KiB, 10MiB): did you mean 64KiB?`},
		{"10M", `"10M" is not a size (such as 4096, 64KiB, 10MiB): did you mean 10MiB?`},
		{"5k", `"5k" is not a size (such as 4096, 64KiB, 10MiB): did you mean 5KiB?`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			_, err := config.ParseSize(tt.in)
			require.EqualError(t, err, tt.want)
		})
	}
	doc := serverDoc(minimalServer) + "limits:\n  max_body_size: 10MB\n  max_frame_size: 64KB\n"
	_, err := config.ParseServer("s.yaml", []byte(doc))
	require.Equal(t, withLines(t, doc, []string{
		`s.yaml:@10MB@: limits.max_body_size: "10MB" is not a size (such as 4096, 64KiB, 10MiB): did you mean 10MiB? Units are powers of 1024; for 10000000 bytes write 10000000`,
		`s.yaml:@64KB@: limits.max_frame_size: "64KB" is not a size (such as 4096, 64KiB, 10MiB): did you mean 64KiB? Units are powers of 1024; for 64000 bytes write 64000`,
	}), errorLines(problems(t, err)))
}

// writeFiles writes name -> content under dir (making folders) and
// returns dir.
func writeFiles(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	}
	return dir
}

// keyPairPEM returns a self-signed certificate and its key, PEM.
func keyPairPEM(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	cert, err := transport.SelfSigned("localhost")
	require.NoError(t, err)
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	require.NoError(t, transport.WritePEM(cert, cf, kf))
	c, err := os.ReadFile(cf)
	require.NoError(t, err)
	k, err := os.ReadFile(kf)
	require.NoError(t, err)
	return string(c), string(k)
}

// TestRelativePathsFollowTheConfigFile: the files a configuration names
// are found next to it whatever the working directory; absolute paths are
// kept; configurations built in code keep their paths as they are. It
// changes the working directory, so it does not run in parallel.
func TestRelativePathsFollowTheConfigFile(t *testing.T) {
	certPEM, keyPEM := keyPairPEM(t)
	abs := writeFiles(t, t.TempDir(), map[string]string{"abs.crt": certPEM, "abs.key": keyPEM})
	absCert, absKey := filepath.Join(abs, "abs.crt"), filepath.Join(abs, "abs.key")
	dir := writeFiles(t, t.TempDir(), map[string]string{
		"conf/certs/server.crt": certPEM,
		"conf/certs/server.key": keyPEM,
		"conf/public.crt":       certPEM,
		"conf/public.key":       keyPEM,
		"conf/token":            "s3cret\n",
		"conf/ca.pem":           certPEM,
		"conf/server.yaml": serverDoc(minimalServer) + `tls:
  cert_file: certs/server.crt
  key_file: ./certs/server.key
public_https: 127.0.0.1:8443
public_tls:
  - cert_file: public.crt
    key_file: public.key
  - cert_file: ` + absCert + `
    key_file: ` + absKey + `
`,
		"conf/client.yaml": `id: c1
token_file: token
server: 127.0.0.1:4443
server_ca_file: ca.pem
forward_tls:
  - cert_file: ../conf/public.crt
    key_file: ` + absKey + `
`,
	})
	conf := filepath.Join(dir, "conf")
	t.Chdir(t.TempDir()) // anywhere but the configuration's directory

	s, err := config.LoadServer(filepath.Join(conf, "server.yaml"))
	require.NoError(t, err)
	require.Equal(t, config.ServerTLS{CertFile: filepath.Join(conf, "certs/server.crt"), KeyFile: filepath.Join(conf, "certs/server.key")}, s.TLS)
	require.Equal(t, []config.CertFiles{
		{CertFile: filepath.Join(conf, "public.crt"), KeyFile: filepath.Join(conf, "public.key")},
		{CertFile: absCert, KeyFile: absKey},
	}, s.PublicTLS)
	data, err := os.ReadFile(filepath.Join(conf, "server.yaml"))
	require.NoError(t, err)
	require.NoError(t, config.CheckFiles(filepath.Join(conf, "server.yaml"), data, s), "check-config finds the files")

	c, err := config.LoadClient(filepath.Join(conf, "client.yaml"))
	require.NoError(t, err)
	require.Equal(t, filepath.Join(conf, "token"), c.TokenFile)
	require.Equal(t, filepath.Join(conf, "ca.pem"), c.ServerCAFile)
	require.Equal(t, []config.CertFiles{{CertFile: filepath.Join(conf, "public.crt"), KeyFile: absKey}}, c.ForwardTLS)
	tok, err := c.ReadToken()
	require.NoError(t, err)
	require.Equal(t, "s3cret", tok)
	data, err = os.ReadFile(filepath.Join(conf, "client.yaml"))
	require.NoError(t, err)
	require.NoError(t, config.CheckClientFiles(filepath.Join(conf, "client.yaml"), data, c))

	// ParseServer and ParseClient take the name as the file's path too.
	c, err = config.ParseClient("conf/client.yaml", data)
	require.NoError(t, err)
	require.Equal(t, filepath.Join("conf", "token"), c.TokenFile)
	c, err = config.ParseClient("client.yaml", data)
	require.NoError(t, err)
	require.Equal(t, "token", c.TokenFile, "a file in the working directory: paths as written")

	// Built in code, with no file: paths stay as they are.
	built := config.Client{ID: "c1", TokenFile: "token", Server: "127.0.0.1:4443", ServerCAFile: "ca.pem"}
	built.SetDefaults()
	require.NoError(t, built.Validate())
	require.Equal(t, "token", built.TokenFile)
	require.Equal(t, "ca.pem", built.ServerCAFile)
}

// TestCheckFilesNamesEveryMissingFile: check-config reports each file a
// configuration needs and cannot read, under its own setting and line:
// the certificate and the key, every public_tls and forward_tls file, the
// CA file and the token file.
func TestCheckFilesNamesEveryMissingFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sdoc := serverDoc(minimalServer) + `tls:
  cert_file: server.crt # tls cert
  key_file: server.key # tls key
public_https: 127.0.0.1:8443
public_tls:
  - cert_file: a.crt # public cert
    key_file: a.key # public key
`
	name := filepath.Join(dir, "server.yaml")
	s, err := config.ParseServer(name, []byte(sdoc))
	require.NoError(t, err)
	err = config.CheckFiles(name, []byte(sdoc), s)
	missing := func(f string) string { return "open " + filepath.Join(dir, f) + ": no such file or directory" }
	require.Equal(t, withLines(t, sdoc, []string{
		name + ":@# tls cert@: tls.cert_file: " + missing("server.crt"),
		name + ":@# tls key@: tls.key_file: " + missing("server.key"),
		name + ":@# public cert@: public_tls[0].cert_file: " + missing("a.crt"),
		name + ":@# public key@: public_tls[0].key_file: " + missing("a.key"),
	}), errorLines(problems(t, err)))

	cdoc := `id: c1
token_file: token # token
server: 127.0.0.1:4443
server_ca_file: ca.pem # ca
forward_tls:
  - cert_file: f.crt # forward cert
    key_file: f.key # forward key
`
	name = filepath.Join(dir, "client.yaml")
	c, err := config.ParseClient(name, []byte(cdoc))
	require.NoError(t, err)
	err = config.CheckClientFiles(name, []byte(cdoc), c)
	require.Equal(t, withLines(t, cdoc, []string{
		name + ":@# token@: token_file: " + missing("token"),
		name + ":@# ca@: server_ca_file: " + missing("ca.pem"),
		name + ":@# forward cert@: forward_tls[0].cert_file: " + missing("f.crt"),
		name + ":@# forward key@: forward_tls[0].key_file: " + missing("f.key"),
	}), errorLines(problems(t, err)))
}

// TestCheckFilesKeyPair: readable files that are not a matching pair are
// reported once, under cert_file.
func TestCheckFilesKeyPair(t *testing.T) {
	t.Parallel()
	certPEM, _ := keyPairPEM(t)
	_, otherKey := keyPairPEM(t)
	dir := writeFiles(t, t.TempDir(), map[string]string{"s.crt": certPEM, "s.key": otherKey})
	doc := serverDoc(minimalServer) + "tls:\n  cert_file: s.crt\n  key_file: s.key\n"
	name := filepath.Join(dir, "server.yaml")
	s, err := config.ParseServer(name, []byte(doc))
	require.NoError(t, err)
	err = config.CheckFiles(name, []byte(doc), s)
	require.Equal(t, []string{
		fmt.Sprintf("%s:%d: tls.cert_file: tls: private key does not match public key", name, lineNo(t, doc, "cert_file")),
	}, errorLines(problems(t, err)))
}
