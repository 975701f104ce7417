package gateway_test

import (
	"crypto/tls"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
)

// TestTLSListenersPickTheCertificateBySNI: one TLS listener on each side
// holds two certificates from files; the name the caller asks for picks the
// certificate, and on the public listener the rule too.
func TestTLSListenersPickTheCertificateBySNI(t *testing.T) {
	t.Parallel()
	fxA := newTLSFixture(t, "a.app.test")
	fxB := newTLSFixture(t, "b.app.test")
	answer := func(name string) string {
		return upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, name) })).URL
	}
	upA, upB := answer("upstream a"), answer("upstream b")
	fwd := forwardRule("fwd-tls", "127.0.0.1:0", upA)
	fwd.ListenTLS = true
	both := append(fxA.files(), fxB.files()...)
	p := startPair(t, pairOpts{
		rules:        []rules.Rule{reverseRule("rev-a", "a.app.test", upA), reverseRule("rev-b", "b.app.test", upB), fwd},
		serverMutate: func(c *config.Server) { c.PublicHTTPS, c.PublicTLS = "127.0.0.1:0", both },
		clientMutate: func(c *config.Client) { c.ForwardTLS = both },
	})
	pool := fxA.pool.Clone()
	pool.AddCert(fxB.cert.Leaf)
	for _, tc := range []struct {
		name, addr, sni, want string
	}{
		{"reverse a", p.Server.PublicTLSAddr().String(), "a.app.test", "upstream a"},
		{"reverse b", p.Server.PublicTLSAddr().String(), "b.app.test", "upstream b"},
		{"forward a", p.Client.ForwardAddr("127.0.0.1:0").String(), "a.app.test", "upstream a"},
		{"forward b", p.Client.ForwardAddr("127.0.0.1:0").String(), "b.app.test", "upstream a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: tc.sni}, ForceAttemptHTTP2: true}
			t.Cleanup(tr.CloseIdleConnections)
			req, err := http.NewRequest(http.MethodGet, "https://"+tc.addr+"/", nil)
			require.NoError(t, err)
			req.Host = tc.sni
			res, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
			require.NoError(t, err)
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, res.StatusCode, string(body))
			require.Equal(t, tc.want, string(body))
			require.Equal(t, "HTTP/2.0", res.Proto, "ALPN h2 on the TLS listener")
			leaf := res.TLS.PeerCertificates[0]
			require.Equal(t, []string{tc.sni}, leaf.DNSNames, "the certificate for the name asked for")
		})
	}
	// A name no certificate covers fails the handshake with the caller,
	// who is told which certificate it got instead of being served.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "c.app.test"}}
	t.Cleanup(tr.CloseIdleConnections)
	_, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get("https://" + p.Server.PublicTLSAddr().String() + "/")
	require.ErrorContains(t, err, "certificate is valid for")
}

// TestUpstreamTLSIsVerified: an https:// upstream is verified against the
// system's roots unless the rule names a CA file; a failed check is a 502
// and the upstream never sees the request; the rule's server name is the
// name checked; only the loudly named per-rule setting turns verification
// off, and it says so in a warning. Both directions.
func TestUpstreamTLSIsVerified(t *testing.T) {
	t.Parallel()
	fx := newTLSFixture(t, "up.app.test")
	var served atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		_, _ = io.WriteString(w, "tls upstream, sni "+r.TLS.ServerName)
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{fx.cert}}
	up.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
	up.StartTLS()
	t.Cleanup(up.Close)
	base := "https://" + up.Listener.Addr().String()

	// Each case is a rule each way: reverse on the public listener by Host,
	// forward on a loopback address of its own.
	type tlsCase struct {
		id, listen string
		set        func(r *rules.Rule)
		status     int
		body, err  string // the answer's body; the egress record's error
	}
	cases := []tlsCase{
		{"system-roots", "127.0.0.2:0", func(r *rules.Rule) { r.UpstreamServerName = "up.app.test" },
			http.StatusBadGateway, "", "certificate signed by unknown authority"},
		{"ip-name", "127.0.0.6:0", func(r *rules.Rule) {}, http.StatusBadGateway, "", "doesn't contain any IP SANs"},
		{"ca-file", "127.0.0.3:0", func(r *rules.Rule) { r.UpstreamCAFile, r.UpstreamServerName = fx.certFile, "up.app.test" },
			http.StatusOK, "tls upstream, sni up.app.test", ""},
		{"wrong-name", "127.0.0.4:0", func(r *rules.Rule) { r.UpstreamCAFile, r.UpstreamServerName = fx.certFile, "other.app.test" },
			http.StatusBadGateway, "", "not other.app.test"},
		{"insecure", "127.0.0.5:0", func(r *rules.Rule) { r.UpstreamTLSInsecureSkipVerify = true }, http.StatusOK, "tls upstream, sni ", ""},
	}
	var rs []rules.Rule
	for _, c := range cases {
		rev := reverseRule("rev-"+c.id, c.id+".app.test", base)
		c.set(&rev)
		fwd := forwardRule("fwd-"+c.id, c.listen, base)
		c.set(&fwd)
		rs = append(rs, rev, fwd)
	}
	srvLog, cliLog := newRecordKeeper(slog.LevelDebug), newRecordKeeper(slog.LevelDebug)
	p := startPair(t, pairOpts{rules: rs,
		serverOpts: []gateway.Option{gateway.WithLogger(slog.New(srvLog))},
		clientOpts: []gateway.Option{gateway.WithLogger(slog.New(cliLog))},
	})
	hc := h1Client(t)
	for _, c := range cases {
		for _, dir := range []struct {
			name, prefix, url, host string
			egress                  *recordKeeper
		}{
			{"reverse", "rev-", p.publicURL("/"), c.id + ".app.test", cliLog},
			{"forward", "fwd-", p.forwardURL(t, c.listen, "/"), "", srvLog},
		} {
			t.Run(dir.name+" "+c.id, func(t *testing.T) {
				before := served.Load()
				res, body := get(t, hc, dir.url, dir.host)
				require.Equal(t, c.status, res.StatusCode, body)
				rule := dir.prefix + c.id
				if c.status != http.StatusOK {
					require.Equal(t, before, served.Load(), "a failed check never reaches the upstream")
					// The caller learns no more than that; the egress side's
					// record says why.
					require.Eventually(t, func() bool {
						for _, r := range dir.egress.records() {
							if r.msg == "stream" && r.attrs["rule"] == rule && strings.Contains(r.attrs["err"], c.err) {
								return true
							}
						}
						return false
					}, 5*time.Second, 10*time.Millisecond, "a stream record for %s with %q in %v", rule, c.err, dir.egress.records())
					return
				}
				require.Equal(t, c.body, body)
			})
		}
	}
	// Turning verification off is never quiet: one warning per side that
	// dials such an upstream, naming the rule.
	for side, keeper := range map[string]*recordKeeper{"client (reverse egress)": cliLog, "server (forward egress)": srvLog} {
		var warned []string
		for _, r := range keeper.records() {
			if r.level == slog.LevelWarn && strings.Contains(r.msg, "TLS VERIFICATION IS OFF") {
				warned = append(warned, r.attrs["rule"])
			}
		}
		require.NotEmpty(t, warned, "%s: no warning for the insecure rule", side)
		for _, id := range warned {
			require.True(t, strings.HasSuffix(id, "-insecure"), "%s: warning for rule %q", side, id)
		}
	}
}
