package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/transport"
)

// The login throttle (config auth_throttle): failed tunnel logins and admin
// requests with a wrong token are counted per source address (and tunnel
// logins per client id too); past the limit further attempts are refused
// without a token check, logged once per window with counts, and counted in
// qtunnel_auth_failures_total and qtunnel_auth_refused_total.

// loginOutcome is what the server did with one tunnel login.
type loginOutcome int

const (
	loginAccepted  loginOutcome = iota // HELLO_ACK
	loginRejected                      // REJECT: the token was checked and refused
	loginThrottled                     // closed with codec.ConnThrottled, unchecked
)

func (o loginOutcome) String() string {
	return [...]string{"accepted", "rejected", "throttled"}[o]
}

// tunnelLogin sends one HELLO for id with tok to the server's tunnel from a
// UDP socket bound to the loopback address local (127.0.0.0/8 is all
// loopback on Linux), and says what the server did. A throttled login's
// close reason is returned too.
func tunnelLogin(t *testing.T, s *gateway.Server, local, id, tok string) (loginOutcome, string) {
	t.Helper()
	tlsConf, err := transport.ClientTLS(transport.ClientTLSOptions{Pin: s.Pin()})
	require.NoError(t, err)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(local)})
	require.NoError(t, err)
	tr := &quic.Transport{Conn: pc}
	defer func() {
		_ = tr.Close()
		_ = pc.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := tr.Dial(ctx, s.TunnelAddr().(*net.UDPAddr), tlsConf, transport.Config{}.QUIC())
	require.NoError(t, err)
	defer func() { _ = qc.CloseWithError(quic.ApplicationErrorCode(codec.ConnNormal), "test login done") }()
	cs, err := qc.OpenStreamSync(ctx)
	require.NoError(t, err)
	_, err = control.Hello(ctx, cs, &codec.Hello{ClientID: id, Token: tok}, 5*time.Second)
	if err == nil {
		return loginAccepted, ""
	}
	var rej *control.RejectedError
	if errors.As(err, &rej) {
		return loginRejected, rej.Reason
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && uint64(ae.ErrorCode) == codec.ConnThrottled {
		return loginThrottled, ae.ErrorMessage
	}
	t.Fatalf("login from %s: unexpected error %v", local, err)
	return 0, ""
}

// loginBurst sends n logins one after the other and counts the outcomes.
func loginBurst(t *testing.T, s *gateway.Server, local, id, tok string, n int) map[loginOutcome]int {
	t.Helper()
	got := map[loginOutcome]int{}
	for range n {
		o, reason := tunnelLogin(t, s, local, id, tok)
		got[o]++
		if o == loginThrottled {
			require.Regexp(t, `retry in \d+s`, reason, "a throttled login is told when to retry")
		}
	}
	return got
}

// warnings returns the records at warn or above, as text, for failures.
func warnings(h *recordKeeper) []string {
	var out []string
	for _, r := range h.records() {
		if r.level >= slog.LevelWarn {
			out = append(out, r.String())
		}
	}
	return out
}

// loginRecords returns the "failed logins" records of kind.
func loginRecords(h *recordKeeper, kind string) []logRecord {
	var out []logRecord
	for _, r := range h.records() {
		if r.msg == "failed logins" && r.attrs["kind"] == kind {
			out = append(out, r)
		}
	}
	return out
}

// adminRequest sends GET path to an admin listener from the loopback
// address local, with the bearer token tok unless it is empty.
func adminRequest(t *testing.T, addr net.Addr, local, path, tok string) (*http.Response, string) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}}
	req, err := http.NewRequest(http.MethodGet, "http://"+addr.String()+path, nil)
	require.NoError(t, err)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// authCounts scrapes /metrics (from local, with tok) and returns the
// failures and refusals counted for kind.
func authCounts(t *testing.T, addr net.Addr, local, tok, kind string) (failures, refused float64) {
	t.Helper()
	resp, body := adminRequest(t, addr, local, "/metrics", tok)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	byKind := map[string]string{"kind": kind}
	return sum(mfs, "qtunnel_auth_failures_total", byKind), sum(mfs, "qtunnel_auth_refused_total", byKind)
}

