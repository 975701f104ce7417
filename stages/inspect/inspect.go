// Package inspect is the request inspector, as ngrok's: a stage that keeps
// the last requests of each rule (method, path, status, header fields with
// secrets masked, a preview of each body, the time each stage took) in a
// bounded ring, serves them over HTTP with live updates, and replays a
// request, as it was or edited.
//
// Memory is bounded by the settings: per rule at most Entries requests,
// each with at most BodyCapture bytes of each body and the header fields
// the gateway's limits let through; the rings of rules that are gone are
// dropped with Retain. A body is previewed as it streams by: the stage
// never holds a body back, and a body larger than BodyCapture is passed on
// whole, its preview marked truncated.
//
// Masked fields (Authorization, Cookie, Set-Cookie and the others of
// Config.Secrets) are shown as "***" with their length. The unmasked
// request is kept for replay only, in memory, and never served.
//
// The stage works on HTTP exchanges (Protocols is pipeline.HTTPProtocols)
// and belongs after decode, which makes the request: the stages inside it
// are timed (pipeline.Exchange.Timings).
package inspect

import (
	"bytes"
	"cmp"
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Name is the stage's name in the chains, errors and metrics.
const Name = "inspect"

// Defaults of Config.
const (
	DefaultEntries     = 100
	DefaultBodyCapture = 4 << 10
	// MaxBodyCapture bounds Config.BodyCapture.
	MaxBodyCapture = 1 << 20
)

// DefaultSecrets are the header fields masked by default.
var DefaultSecrets = []string{"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-Api-Key", "X-Auth-Token"}

// Config sets the inspector. The zero value keeps DefaultEntries requests
// per rule with DefaultBodyCapture bytes of each body.
type Config struct {
	// Entries is how many requests of each rule are kept; the oldest goes
	// first. Default 100.
	Entries int `yaml:"entries"`
	// BodyCapture is how many bytes of each body are kept. Default 4 KiB,
	// at most 1 MiB.
	BodyCapture int `yaml:"body_capture"`
	// Secrets are further header fields to mask, beside DefaultSecrets.
	Secrets []string `yaml:"secrets"`
}

// Entry is one request as the inspector shows it.
type Entry struct {
	// Seq numbers the entries of an inspector, from 1.
	Seq       uint64    `json:"seq"`
	RequestID string    `json:"request_id"`
	Rule      string    `json:"rule"`
	Time      time.Time `json:"time"`
	// Replay is the Seq of the entry this one replayed, or 0.
	Replay uint64 `json:"replay,omitempty"`

	Method         string      `json:"method"`
	Host           string      `json:"host"`
	URI            string      `json:"uri"`
	Proto          string      `json:"proto"`
	RequestHeader  http.Header `json:"request_header"`
	RequestBody    Body        `json:"request_body"`
	Status         int         `json:"status"`
	ResponseHeader http.Header `json:"response_header,omitempty"`
	ResponseBody   Body        `json:"response_body"`
	// Duration is the time from accepting the request to the end of its
	// answer.
	Duration time.Duration `json:"duration_ns"`
	// Stages is the time each stage took on its own, outermost first.
	Stages []StageTime `json:"stages,omitempty"`
	Error  string      `json:"error,omitempty"`

	replay *replayable // the unmasked request, for Replay; never served
}

// Body is the preview of a body.
type Body struct {
	// Size is the body's whole size as it streamed by.
	Size int64 `json:"size"`
	// Preview is its first bytes, at most Config.BodyCapture.
	Preview []byte `json:"preview,omitempty"`
	// Truncated says Preview is not the whole body.
	Truncated bool `json:"truncated,omitempty"`
}

// StageTime is the time one stage held a request, without the stages
// inside it.
type StageTime struct {
	Stage string        `json:"stage"`
	Took  time.Duration `json:"took_ns"`
}

// replayable is what replaying a request needs.
type replayable struct {
	header http.Header
	body   []byte // nil when the body was not captured whole
	whole  bool
}

// Inspector is the stage and the store of what it saw. Safe for
// concurrent use.
type Inspector struct {
	entries int
	capture int
	secrets map[string]bool

	mu     sync.Mutex
	rings  map[string]*ring
	seq    atomic.Uint64
	subs   map[chan Entry]struct{}
	closed chan struct{} // closed by EndEvents: live updates end
	once   sync.Once
}

// ring is one rule's last entries, oldest first once full.
type ring struct {
	buf  []Entry
	next int
	full bool
}

// New returns an inspector with cfg's settings.
func New(cfg Config) *Inspector {
	in := &Inspector{entries: cfg.Entries, capture: cfg.BodyCapture, rings: map[string]*ring{},
		subs: map[chan Entry]struct{}{}, closed: make(chan struct{})}
	if in.entries <= 0 {
		in.entries = DefaultEntries
	}
	if in.capture <= 0 {
		in.capture = DefaultBodyCapture
	}
	in.capture = min(in.capture, MaxBodyCapture)
	in.secrets = map[string]bool{}
	for _, s := range slices.Concat(DefaultSecrets, cfg.Secrets) {
		in.secrets[http.CanonicalHeaderKey(s)] = true
	}
	return in
}

// EndEvents ends the live updates being served (Handler's
// PREFIX/events), so that the listener serving them can shut down. The
// stage goes on recording. (Not Close: the stage outlives the chains it is
// put in, which are closed when a reload rebuilds them.)
func (in *Inspector) EndEvents() {
	in.once.Do(func() { close(in.closed) })
}

// Name names the stage.
func (in *Inspector) Name() string { return Name }

// Protocols says the stage inspects HTTP exchanges only.
func (in *Inspector) Protocols() pipeline.Protocols { return pipeline.HTTPProtocols }

// Handle records x: its request before the stages inside, its answer after
// them, both bodies as they stream by, and the outcome once delivered.
func (in *Inspector) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Request == nil {
		return next.Handle(ctx, x)
	}
	start := x.Start
	if start.IsZero() {
		start = time.Now()
	}
	rec := &record{in: in, start: start}
	req := x.Request
	rec.e = Entry{RequestID: x.ID, Time: rec.start, Method: req.Method, Host: req.Host, URI: req.URL.RequestURI(), Proto: req.Proto}
	rec.reqHeader = req.Header.Clone()
	if req.Body != nil && req.Body != http.NoBody {
		rec.reqBody = &capture{r: req.Body, limit: in.capture}
		req.Body = rec.reqBody
	}
	x.Timings = &pipeline.StageTimings{}
	x.Defer(rec)
	err := next.Handle(ctx, x)
	if r := x.Response; r != nil && r.Body != nil && r.Body != http.NoBody {
		rec.respBody = &capture{r: r.Body, limit: in.capture}
		r.Body = rec.respBody
	}
	return err
}

