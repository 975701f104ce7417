package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/metrics"
)

// The data behind the admin listener's web page (admin/ui): one JSON
// document per side, served whole and as a live stream.
//
//	GET /dashboard         the document
//	GET /dashboard/events  server-sent events: the document every second
//
// Both need the admin token, as every admin endpoint does.

// dashboardEvery is how often the live stream sends the document.
const dashboardEvery = time.Second

// dashboard is the document.
type dashboard struct {
	Role string    `json:"role"`
	At   time.Time `json:"at"`
	// View is the side's /config: rules in force, sessions (server), the
	// connection and the declared rules (client).
	View any `json:"view"`
	// Sources says where each rule comes from (server): file, api or
	// declared.
	Sources map[string]string `json:"sources,omitempty"`
	// Traffic is each rule's counts, with the rate over the last interval
	// of the live stream.
	Traffic []ruleTraffic `json:"traffic"`
	// Conns are the live tunnel connections.
	Conns []connRow `json:"connections"`
	// RecentErrors are the side's last warnings and errors, newest first.
	RecentErrors []logRecord `json:"recent_errors"`
	// Inspector says the client's request inspector is on (/inspect/).
	Inspector bool `json:"inspector,omitempty"`
}

type ruleTraffic struct {
	metrics.RuleSummary
	// Rate is requests per second since the previous document of the
	// stream (0 in the first).
	Rate float64 `json:"rate"`
}

type connRow struct {
	Client      string `json:"client"`
	RTT         string `json:"rtt"`
	PacketsLost uint64 `json:"packets_lost"`
}

// dashboardSource builds the document for one side.
type dashboardSource struct {
	role    string
	view    func() any
	sources func() map[string]string // where each rule comes from; nil on the client
	m       func() *metrics.Metrics
	conns   func() []metrics.ConnStats
	recent  *recentLog
	insp    bool
}

func (d *dashboardSource) build(prev map[string]uint64, since time.Duration) (*dashboard, map[string]uint64) {
	doc := &dashboard{Role: d.role, At: time.Now().UTC(), View: d.view(), RecentErrors: d.recent.list(), Inspector: d.insp,
		Traffic: []ruleTraffic{}, Conns: []connRow{}}
	sum, _ := d.m().Summary()
	now := make(map[string]uint64, len(sum))
	for _, s := range sum {
		t := ruleTraffic{RuleSummary: s}
		if p, ok := prev[s.Rule]; ok && since > 0 && s.Requests >= p {
			t.Rate = float64(s.Requests-p) / since.Seconds()
		}
		now[s.Rule] = s.Requests
		doc.Traffic = append(doc.Traffic, t)
	}
	if d.sources != nil {
		doc.Sources = d.sources()
	}
	for _, c := range d.conns() {
		doc.Conns = append(doc.Conns, connRow{Client: c.ClientID, RTT: c.SmoothedRTT.Round(10 * time.Microsecond).String(), PacketsLost: c.PacketsLost})
	}
	return doc, now
}

// handlers returns the admin options that serve the document.
func (d *dashboardSource) handlers(done <-chan struct{}) []admin.Option {
	return []admin.Option{
		admin.WithHandler("GET /dashboard", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			doc, _ := d.build(nil, 0)
			writeJSON(w, http.StatusOK, doc)
		})),
		admin.WithHandler("GET /dashboard/events", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d.stream(r.Context(), done, w)
		})),
	}
}

// stream sends the document every dashboardEvery until the reader goes
// or done closes (the side is shutting down).
func (d *dashboardSource) stream(ctx context.Context, done <-chan struct{}, w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	t := time.NewTicker(dashboardEvery)
	defer t.Stop()
	var prev map[string]uint64
	last := time.Now()
	for {
		now := time.Now()
		var doc *dashboard
		doc, prev = d.build(prev, now.Sub(last))
		last = now
		b, err := json.Marshal(doc)
		if err != nil {
			return
		}
		_, _ = fmt.Fprintf(w, "event: dashboard\ndata: %s\n\n", b)
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if rc.Flush() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-done:
			_, _ = io.WriteString(w, "event: closing\ndata: {}\n\n")
			_ = rc.Flush()
			return
		case <-t.C:
		}
	}
}

// recentLog keeps a side's last warnings and errors for the dashboard: a
// slog.Handler in front of the side's own.
type recentLog struct {
	mu   sync.Mutex
	buf  []logRecord
	next int
	size int
}

type logRecord struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	Attrs   string    `json:"attrs,omitempty"`
}

// recentErrors is how many warnings and errors the dashboard shows.
const recentErrors = 20

func newRecentLog(size int) *recentLog { return &recentLog{size: size} }

func (l *recentLog) add(r logRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) < l.size {
		l.buf = append(l.buf, r)
		return
	}
	l.buf[l.next] = r
	l.next = (l.next + 1) % l.size
}

// list returns the records, newest first.
func (l *recentLog) list() []logRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]logRecord, 0, len(l.buf))
	for i := range l.buf {
		j := (l.next - 1 - i + 2*len(l.buf)) % len(l.buf)
		out = append(out, l.buf[j])
	}
	return out
}

// wrap returns a handler that keeps h's warnings and errors in l too.
func (l *recentLog) wrap(h slog.Handler) slog.Handler { return &recentHandler{l: l, next: h} }

type recentHandler struct {
	l     *recentLog
	next  slog.Handler
	attrs []slog.Attr
}

func (h *recentHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn || h.next.Enabled(ctx, level)
}

func (h *recentHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var attrs []byte
		add := func(a slog.Attr) bool {
			attrs = fmt.Appendf(attrs, "%s=%v ", a.Key, a.Value)
			return len(attrs) < 1024
		}
		for _, a := range h.attrs {
			add(a)
		}
		r.Attrs(add)
		if len(attrs) > 0 {
			attrs = attrs[:len(attrs)-1]
		}
		h.l.add(logRecord{Time: r.Time.UTC(), Level: r.Level.String(), Message: r.Message, Attrs: string(attrs)})
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *recentHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recentHandler{l: h.l, next: h.next.WithAttrs(as), attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *recentHandler) WithGroup(name string) slog.Handler {
	return &recentHandler{l: h.l, next: h.next.WithGroup(name), attrs: h.attrs}
}