// TestTunnelLoginFloodIsThrottled: 200 logins with a wrong token from one
// address. The first max_failures are checked and refused (REJECT, final
// for a client); the rest are closed with ConnThrottled without a check.
// The server logs a handful of records, not 200; the metrics count both;
// and the real client, from another address, still connects.
func TestTunnelLoginFloodIsThrottled(t *testing.T) {
	t.Parallel()
	srvLog := newRecordKeeper(slog.LevelWarn)
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, "http://127.0.0.1:1")},
		serverMutate: func(c *config.Server) { withAdmin(&c.Common) },
		serverOpts:   []gateway.Option{gateway.WithLogger(slog.New(srvLog))},
	})
	const maxFailures = 5 // the default of auth_throttle.max_failures

	got := loginBurst(t, p.Server, "127.0.0.2", clientID, "wrong-token", 200)
	require.Equal(t, map[loginOutcome]int{loginRejected: maxFailures, loginThrottled: 200 - maxFailures}, got,
		"after max_failures failures the rest are refused unchecked")

	eventually(t, 10*time.Second, func() bool {
		f, r := authCounts(t, p.Server.AdminAddr(), "127.0.0.1", "", "tunnel")
		return f == maxFailures && r == 200-maxFailures
	}, "qtunnel_auth_failures_total and qtunnel_auth_refused_total count the flood")
	warns := warnings(srvLog)
	t.Logf("server warnings after 200 failed logins:\n%s", strings.Join(warns, "\n"))
	require.LessOrEqual(t, len(warns), 3, "a handful of warnings for 200 failed logins, not one each:\n%s", strings.Join(warns, "\n"))
	recs := loginRecords(srvLog, "tunnel")
	require.NotEmpty(t, recs, "the flood is logged:\n%s", strings.Join(warns, "\n"))
	require.Equal(t, "127.0.0.2", recs[0].attrs["source"])
	require.Equal(t, clientID, recs[0].attrs["client_ids"])
	require.NotEmpty(t, recs[0].attrs["failures"])

	// The real client is unaffected: it is still connected, and connects
	// again from its own address.
	require.True(t, p.Client.Connected())
	p.stopClient(t)
	rc := runClient(t, clientConfig(p.Server.TunnelAddr().String(), p.Server.Pin()))
	select {
	case <-rc.Ready():
	case err := <-rc.done:
		t.Fatalf("the real client stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the real client did not connect within 10s")
	}
	o, _ := tunnelLogin(t, p.Server, "127.0.0.2", clientID, token)
	require.Equal(t, loginThrottled, o, "even the right token is not checked from a throttled address")
}

// TestTunnelLoginIDFloodSparesKnownAddress: wrong tokens for the client's
// id from several addresses, each under its own limit, until the id is over
// 4 x max_failures. Attempts for the id from addresses it never logged in
// from are then refused unchecked (even with the right token), but the real
// client, from the address it logged in from before, still connects, and
// other ids are not affected.
func TestTunnelLoginIDFloodSparesKnownAddress(t *testing.T) {
	t.Parallel()
	srvLog := newRecordKeeper(slog.LevelWarn)
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev", appHost, "http://127.0.0.1:1")},
		serverMutate: func(c *config.Server) { withAdmin(&c.Common) },
		serverOpts:   []gateway.Option{gateway.WithLogger(slog.New(srvLog))},
	})
	const maxFailures = 5
	p.stopClient(t) // it logged in from 127.0.0.1: a known address of its id

	for i := 2; i <= 5; i++ { // 4 x max_failures failures, max_failures from each address
		src := fmt.Sprintf("127.0.0.%d", i)
		got := loginBurst(t, p.Server, src, clientID, "wrong-token", maxFailures)
		require.Equal(t, map[loginOutcome]int{loginRejected: maxFailures}, got, "from %s", src)
	}
	o, _ := tunnelLogin(t, p.Server, "127.0.0.6", clientID, token)
	require.Equal(t, loginThrottled, o, "the id is over its limit: a new address is refused unchecked, right token or not")
	o, _ = tunnelLogin(t, p.Server, "127.0.0.6", "someone-else", "wrong-token")
	require.Equal(t, loginRejected, o, "other ids are checked as usual")

	rc := runClient(t, clientConfig(p.Server.TunnelAddr().String(), p.Server.Pin()))
	select {
	case <-rc.Ready():
	case err := <-rc.done:
		t.Fatalf("the real client stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the real client did not connect from its known address within 10s")
	}

	f, r := authCounts(t, p.Server.AdminAddr(), "127.0.0.1", "", "tunnel")
	require.Equal(t, float64(4*maxFailures+1), f)
	require.Equal(t, 1.0, r)
	t.Logf("server warnings:\n%s", strings.Join(warnings(srvLog), "\n"))
	idRecs := 0
	for _, rec := range loginRecords(srvLog, "tunnel") {
		if rec.attrs["client_id"] == clientID {
			idRecs++
			require.NotEmpty(t, rec.attrs["backoff"], "the id's record says it is throttled: %s", rec)
		}
	}
	require.Equal(t, 1, idRecs, "the id's throttle is logged once:\n%s", strings.Join(warnings(srvLog), "\n"))
	require.LessOrEqual(t, len(warnings(srvLog)), 8, "one record per address and one for the id:\n%s", strings.Join(warnings(srvLog), "\n"))
}

