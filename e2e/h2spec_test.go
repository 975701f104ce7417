package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// h2spec (github.com/summerwind/h2spec) is run as a binary, not a module
// dependency: `make h2spec` installs it into bin/ and runs this test.
const (
	h2specInstall = "run `make h2spec`, which installs it into bin/ with go install (the Makefile's H2SPEC_VERSION) and runs this test"
	// h2specAllowList is the one place where the expected failures live.
	h2specAllowList = "../docs/H2SPEC.md"
	// h2specCaseTimeout is h2spec's -o: how long one case waits for the
	// server's reaction (a frame, a GOAWAY, a closed connection). Go's
	// server closes a connection up to 1 s after its GOAWAY, and h2spec's
	// default of 2 s left too little of a margin on a loaded machine.
	h2specCaseTimeout = 3 * time.Second
	// h2specRunTimeout bounds one whole run of h2spec against a listener.
	h2specRunTimeout = 60 * time.Second
	// h2specHost is the address h2spec dials and sends as :authority (with
	// the port); the reverse rule below matches it.
	h2specHost = "127.0.0.1"
	// h2specAnswer is the upstream's body for every request. h2spec skips
	// its negative-window case (http2/6.9.2/2) for bodies under 5 bytes.
	h2specAnswer = "answered by the upstream near the client\n"
)

// TestH2Spec runs the h2spec HTTP/2 conformance suite against the server's
// public listeners, h2c (public_http, prior knowledge) and h2 over TLS
// (public_https), through a reverse rule to an upstream near the client
// that answers 200 to anything. Every failing case must be listed, with its
// reason, in docs/H2SPEC.md; a failure that is not fails the test and
// prints the table row to add.
//
// It is not parallel: many cases wait for the server's reaction within
// h2spec's per-case timeout, and the other end-to-end tests' transfers
// would make those waits depend on the machine's load.
func TestH2Spec(t *testing.T) {
	bin := h2specBinary(t)
	allow := readH2SpecAllowList(t)

	var upstreamRequests atomic.Int64
	answerer := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamRequests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, h2specAnswer)
	}))
	certFile, keyFile, _ := writeCert(t, t.TempDir(), h2specHost)
	publicTLS := e2etest.FreeAddr(t, "tcp")
	e := startEnv(t, envOpts{
		nearClient: answerer,
		nearServer: answerer,
		extraRules: fmt.Sprintf(`  - id: h2spec
    client: %s
    direction: reverse
    host: %s
    upstream: %q
`, clientID, h2specHost, answerer),
		serverYAML: fmt.Sprintf("public_https: %q\npublic_tls:\n  - cert_file: %q\n    key_file: %q\n", publicTLS, certFile, keyFile),
	})
	e.server.waitFor(`msg="server started".* public_https=`+regexp.QuoteMeta(publicTLS), 5*time.Second)
	e.waitReady(t)

	listeners := []struct {
		name, addr string
		tls        bool
	}{
		{"h2c", e.public, false},
		{"tls", publicTLS, true},
	}
	for _, l := range listeners {
		t.Run(l.name, func(t *testing.T) {
			// The rule answers HTTP/2 requests for h2spec's :authority, so
			// that the cases exercise the whole path, not a 404.
			requireH2Answer(t, l.addr, l.tls)
			before := upstreamRequests.Load()
			res := runH2Spec(t, bin, l.addr, l.tls)
			t.Logf("%s (%s): %d tests, %d passed, %d skipped, %d failed in %v",
				l.name, l.addr, res.total(), res.passed, res.skipped, len(res.failed), res.took.Round(time.Millisecond))
			for _, f := range res.failed {
				t.Logf("%s failed %s: %s", l.name, f.id, f.desc)
			}
			for _, id := range res.skippedIDs {
				t.Logf("%s skipped %s", l.name, id)
			}
			require.Positive(t, res.passed, "h2spec passed no case; output:\n%s", res.output)
			require.Greater(t, upstreamRequests.Load(), before, "h2spec's requests reached the upstream through the tunnel")

			want := allow[l.name]
			var unexpected []string
			for _, f := range res.failed {
				if _, ok := want[f.id]; !ok {
					unexpected = append(unexpected, fmt.Sprintf("%s: %s\n    %s\n    row: | %s | %s | %s | Go or qtunnel? | why? |",
						f.id, f.desc, f.detail, l.name, f.id, f.desc))
				}
			}
			for _, id := range slices.Sorted(maps.Keys(want)) {
				if !slices.ContainsFunc(res.failed, func(f h2specCase) bool { return f.id == id }) {
					t.Logf("%s: %s is in %s but passed now: remove its row if it keeps passing", l.name, id, h2specAllowList)
				}
			}
			if len(unexpected) > 0 {
				t.Errorf("%s: %d h2spec failures are not in %s (add a row with the reason, or fix the server):\n%s\nh2spec output:\n%s",
					l.name, len(unexpected), h2specAllowList, strings.Join(unexpected, "\n"), res.output)
			}
		})
	}
	stopEnv(t, e)
}