// record is one exchange being inspected; it finishes with the exchange.
type record struct {
	in        *Inspector
	start     time.Time
	e         Entry
	reqHeader http.Header
	reqBody   *capture
	respBody  *capture
}

// Finish completes the entry once the answer is delivered, and keeps it.
func (r *record) Finish(x *pipeline.Exchange, err error) error {
	e := r.e
	if x.Rule != nil {
		e.Rule = x.Rule.ID
	}
	e.Duration = time.Since(r.start)
	e.Status = x.Status
	if x.Response != nil {
		e.ResponseHeader = r.in.mask(x.Response.Header)
	}
	if err != nil {
		e.Error = err.Error()
	}
	e.RequestHeader = r.in.mask(r.reqHeader)
	e.RequestBody = r.reqBody.body()
	e.ResponseBody = r.respBody.body()
	if t := x.Timings; t != nil {
		names, own := t.Own()
		for i := range names {
			e.Stages = append(e.Stages, StageTime{Stage: names[i], Took: own[i]})
		}
	}
	rp := &replayable{header: r.reqHeader, whole: r.reqBody == nil || !e.RequestBody.Truncated}
	if rp.whole {
		rp.body = e.RequestBody.Preview
	}
	e.replay = rp
	r.in.keep(e)
	return err
}

// keep stores e in its rule's ring, tells the subscribers, and returns it
// numbered.
func (in *Inspector) keep(e Entry) Entry {
	e.Seq = in.seq.Add(1)
	in.mu.Lock()
	rg := in.rings[e.Rule]
	if rg == nil {
		rg = &ring{buf: make([]Entry, 0, min(in.entries, 16))}
		in.rings[e.Rule] = rg
	}
	if len(rg.buf) < in.entries {
		rg.buf = append(rg.buf, e)
	} else {
		rg.buf[rg.next] = e
		rg.next = (rg.next + 1) % in.entries
		rg.full = true
	}
	for ch := range in.subs {
		select {
		case ch <- e:
		default: // a slow reader misses entries; it can list them
		}
	}
	in.mu.Unlock()
	return e
}

// Entries returns the kept entries of every rule, newest first.
func (in *Inspector) Entries() []Entry {
	in.mu.Lock()
	var out []Entry
	for _, rg := range in.rings {
		out = append(out, rg.buf...)
	}
	in.mu.Unlock()
	slices.SortFunc(out, func(a, b Entry) int { return cmp.Compare(b.Seq, a.Seq) })
	return out
}

// Entry returns the entry seq, if it is still kept.
func (in *Inspector) Entry(seq uint64) (Entry, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, rg := range in.rings {
		for _, e := range rg.buf {
			if e.Seq == seq {
				return e, true
			}
		}
	}
	return Entry{}, false
}

// Retain drops the entries of rules whose ids keep says false for (rules
// that are gone).
func (in *Inspector) Retain(keep func(rule string) bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for id := range in.rings {
		if !keep(id) {
			delete(in.rings, id)
		}
	}
}

// subscribe returns a channel of the entries kept from now on (bounded:
// a reader that falls behind misses some), and its cancel.
func (in *Inspector) subscribe() (<-chan Entry, func()) {
	ch := make(chan Entry, 64)
	in.mu.Lock()
	in.subs[ch] = struct{}{}
	in.mu.Unlock()
	return ch, func() {
		in.mu.Lock()
		delete(in.subs, ch)
		in.mu.Unlock()
	}
}

// mask returns a copy of h with the secret fields masked.
func (in *Inspector) mask(h http.Header) http.Header {
	if h == nil {
		return nil
	}
	out := make(http.Header, len(h))
	for k, vs := range h {
		if in.secrets[k] {
			m := make([]string, len(vs))
			for i, v := range vs {
				m[i] = "*** (" + strconv.Itoa(len(v)) + " bytes)"
			}
			out[k] = m
			continue
		}
		out[k] = slices.Clone(vs)
	}
	return out
}

// capture passes a body through and keeps its first bytes.
type capture struct {
	r     io.ReadCloser
	limit int
	buf   []byte
	size  int64
}

func (c *capture) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.size += int64(n)
		if room := c.limit - len(c.buf); room > 0 {
			c.buf = append(c.buf, p[:min(n, room)]...)
		}
	}
	return n, err
}

func (c *capture) Close() error { return c.r.Close() }

// body returns the preview of what went through c (nil c: no body).
func (c *capture) body() Body {
	if c == nil {
		return Body{}
	}
	// A copy of its exact size: what an entry keeps is what it shows.
	return Body{Size: c.size, Preview: bytes.Clone(c.buf), Truncated: c.size > int64(len(c.buf))}
}
