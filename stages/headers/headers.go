// Package headers is the stage that edits header fields, as Traefik's
// headers middleware, Caddy's header directive and nginx's
// proxy_set_header/add_header do: on the user's request before it goes on
// to the upstream, and on the upstream's answer before the user gets it.
//
// Each side has three lists of rules, applied in this order:
//
//   - remove deletes a field, all its values;
//   - set replaces a field's values with one value (adding the field if
//     it was not there);
//   - add appends a value to a field's values (adding the field if it was
//     not there).
//
// The request rules edit Exchange.Request.Header in the stage's request
// phase, before next.Handle. The response rules edit the answer in the
// stage's response phase, after next.Handle returns and before encode
// (outermost) writes it: the upstream's answer (Exchange.Response), or
// the refusal of a stage after this one (a *pipeline.Reject: an
// authentication stage's 401, the tunnel's 502), as nginx's add_header
// ... always does. A refusal made on the egress side crosses the tunnel
// as an ERROR frame, without fields: the ingress side's rules edit it.
//
// Field names are matched in their canonical form (x-api-key and
// X-Api-Key are one field). Fields that carry the connection's framing or
// are hop-by-hop (Connection, Content-Length, Transfer-Encoding, Te,
// Trailer, Upgrade, Keep-Alive, Proxy-Connection, Proxy-Authenticate,
// Proxy-Authorization), Host (net/http keeps it out of the header; the
// rule's upstream settings own it) and X-Request-Id (the gateway's own)
// cannot be edited: Validate refuses them, with every invalid name or
// value.
//
// The stage works on HTTP rules (Module's Protocols are
// pipeline.HTTPProtocols), anywhere after decode. It is immutable once
// built and safe for concurrent use; an edit allocates nothing, but for
// an add to a field that already has values, which takes its values from
// the exchange (pipeline.Exchange.Strings). The values it sets are shared
// by every exchange, in slices clipped to their length, so that appending
// to them copies: the stages after this one must not write into a
// header's value slices in place (none of the gateway's does).
package headers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	"golang.org/x/net/http/httpguts"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Name is the stage's name in rule stage lists, errors, spans and metrics.
const Name = "headers"

// Rules are the edits of one side's header fields, applied in the order
// remove, set, add.
type Rules struct {
	// Set maps a field name to the one value it gets.
	Set map[string]string `yaml:"set"`
	// Add maps a field name to a value appended to its values.
	Add map[string]string `yaml:"add"`
	// Remove lists fields to delete.
	Remove []string `yaml:"remove"`
}

// Config configures the headers stage. The zero value edits nothing.
type Config struct {
	// Request edits the user's request before it goes on.
	Request Rules `yaml:"request"`
	// Response edits the upstream's answer before the user gets it.
	Response Rules `yaml:"response"`
}

// fixed are the fields the stage must not edit, canonical, and why.
var fixed = map[string]string{
	"Connection":          "a hop-by-hop field",
	"Keep-Alive":          "a hop-by-hop field",
	"Proxy-Connection":    "a hop-by-hop field",
	"Proxy-Authenticate":  "a hop-by-hop field",
	"Proxy-Authorization": "a hop-by-hop field",
	"Te":                  "a hop-by-hop field",
	"Upgrade":             "a hop-by-hop field",
	"Trailer":             "a framing field",
	"Transfer-Encoding":   "a framing field",
	"Content-Length":      "a framing field",
	"Host":                "not a header field in net/http (the request's Host is set by the rule)",
	"X-Request-Id":        "the gateway's own request id",
}

// Validate reports every invalid or forbidden name and every invalid
// value at once, naming each setting as in the config file
// (`request.set["Content-Length"]: ...`).
func (c Config) Validate() error {
	var errs []error
	errs = c.Request.validate("request", errs)
	errs = c.Response.validate("response", errs)
	return errors.Join(errs...)
}

