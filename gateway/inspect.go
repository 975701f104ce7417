package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/qtunnel/qtunnel/admin"
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/inspect"
)

// The client's request inspector (config.Client.Inspect): one inspect
// stage, right after decode in both of the client's chains (the requests
// of reverse rules arrive on its egress chain, those of forward rules on
// its ingress chain), and its API on the admin listener under /inspect/.

// newInspector returns the inspector cfg asks for, or nil, and the chain
// edits that put it in place.
func newInspector(cfg config.Inspect) (*inspect.Inspector, []pipeline.Edit) {
	if !cfg.Enabled {
		return nil, nil
	}
	in := inspect.New(inspect.Config{Entries: cfg.Entries, BodyCapture: int(cfg.BodyCapture), Secrets: cfg.Secrets})
	return in, []pipeline.Edit{pipeline.After(decode.Name, in)}
}

// inspectorAdmin serves in on the admin listener.
func (c *Client) inspectorAdmin() []admin.Option {
	if c.insp == nil {
		return nil
	}
	return []admin.Option{admin.WithHandler("/inspect/", c.insp.Handler("/inspect", c.replay))}
}

// Inspector returns the client's request inspector, or nil when it is off.
func (c *Client) Inspector() *inspect.Inspector { return c.insp }

// replay sends req again the way its rule's requests go on this side: to
// the upstream of a reverse rule, or into the forward listener of a forward
// rule (and so through the tunnel).
func (c *Client) replay(ctx context.Context, ruleID string, req *http.Request) (*http.Response, error) {
	r := c.rules.Load().ByID(ruleID)
	if r == nil {
		return nil, fmt.Errorf("rule %q is no longer in force", ruleID)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	target := &url.URL{Scheme: "http"}
	switch r.Direction {
	case rules.Reverse:
		up := r.Upstream
		if up == "" && len(r.Upstreams) > 0 {
			up = r.Upstreams[0]
		}
		base, err := url.Parse(up)
		if err != nil {
			return nil, err
		}
		target.Scheme, target.Host = base.Scheme, base.Host
		target.Path = strings.TrimSuffix(base.Path, "/") + req.URL.Path
		if r.UpstreamTLSInsecureSkipVerify {
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the rule's own setting
		}
		if r.HostHeader != "" {
			req.Host = r.HostHeader
		}
	default:
		a := c.listeners.addr(r.Listen)
		if a == nil {
			return nil, fmt.Errorf("rule %q has no listener here", ruleID)
		}
		target.Host, target.Path = a.String(), req.URL.Path
		if r.ListenTLS {
			// The forward listener of this very process: its certificate
			// is the client's own.
			target.Scheme = "https"
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, ServerName: req.Host} //nolint:gosec // loopback, our own listener
		}
	}
	target.RawQuery = req.URL.RawQuery
	req.URL = target
	req.RequestURI = ""
	return (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req.WithContext(ctx))
}
