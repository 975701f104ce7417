package inspect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/qtunnel/qtunnel/internal/httpx"
)

// Replayer sends a request of rule again, the way the rule's requests go
// (to its upstream, or through the tunnel), and returns the answer.
type Replayer func(ctx context.Context, rule string, req *http.Request) (*http.Response, error)

// Edit changes a request before it is replayed; empty fields keep the
// original's.
type Edit struct {
	Method string `json:"method,omitempty"`
	URI    string `json:"uri,omitempty"`
	// Header replaces the fields it names (an empty list removes one).
	Header http.Header `json:"header,omitempty"`
	// Body, if not nil, replaces the body.
	Body *string `json:"body,omitempty"`
}

// ErrNotReplayable is returned for a request whose body was larger than
// the capture: replaying it would send another request.
var ErrNotReplayable = errors.New("the request's body was larger than body_capture, so it was not kept whole; give a body to replay it")

// Handler serves the inspector under prefix (such as "/inspect"):
//
//	GET  PREFIX/requests              the kept requests, newest first (?rule=ID: one rule's)
//	GET  PREFIX/requests/{seq}        one request
//	GET  PREFIX/events                server-sent events: each request as it is kept
//	POST PREFIX/requests/{seq}/replay replay it, optionally edited (an Edit as JSON): 200 with the new entry
//
// replay may be nil: then POST answers 501.
func (in *Inspector) Handler(prefix string, replay Replayer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+prefix+"/requests", func(w http.ResponseWriter, r *http.Request) {
		list := in.Entries()
		if rule := r.URL.Query().Get("rule"); rule != "" {
			kept := list[:0]
			for _, e := range list {
				if e.Rule == rule {
					kept = append(kept, e)
				}
			}
			list = kept
		}
		if list == nil {
			list = []Entry{}
		}
		httpx.WriteJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("GET "+prefix+"/requests/{seq}", func(w http.ResponseWriter, r *http.Request) {
		e, ok := in.lookup(w, r)
		if ok {
			httpx.WriteJSON(w, http.StatusOK, e)
		}
	})
	mux.HandleFunc("GET "+prefix+"/events", in.events)
	mux.HandleFunc("POST "+prefix+"/requests/{seq}/replay", func(w http.ResponseWriter, r *http.Request) {
		if replay == nil {
			httpx.WriteJSONError(w, http.StatusNotImplemented, "replay is not available here")
			return
		}
		e, ok := in.lookup(w, r)
		if !ok {
			return
		}
		var edit Edit
		if err := decodeEdit(r.Body, &edit); err != nil {
			httpx.WriteJSONError(w, http.StatusBadRequest, "edit: "+err.Error())
			return
		}
		out, err := in.Replay(r.Context(), e, edit, replay)
		switch {
		case errors.Is(err, ErrNotReplayable):
			httpx.WriteJSONError(w, http.StatusConflict, err.Error())
		case err != nil && out.Seq == 0:
			httpx.WriteJSONError(w, http.StatusBadRequest, err.Error())
		default:
			httpx.WriteJSON(w, http.StatusOK, out)
		}
	})
	return mux
}

func decodeEdit(r io.Reader, e *Edit) error {
	dec := json.NewDecoder(io.LimitReader(r, MaxBodyCapture+64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(e); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func (in *Inspector) lookup(w http.ResponseWriter, r *http.Request) (Entry, bool) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil {
		httpx.WriteJSONError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a request number", r.PathValue("seq")))
		return Entry{}, false
	}
	e, ok := in.Entry(seq)
	if !ok {
		httpx.WriteJSONError(w, http.StatusNotFound, fmt.Sprintf("request %d is not kept (any more)", seq))
	}
	return e, ok
}

// events streams each entry as it is kept, as server-sent events, until
// the reader goes or the inspector closes.
func (in *Inspector) events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	ch, cancel := in.subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, ": inspector events\n\n")
	if rc.Flush() != nil {
		return
	}
	beat := time.NewTicker(15 * time.Second)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-in.closed:
			return
		case <-beat.C:
			_, _ = io.WriteString(w, ": keep-alive\n\n")
		case e := <-ch:
			b, _ := json.Marshal(e)
			_, _ = fmt.Fprintf(w, "event: request\ndata: %s\n\n", b)
		}
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if rc.Flush() != nil {
			return
		}
	}
}

// Replay sends e's request again through replay, with edit applied, and
// keeps the outcome as a new entry, which it returns.
func (in *Inspector) Replay(ctx context.Context, e Entry, edit Edit, replay Replayer) (Entry, error) {
	rp := e.replay
	if rp == nil {
		return Entry{}, errors.New("the request was not kept for replay")
	}
	body := rp.body
	if edit.Body != nil {
		body = []byte(*edit.Body)
	} else if !rp.whole {
		return Entry{}, ErrNotReplayable
	}
	method, uri := e.Method, e.URI
	if edit.Method != "" {
		method = edit.Method
	}
	if edit.URI != "" {
		uri = edit.URI
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+e.Host+uri, bytes.NewReader(body))
	if err != nil {
		return Entry{}, err
	}
	req.Header = rp.header.Clone()
	for k, vs := range edit.Header {
		if len(vs) == 0 {
			req.Header.Del(k)
			continue
		}
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	req.Header.Del("Content-Length")
	req.ContentLength = int64(len(body))
	req.Host = e.Host
	start := time.Now()
	out := Entry{Rule: e.Rule, Time: start, Replay: e.Seq, Method: method, Host: e.Host, URI: req.URL.RequestURI(),
		Proto: "HTTP/1.1", RequestHeader: in.mask(req.Header), RequestBody: (&capture{size: int64(len(body)), buf: body, limit: in.capture}).body()}
	out.replay = &replayable{header: req.Header.Clone(), body: body, whole: true}
	resp, err := replay(ctx, e.Rule, req)
	if err != nil {
		out.Error = err.Error()
		out.Duration = time.Since(start)
		return in.keep(out), err
	}
	defer resp.Body.Close()
	c := &capture{r: resp.Body, limit: in.capture}
	_, _ = io.Copy(io.Discard, c)
	out.Status, out.ResponseHeader, out.ResponseBody = resp.StatusCode, in.mask(resp.Header), c.body()
	out.RequestID = resp.Header.Get("X-Request-Id")
	out.Duration = time.Since(start)
	return in.keep(out), nil
}