// TestThrottledClientRetries: a client whose address is throttled is told
// to retry later: it says so, keeps retrying instead of exiting as it does
// for a wrong token, and connects once the back-off is over.
func TestThrottledClientRetries(t *testing.T) {
	t.Parallel()
	const window = 3 * time.Second // the back-off the client waits out
	sc := serverConfig([]rules.Rule{reverseRule("rev", appHost, "http://127.0.0.1:1")})
	sc.AuthThrottle = config.AuthThrottle{MaxFailures: 2, Window: window, MaxBackoff: window}
	srv := startServer(t, sc)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
	})
	// The client dials from 127.0.0.1 (the server's address): fail logins
	// from there until it is throttled (two failures within the window;
	// a slow machine may need a few more tries).
	throttled := false
	for range 50 {
		if o, _ := tunnelLogin(t, srv, "127.0.0.1", clientID, "wrong-token"); o == loginThrottled {
			throttled = true
			break
		}
	}
	require.True(t, throttled, "127.0.0.1 is throttled")

	cliLog := newRecordKeeper(slog.LevelWarn)
	rc := runClient(t, clientConfig(srv.TunnelAddr().String(), srv.Pin()), gateway.WithLogger(slog.New(cliLog)))
	select {
	case <-rc.Ready():
	case err := <-rc.done:
		t.Fatalf("a throttled client must retry, not stop: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the client did not connect after the back-off")
	}
	var said string
	for _, r := range cliLog.records() {
		if strings.Contains(r.msg, "throttl") {
			said = r.String()
		}
	}
	require.NotEmpty(t, said, "the client says why it waits:\n%s", strings.Join(warnings(cliLog), "\n"))
	require.Contains(t, said, "retry in")
}

// TestAdminLoginFloodIsThrottled: 200 admin requests with a wrong or
// missing token from one address get 401 for the first max_failures, then
// 429 with Retry-After, unchecked; one record is logged with counts; the
// metrics count both; /healthz stays open; the right token from another
// address still works.
func TestAdminLoginFloodIsThrottled(t *testing.T) {
	t.Parallel()
	srvLog := newRecordKeeper(slog.LevelWarn)
	sc := serverConfig([]rules.Rule{reverseRule("rev", appHost, "http://127.0.0.1:1")})
	sc.Admin.Listen, sc.Admin.Token = "127.0.0.1:0", "admin-secret"
	srv := startServer(t, sc, gateway.WithLogger(slog.New(srvLog)))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
	})
	const maxFailures = 5
	addr := srv.AdminAddr()

	statuses := map[int]int{}
	for i := range 200 {
		tok := "wrong" // and, every other time, none: scanners probe without one
		if i%2 == 1 {
			tok = ""
		}
		resp, body := adminRequest(t, addr, "127.0.0.1", "/config", tok)
		statuses[resp.StatusCode]++
		if resp.StatusCode == http.StatusTooManyRequests {
			secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			require.NoError(t, err, "Retry-After in seconds")
			require.Positive(t, secs)
			require.LessOrEqual(t, secs, 60)
			require.Equal(t, 1, strings.Count(body, "\n"), "a one-line body: %q", body)
			require.NotContains(t, resp.Header, "Www-Authenticate", "no token was checked")
		}
	}
	require.Equal(t, map[int]int{http.StatusUnauthorized: maxFailures, http.StatusTooManyRequests: 200 - maxFailures}, statuses)

	resp, _ := adminRequest(t, addr, "127.0.0.1", "/healthz", "")
	require.Equal(t, http.StatusOK, resp.StatusCode, "/healthz stays open")
	resp, _ = adminRequest(t, addr, "127.0.0.1", "/config", "admin-secret")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "the throttled address is not checked, right token or not")
	resp, body := adminRequest(t, addr, "127.0.0.2", "/config", "admin-secret")
	require.Equal(t, http.StatusOK, resp.StatusCode, "the right token from another address works: %s", body)

	f, r := authCounts(t, addr, "127.0.0.2", "admin-secret", "admin")
	require.Equal(t, float64(maxFailures), f)
	require.Equal(t, float64(200-maxFailures+1), r)
	recs := loginRecords(srvLog, "admin")
	t.Logf("server warnings after 200 failed admin logins:\n%s", strings.Join(warnings(srvLog), "\n"))
	require.Len(t, recs, 1, "one record for the flood:\n%s", strings.Join(warnings(srvLog), "\n"))
	require.Equal(t, "127.0.0.1", recs[0].attrs["source"])
	require.NotEmpty(t, recs[0].attrs["failures"])
	require.Len(t, warnings(srvLog), 1, "nothing else is logged")
}
