package config_test

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/rules"
)

// The fuzz targets of this package: configuration files and the settings
// parsed out of them. testdata/fuzz/<name>/ holds more seeds and
// regressions.

const fuzzFile = "fuzz.yaml"

// smallServer and smallClient are valid files that touch most sections.
var (
	smallServer = serverDoc(`listen: 127.0.0.1:4443
clients:
  - id: c1
    token_sha256: HASH1
rules:
  - id: web
    client: c1
    direction: reverse
    host: App.Example.Test.
    path_prefix: /api
    upstreams: [http://127.0.0.1:3001, http://127.0.0.1:3002]
    load_balance: least_requests
    retries: 2
    health_check: {path: /healthz, interval: 5s}
  - id: db
    client: c1
    direction: forward
    protocol: tcp
    listen: 127.0.0.1:6000
    upstream: tcp://db.internal:5432
sync: {hash_check_interval: 15s, full_sync_interval: 5m, config_poll_interval: 1s}
limits: {max_frame_size: 64KiB, max_body_size: unlimited, min_body_rate: 1KiB, request_buffer: 16KiB}
trusted_proxies: [10.0.0.0/8, 192.0.2.7, "::1"]
tracing: {exporter: otlp-grpc, sample_ratio: 0.25}
rate_limit: {per_ip: {rate: 0.5, burst: 2}}
breaker: {failure_ratio: 0.5}
`)
	smallClient = `id: laptop
token: t
server: tunnel.example.com:4443
server_pin: "` + pin + `"
reconnect: {base: 200ms, max: 30s}
limits: {max_frame_size: 1MiB, max_body_size: -1}
log: {level: debug, format: json}
`
)

// lineCount is the number of lines of data as YAML counts them (a line
// ends at LF, CR, CR LF, NEL, LS or PS; a file that opens with a UTF-16
// byte order mark is UTF-16): a problem's line must be one of them.
func lineCount(data []byte) int {
	text := string(data)
	if len(data) >= 2 && (data[0] == 0xfe && data[1] == 0xff || data[0] == 0xff && data[1] == 0xfe) {
		order := binary.ByteOrder(binary.BigEndian)
		if data[0] == 0xff {
			order = binary.LittleEndian
		}
		units := make([]uint16, 0, len(data)/2)
		for i := 2; i+1 < len(data); i += 2 {
			units = append(units, order.Uint16(data[i:]))
		}
		text = string(utf16.Decode(units))
	}
	s := strings.ReplaceAll(text, "\r\n", "\n")
	n := 1
	for _, br := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
		n += strings.Count(s, br)
	}
	return n
}

// requireProblems checks what every error of ParseServer and ParseClient
// is: Problems, each of the file, with a message, and a line (if any)
// inside the input.
func requireProblems(t *testing.T, data []byte, err error) config.Problems {
	t.Helper()
	var ps config.Problems
	require.True(t, errors.As(err, &ps), "want config.Problems, got %T: %v", err, err)
	require.NotEmpty(t, ps)
	for _, p := range ps {
		require.Equal(t, fuzzFile, p.File)
		require.NotEmpty(t, p.Msg)
		require.True(t, p.Line >= 0 && p.Line <= lineCount(data), "problem %q names line %d of %d", p.Error(), p.Line, lineCount(data))
	}
	return ps
}

var (
	durationType     = reflect.TypeFor[time.Duration]()
	ruleDurationType = reflect.TypeFor[rules.Duration]()
)

// requireSane walks a validated configuration: no duration in it is
// negative (a negative interval makes time.NewTicker panic) and no number
// is NaN or infinite.
func requireSane(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			requireSane(t, path, v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				requireSane(t, path+"."+f.Name, v.Field(i))
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			requireSane(t, path+"["+strconv.Itoa(i)+"]", v.Index(i))
		}
	case reflect.Float32, reflect.Float64:
		f := v.Float()
		require.False(t, math.IsNaN(f) || math.IsInf(f, 0), "%s is %v in a valid configuration", path, f)
	case reflect.Int64:
		if v.Type() == durationType || v.Type() == ruleDurationType {
			require.GreaterOrEqual(t, v.Int(), int64(0), "%s is negative in a valid configuration", path)
		}
	}
}

