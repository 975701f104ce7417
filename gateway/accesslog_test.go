package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/gateway"
	"github.com/qtunnel/qtunnel/rules"
)

// logRecord is one record as the test sees it: level, message and every
// attribute (the logger's own, such as side, included) as text.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r logRecord) String() string { return fmt.Sprintf("%s %q %v", r.level, r.msg, r.attrs) }

// recordKeeper is a slog handler that keeps the records at or above its
// level, with their attributes, for all the loggers derived from it.
type recordKeeper struct {
	level slog.Level
	attrs []slog.Attr
	mu    *sync.Mutex
	recs  *[]logRecord
}

func newRecordKeeper(level slog.Level) *recordKeeper {
	return &recordKeeper{level: level, mu: new(sync.Mutex), recs: new([]logRecord)}
}

func (h *recordKeeper) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *recordKeeper) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	return nil
}

func (h *recordKeeper) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(slices.Clip(h.attrs), as...)
	return &c
}

func (h *recordKeeper) WithGroup(string) slog.Handler { return h }

func (h *recordKeeper) records() []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.recs)
}

// has says whether a record with message msg was kept.
func (h *recordKeeper) has(msg string) bool {
	return slices.ContainsFunc(h.records(), func(r logRecord) bool { return r.msg == msg })
}

// accessOf returns the access records of request id.
func (h *recordKeeper) accessOf(id string) []logRecord {
	var out []logRecord
	for _, r := range h.records() {
		if r.msg == "access" && r.attrs["request_id"] == id {
			out = append(out, r)
		}
	}
	return out
}