func (r Rules) validate(side string, errs []error) []error {
	for i, name := range r.Remove {
		if err := checkName(name); err != nil {
			errs = append(errs, fmt.Errorf("%s.remove[%d]: %w", side, i, err))
		}
	}
	for _, m := range []struct {
		kind   string
		fields map[string]string
	}{{"set", r.Set}, {"add", r.Add}} {
		canon := map[string]string{} // canonical: spelling, within the map
		for _, name := range slices.Sorted(maps.Keys(m.fields)) {
			setting := fmt.Sprintf("%s.%s[%q]", side, m.kind, name)
			if err := checkName(name); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", setting, err))
				continue
			}
			c := http.CanonicalHeaderKey(name)
			if prev, dup := canon[c]; dup {
				errs = append(errs, fmt.Errorf("%s: %q and %q are the same field", setting, prev, name))
			}
			canon[c] = name
			if v := m.fields[name]; !httpguts.ValidHeaderFieldValue(v) {
				errs = append(errs, fmt.Errorf("%s: value %q is not a valid header field value", setting, v))
			}
		}
	}
	return errs
}

// checkName refuses an invalid field name or a field the stage must not
// edit.
func checkName(name string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("%q is not a valid header field name", name)
	}
	c := http.CanonicalHeaderKey(name)
	if why, ok := fixed[c]; ok {
		return fmt.Errorf("%s cannot be edited: it is %s", c, why)
	}
	return nil
}

// field is a canonical name and its value, in a slice of one, clipped.
type field struct {
	name string
	vals []string
}

// edits are one side's rules, compiled.
type edits struct {
	remove   []string
	set, add []field
}

func compile(r Rules) edits {
	var e edits
	for _, name := range r.Remove {
		e.remove = append(e.remove, http.CanonicalHeaderKey(name))
	}
	fields := func(m map[string]string) []field {
		var fs []field
		for _, name := range slices.Sorted(maps.Keys(m)) {
			fs = append(fs, field{name: http.CanonicalHeaderKey(name), vals: []string{m[name]}[:1:1]})
		}
		return fs
	}
	e.set, e.add = fields(r.Set), fields(r.Add)
	return e
}

func (e *edits) empty() bool { return len(e.remove) == 0 && len(e.set) == 0 && len(e.add) == 0 }

// apply edits h, which must not be nil.
func (e *edits) apply(x *pipeline.Exchange, h http.Header) {
	for _, name := range e.remove {
		delete(h, name)
	}
	for _, f := range e.set {
		h[f.name] = f.vals
	}
	for _, f := range e.add {
		old := h[f.name]
		if len(old) == 0 {
			h[f.name] = f.vals
			continue
		}
		vals := x.Strings(len(old) + 1) // clipped; allocates past the exchange's few
		copy(vals, old)
		vals[len(old)] = f.vals[0]
		h[f.name] = vals
	}
}

// Stage is the headers stage. It is immutable once built, so it is safe
// for concurrent use.
type Stage struct {
	request, response edits
}

// New validates c and returns the stage. The error names every problem.
func New(c Config) (*Stage, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	return &Stage{request: compile(c.Request), response: compile(c.Response)}, nil
}

// Module lets configuration name the stage ("headers"), on HTTP rules.
var Module = pipeline.NewModule(Name, pipeline.HTTPProtocols, New)

// Name implements pipeline.Namer.
func (s *Stage) Name() string { return Name }

// Handle implements pipeline.Stage: it edits the request, calls next, and
// edits the answer next left in x.Response, or the refusal next returned
// (pipeline.AnswerHeader). next's error is returned as it is.
func (s *Stage) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if r := x.Request; r != nil && !s.request.empty() {
		if r.Header == nil {
			r.Header = make(http.Header)
		}
		s.request.apply(x, r.Header)
	}
	err := next.Handle(ctx, x)
	if !s.response.empty() {
		if h := pipeline.AnswerHeader(x, err); h != nil {
			s.response.apply(x, h)
		}
	}
	return err
}