// fuzzParse is the body of FuzzParseServer and FuzzParseClient: errors are
// well-formed Problems; a configuration that parses is sane, and what
// yaml.Marshal makes of it parses again to something that marshals the same
// (nil and empty lists marshal alike, so the fixed point is compared, not
// the values).
func fuzzParse[C any](t *testing.T, data []byte, parse func(string, []byte) (*C, error)) {
	c, err := parse(fuzzFile, data)
	if err != nil {
		requireProblems(t, data, err)
		return
	}
	requireSane(t, "config", reflect.ValueOf(c))
	out, err := yaml.Marshal(c)
	require.NoError(t, err)
	again, err := parse(fuzzFile, out)
	require.NoError(t, err, "the marshalled configuration does not parse:\n%s", out)
	out2, err := yaml.Marshal(again)
	require.NoError(t, err)
	require.Equal(t, string(out), string(out2))
}

// FuzzParseServer feeds arbitrary bytes to ParseServer.
func FuzzParseServer(f *testing.F) {
	if b, err := os.ReadFile("../examples/server.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(smallServer))
	f.Add([]byte(serverDoc(minimalServer)))
	f.Add([]byte("clients: []\nrules: [{id: a, client: c, direction: reverse, host: h, upstream: 'ftp://x'}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzParse(t, data, config.ParseServer)
	})
}

// FuzzParseClient feeds arbitrary bytes to ParseClient.
func FuzzParseClient(f *testing.F) {
	if b, err := os.ReadFile("../examples/client.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(smallClient))
	f.Add([]byte("id: c\nserver: 'no port'\nserver_pin: sha256:abc\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzParse(t, data, config.ParseClient)
	})
}

// FuzzCheckFiles checks where CheckFiles and CheckClientFiles put the
// problems of the files a configuration names. The names are pointed at
// files that do not exist (the fuzzer chooses no paths to read), so each
// one set must be reported once, under its setting, at a line inside the
// input.
func FuzzCheckFiles(f *testing.F) {
	f.Add([]byte(serverDoc("tls:\n  cert_file: a.crt\n  key_file: a.key\n" + minimalServer)))
	f.Add([]byte(smallClient + "server_ca_file: ca.pem\n"))
	f.Add([]byte(strings.Replace(smallClient, "token: t", "token_file: /t", 1)))
	f.Add([]byte(serverDoc("base: &tls {cert_file: a.crt, key_file: a.key}\n") + "tls: *tls\n" + serverDoc(minimalServer)))
	dir := f.TempDir()
	missing := filepath.Join(dir, "missing")
	f.Fuzz(func(t *testing.T, data []byte) {
		var paths []string
		var err error
		if s, perr := config.ParseServer(fuzzFile, data); perr == nil {
			if s.TLS.CertFile != "" {
				s.TLS.CertFile, s.TLS.KeyFile = missing, missing
				paths = append(paths, "tls.cert_file", "tls.key_file")
			}
			paths = append(paths, missingPairs("public_tls", s.PublicTLS, missing)...)
			err = config.CheckFiles(fuzzFile, data, s)
		} else if c, perr := config.ParseClient(fuzzFile, data); perr == nil {
			if c.Token == "" && c.TokenFile != "" {
				c.TokenFile = missing
				paths = append(paths, "token_file")
			}
			if c.ServerCAFile != "" {
				c.ServerCAFile = missing
				paths = append(paths, "server_ca_file")
			}
			paths = append(paths, missingPairs("forward_tls", c.ForwardTLS, missing)...)
			err = config.CheckClientFiles(fuzzFile, data, c)
		} else {
			return
		}
		if len(paths) == 0 {
			require.NoError(t, err)
			return
		}
		ps := requireProblems(t, data, err)
		var got []string
		for _, p := range ps {
			require.Positive(t, p.Line, "a setting that is set has a line: %s", p.Error())
			got = append(got, p.Path)
		}
		require.Equal(t, paths, got)
	})
}

// missingPairs points every certificate and key of cs (both set in a
// valid configuration) at missing and returns the settings that must then
// be reported, in order.
func missingPairs(path string, cs []config.CertFiles, missing string) []string {
	var paths []string
	for i := range cs {
		cs[i].CertFile, cs[i].KeyFile = missing, missing
		p := path + "[" + strconv.Itoa(i) + "]"
		paths = append(paths, p+".cert_file", p+".key_file")
	}
	return paths
}

// yamlNode is a scalar as the decoder hands it to UnmarshalYAML.
func yamlNode(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s, Line: 7, Column: 3}
}

// requireTypeErrorAtLine checks that an UnmarshalYAML error is a
// *yaml.TypeError (so that decoding goes on and reports the file's other
// problems) that names the node's line.
func requireTypeErrorAtLine(t *testing.T, err error) {
	t.Helper()
	var te *yaml.TypeError
	require.True(t, errors.As(err, &te), "want *yaml.TypeError, got %T: %v", err, err)
	require.Len(t, te.Errors, 1)
	require.True(t, strings.HasPrefix(te.Errors[0], "line 7: "), "%q", te.Errors[0])
}

// FuzzParseSize checks ParseSize and the YAML form of Size: they agree;
// what parses is a size within 0..2^62 that prints (String) as something
// that parses to the same size.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4096", "64KiB", "10MiB", "1GiB", "3KB", " 7 MB ", "2GB", "12B", "-1", "1.5MiB", "4611686018427387904", "KiB", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := config.ParseSize(s)
		var fromYAML config.Size
		yerr := fromYAML.UnmarshalYAML(yamlNode(s))
		if err != nil {
			require.ErrorContains(t, err, "is not a size")
			requireTypeErrorAtLine(t, yerr)
			return
		}
		require.NoError(t, yerr)
		require.Equal(t, v, fromYAML)
		require.True(t, v >= 0 && v <= 1<<62, "size %d", v)
		again, err := config.ParseSize(v.String())
		require.NoError(t, err, "%q does not parse", v.String())
		require.Equal(t, v, again)
	})
}