// h2specBinary returns the h2spec to run: $H2SPEC, else h2spec on PATH,
// else the repository's bin/h2spec (where `make h2spec` puts it). The test
// skips, saying how to install it, when there is none.
func h2specBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("H2SPEC"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("H2SPEC=%s is not an executable (%v): %s", p, err, h2specInstall)
		}
		return p
	}
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", "bin", "h2spec")); err == nil {
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	t.Skipf("h2spec is not installed (not in $H2SPEC, on PATH or in bin/): %s", h2specInstall)
	return ""
}

// requireH2Answer sends one HTTP/2 request to addr, as h2spec does (same
// :authority, path "/"), and requires the upstream's 200.
func requireH2Answer(t *testing.T, addr string, overTLS bool) {
	t.Helper()
	var protos http.Protocols
	tr := &http.Transport{Protocols: &protos}
	scheme := "http"
	if overTLS {
		scheme = "https"
		protos.SetHTTP2(true)
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} // h2spec's -k: the certificate is self-signed
	} else {
		protos.SetUnencryptedHTTP2(true)
	}
	defer tr.CloseIdleConnections()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(h2specHost, port)+"/", nil)
	require.NoError(t, err)
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, 2, resp.ProtoMajor, "HTTP/2 on %s", addr)
	require.Equal(t, http.StatusOK, resp.StatusCode, "the h2spec rule's answer: %s", body)
	require.Equal(t, h2specAnswer, string(body))
}

// h2specCase is one case of an h2spec run.
type h2specCase struct {
	id     string // group and sequence number, such as "http2/6.9.1/2"
	desc   string
	detail string // what h2spec expected and what it got
}

type h2specResult struct {
	passed, skipped int
	failed          []h2specCase
	skippedIDs      []string
	output          string
	took            time.Duration
}

func (r h2specResult) total() int { return r.passed + r.skipped + len(r.failed) }