// TestAccessLogOneRecordPerRequestEachSide turns log.access on on both
// sides and sends requests through both tunnels: each writes exactly one
// record at info with the message "access" on each side it crossed, with
// the fields docs/OPERATIONS.md lists and the same request id and status
// on both sides; a request the server's route refuses is logged on the
// server only. Nothing else is logged at info meanwhile.
func TestAccessLogOneRecordPerRequestEachSide(t *testing.T) {
	t.Parallel()
	up := upstream(t, okOrMissing)
	srvLog, cliLog := newRecordKeeper(slog.LevelInfo), newRecordKeeper(slog.LevelInfo)
	access := func(c *config.Log) { c.Level, c.Access = "info", true }
	p := startPair(t, pairOpts{
		rules: []rules.Rule{
			reverseRule("rev", appHost, up.URL),
			forwardRule("fwd", "127.0.0.1:0", up.URL),
		},
		serverMutate: func(c *config.Server) { access(&c.Log) },
		clientMutate: func(c *config.Client) { access(&c.Log) },
		serverOpts:   []gateway.Option{gateway.WithLogger(slog.New(srvLog))},
		clientOpts:   []gateway.Option{gateway.WithLogger(slog.New(cliLog))},
	})
	eventually(t, 10*time.Second, func() bool { return srvLog.has("client applied rules") }, "server logs the client's first apply")
	srvBefore, cliBefore := len(srvLog.records()), len(cliLog.records())

	hc := h1Client(t)
	fwd := p.forwardURL(t, "127.0.0.1:0", "")
	type sent struct {
		name                 string
		method, url, host    string
		body                 []byte
		status               int
		ingress, egress      *recordKeeper // nil egress: refused before the tunnel
		rule, path, wantHost string
		bytesIn, bytesOut    int
	}
	cases := []sent{
		{name: "reverse GET", method: http.MethodGet, url: p.publicURL("/ok"), host: appHost, status: 200,
			ingress: srvLog, egress: cliLog, rule: "rev", path: "/ok", wantHost: appHost, bytesOut: 2},
		{name: "reverse POST", method: http.MethodPost, url: p.publicURL("/ok"), host: appHost, body: bytes.Repeat([]byte("b"), 300),
			status: 200, ingress: srvLog, egress: cliLog, rule: "rev", path: "/ok", wantHost: appHost, bytesIn: 300, bytesOut: 2},
		{name: "reverse, the upstream's 404", method: http.MethodGet, url: p.publicURL("/missing"), host: appHost, status: 404,
			ingress: srvLog, egress: cliLog, rule: "rev", path: "/missing", wantHost: appHost, bytesOut: len("404 page not found\n")},
		{name: "reverse, no route", method: http.MethodGet, url: p.publicURL("/x"), host: "nowhere.test", status: 404,
			ingress: srvLog, rule: "", path: "/x", wantHost: "nowhere.test"},
		{name: "forward GET", method: http.MethodGet, url: fwd + "/ok", status: 200,
			ingress: cliLog, egress: srvLog, rule: "fwd", path: "/ok", bytesOut: 2},
		{name: "forward, the upstream's 404", method: http.MethodGet, url: fwd + "/missing", status: 404,
			ingress: cliLog, egress: srvLog, rule: "fwd", path: "/missing", bytesOut: len("404 page not found\n")},
	}
	ids := make([]string, len(cases))
	for i, c := range cases {
		resp, _ := do(t, hc, newRequest(t, c.method, c.url, c.host, bytes.NewReader(c.body)))
		require.Equal(t, c.status, resp.StatusCode, c.name)
		ids[i] = resp.Header.Get("X-Request-Id")
		require.NotEmpty(t, ids[i], c.name)
	}

	// A side writes its record when its chain returns, which may be just
	// after the user got the answer.
	wantSrv, wantCli := 0, 0
	for _, c := range cases {
		for _, side := range []*recordKeeper{c.ingress, c.egress} {
			switch side {
			case srvLog:
				wantSrv++
			case cliLog:
				wantCli++
			}
		}
	}
	eventually(t, 10*time.Second, func() bool {
		return len(srvLog.records())-srvBefore >= wantSrv && len(cliLog.records())-cliBefore >= wantCli
	}, fmt.Sprintf("%d access records on the server and %d on the client", wantSrv, wantCli))

	for i, c := range cases {
		id := ids[i]
		ing := c.ingress.accessOf(id)
		require.Len(t, ing, 1, "%s: one access record on the ingress side", c.name)
		in := ing[0]
		require.Equal(t, slog.LevelInfo, in.level, c.name)
		want := map[string]string{
			"request_id": id, "method": c.method, "host": c.wantHost, "path": c.path,
			"status": fmt.Sprint(c.status), "rule": c.rule, "proto": "http1",
			"bytes_in": fmt.Sprint(c.bytesIn), "bytes_out": fmt.Sprint(c.bytesOut),
		}
		if c.wantHost == "" { // forward: the user named the listener
			want["host"] = strings.TrimPrefix(fwd, "http://")
		}
		for k, v := range want {
			require.Equal(t, v, in.attrs[k], "%s: ingress %s (record %v)", c.name, k, in.attrs)
		}
		require.Contains(t, in.attrs["remote"], "127.0.0.1:", c.name)
		took, err := time.ParseDuration(in.attrs["took"])
		require.NoError(t, err, c.name)
		require.Positive(t, took, c.name)

		other := srvLog
		if c.ingress == srvLog {
			other = cliLog
		}
		eg := other.accessOf(id)
		if c.egress == nil {
			require.Empty(t, eg, "%s: no record on the side it never reached", c.name)
			continue
		}
		require.Len(t, eg, 1, "%s: one access record on the egress side", c.name)
		out := eg[0]
		require.Equal(t, slog.LevelInfo, out.level, c.name)
		for k, v := range map[string]string{
			"request_id": id, "client": clientID, "rule": c.rule, "method": c.method, "path": c.path,
			"status": in.attrs["status"],
		} {
			require.Equal(t, v, out.attrs[k], "%s: egress %s (record %v)", c.name, k, out.attrs)
		}
		_, err = time.ParseDuration(out.attrs["took"])
		require.NoError(t, err, c.name)
	}

	// Only access records at info during the traffic, each side's own.
	for _, side := range []struct {
		name   string
		log    *recordKeeper
		before int
		want   int
	}{{"server", srvLog, srvBefore, wantSrv}, {"client", cliLog, cliBefore, wantCli}} {
		recs := side.log.records()[side.before:]
		require.Len(t, recs, side.want, "%s: records during the traffic", side.name)
		for _, r := range recs {
			require.Equal(t, "access", r.msg, "%s: %v", side.name, r.attrs)
			require.Equal(t, side.name, r.attrs["side"])
		}
	}
}