// FuzzSizeLimit checks the YAML form of SizeLimit: "unlimited", "off" and
// negative integers turn the limit off, sizes set it, anything else is a
// TypeError at the node's line; a limit prints as something that reads
// back the same.
func FuzzSizeLimit(f *testing.F) {
	for _, s := range []string{"10MiB", "unlimited", "OFF", "-1", "-9223372036854775808", "0", "1KiB", "-0", "off!", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var v config.SizeLimit
		err := v.UnmarshalYAML(yamlNode(s))
		if err != nil {
			requireTypeErrorAtLine(t, err)
			_, serr := config.ParseSize(strings.TrimSpace(s))
			require.Error(t, serr, "a size that parses is a limit")
			return
		}
		require.GreaterOrEqual(t, v.Bytes(), int64(0))
		require.True(t, v == config.Unlimited || v >= 0, "limit %d", v)
		var again config.SizeLimit
		require.NoError(t, again.UnmarshalYAML(yamlNode(v.String())), "%q does not read back", v.String())
		require.Equal(t, v, again)
	})
}

// FuzzParsePrefix checks trusted_proxies entries: what parses is a valid,
// masked prefix that prints as something that parses to the same prefix.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.1.2.3/8", "192.0.2.7", " 2001:db8::/32 ", "::ffff:192.0.2.7", "::ffff:192.0.2.0/120", "fe80::1%eth0", "1.2.3.4/33", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := config.ParsePrefix(s)
		if err != nil {
			require.ErrorContains(t, err, "is not a CIDR or an IP address")
			return
		}
		require.True(t, p.IsValid(), "%q parsed to an invalid prefix", s)
		require.Equal(t, p.Masked(), p)
		require.Empty(t, p.Addr().Zone())
		again, err := config.ParsePrefix(p.String())
		require.NoError(t, err)
		require.Equal(t, p, again)
		if !strings.Contains(s, "/") {
			require.Equal(t, p.Addr().BitLen(), p.Bits(), "a single address is a whole prefix")
			require.False(t, p.Addr().Is4In6(), "a single mapped address is its IPv4 form")
		}
		require.True(t, p.Contains(p.Addr()))
	})
}

// FuzzParseLevel checks log.level: what parses prints as a name that parses
// to the same level.
func FuzzParseLevel(f *testing.F) {
	for _, s := range []string{"debug", "INFO", "warn", "error", "info+2", "debug-4", "ERROR+1000", "trace", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := config.ParseLevel(s)
		if err != nil {
			require.ErrorContains(t, err, "is not one of debug, info, warn, error")
			return
		}
		again, err := config.ParseLevel(l.String())
		require.NoError(t, err)
		require.Equal(t, l, again)
	})
}