// h2specSummary is h2spec's closing line.
var h2specSummary = regexp.MustCompile(`(?m)^(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// runH2Spec runs every h2spec case against addr and reads the results from
// its JUnit report, checked against the counts it printed.
func runH2Spec(t *testing.T, bin, addr string, overTLS bool) h2specResult {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	args := []string{"-h", h2specHost, "-p", port, "-o", strconv.Itoa(int(h2specCaseTimeout / time.Second)), "-j", report}
	if overTLS {
		args = append(args, "-t", "-k")
	}
	ctx, cancel := context.WithTimeout(context.Background(), h2specRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	res := h2specResult{output: out.String(), took: time.Since(start)}
	require.NoError(t, ctx.Err(), "h2spec %s did not finish within %v; output so far:\n%s", strings.Join(args, " "), h2specRunTimeout, res.output)
	// h2spec exits 1 when a case failed; anything else, or no report
	// (it gives up at once when it cannot connect), is a broken run.
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("h2spec %s: %v; output:\n%s", strings.Join(args, " "), err, res.output)
	}
	xmlBytes, err := os.ReadFile(report)
	require.NoError(t, err, "h2spec wrote no JUnit report; output:\n%s", res.output)
	var rep struct {
		Suites []struct {
			Group string `xml:"package,attr"`
			Cases []struct {
				Desc    string    `xml:"classname,attr"`
				Failure *xmlText  `xml:"failure"`
				Error   *xmlText  `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	require.NoError(t, xml.Unmarshal(xmlBytes, &rep), "h2spec's JUnit report")
	for _, s := range rep.Suites {
		// A case's number is its place in its group: h2spec reports the
		// cases it ran in order, and without -S (strict) none is left out.
		for i, c := range s.Cases {
			id := s.Group + "/" + strconv.Itoa(i+1)
			switch {
			case c.Failure != nil:
				res.failed = append(res.failed, h2specCase{id, c.Desc, expectedGot(c.Failure.Text)})
			case c.Error != nil:
				res.failed = append(res.failed, h2specCase{id, c.Desc, expectedGot(c.Error.Text)})
			case c.Skipped != nil:
				res.skipped++
				res.skippedIDs = append(res.skippedIDs, id)
			default:
				res.passed++
			}
		}
	}
	m := h2specSummary.FindStringSubmatch(res.output)
	require.NotNil(t, m, "h2spec printed no summary; output:\n%s", res.output)
	require.Equal(t, []string{strconv.Itoa(res.total()), strconv.Itoa(res.passed), strconv.Itoa(res.skipped), strconv.Itoa(len(res.failed))}, m[1:],
		"h2spec's summary agrees with its JUnit report (tests, passed, skipped, failed)")
	return res
}

type xmlText struct {
	Text string `xml:",chardata"`
}

// h2specCaseID is an h2spec case: group, section, sequence number.
var h2specCaseID = regexp.MustCompile(`^(generic|http2|hpack)/[0-9.]+/[0-9]+$`)

// readH2SpecAllowList reads the table between the allow-list markers of
// docs/H2SPEC.md: listener -> case id -> description. Each row needs a
// listener ("h2c", "tls", or both comma-separated), a case id, a
// description, where the behaviour comes from (Go or qtunnel) and a reason.
func readH2SpecAllowList(t *testing.T) map[string]map[string]string {
	t.Helper()
	f, err := os.Open(h2specAllowList)
	require.NoError(t, err)
	defer f.Close()
	allow := map[string]map[string]string{"h2c": {}, "tls": {}}
	in, seen := false, false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "<!-- h2spec-allow-list:begin -->":
			in, seen = true, true
			continue
		case line == "<!-- h2spec-allow-list:end -->":
			in = false
			continue
		case !in || !strings.HasPrefix(line, "|"):
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) != 5 {
			t.Fatalf("%s:%d: a row has 5 cells (listener | case | description | from | reason): %q", h2specAllowList, n, line)
		}
		if cells[0] == "Listener" || strings.Trim(cells[0], "-: ") == "" {
			continue // the header and its separator
		}
		id := strings.Trim(cells[1], "`")
		require.Regexp(t, h2specCaseID, id, "%s:%d: case id", h2specAllowList, n)
		require.NotEmpty(t, cells[2], "%s:%d: description", h2specAllowList, n)
		require.Regexp(t, `^(Go|qtunnel)\b`, cells[3], "%s:%d: where it comes from: Go or qtunnel", h2specAllowList, n)
		require.NotEmpty(t, cells[4], "%s:%d: reason", h2specAllowList, n)
		for l := range strings.SplitSeq(cells[0], ",") {
			l = strings.TrimSpace(l)
			require.Contains(t, allow, l, "%s:%d: listener is h2c or tls", h2specAllowList, n)
			require.NotContains(t, allow[l], id, "%s:%d: %s is listed twice for %s", h2specAllowList, n, id, l)
			allow[l][id] = cells[2]
		}
	}
	require.NoError(t, sc.Err())
	require.True(t, seen, "%s has no allow-list markers", h2specAllowList)
	return allow
}

// expectedGot renders h2spec's failure text, its expected events one a
// line and then what it got, as one line.
func expectedGot(text string) string {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) < 2 {
		return "got: " + lines[0]
	}
	return "expected: " + strings.Join(lines[:len(lines)-1], " or ") + "; got: " + lines[len(lines)-1]
}
