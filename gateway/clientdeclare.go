package gateway

import (
	"context"
	"net"
	"strings"
	"sync"

	"github.com/qtunnel/qtunnel/codec"
)

// A client's declared rules (config.Client.Declare): sent on every
// connection, answered by the server with each claim's outcome. The last
// answer is kept for the client's /config and for Declared.

// Declaration is the server's answer to one rule the client declared.
type Declaration struct {
	// Name is the id the rule was declared with.
	Name string `json:"name"`
	// ID is the id of the rule in force ("<client>.<name>"); empty when
	// refused.
	ID string `json:"id,omitempty"`
	// Error says why the server refused the rule.
	Error string `json:"error,omitempty"`
	// URLs are where the public reaches an accepted reverse rule.
	URLs []string `json:"urls,omitempty"`
}

// declarations holds the server's last answer and wakes who waits for one.
type declarations struct {
	mu      sync.Mutex
	answer  []Declaration
	have    bool
	changed chan struct{} // closed and replaced at each answer and each apply
}

// notify wakes everyone waiting in Declared.
func (d *declarations) notify() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.changed != nil {
		close(d.changed)
	}
	d.changed = make(chan struct{})
}

func (d *declarations) wait() (ch <-chan struct{}, answer []Declaration, have bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.changed == nil {
		d.changed = make(chan struct{})
	}
	return d.changed, d.answer, d.have
}

// Declared (control.DeclaredEvents) takes the server's answer to the
// client's declared rules.
func (e *clientEvents) Declared(m *codec.Declared) {
	c := e.c
	host, _, _ := net.SplitHostPort(c.cfg.Server)
	out := make([]Declaration, 0, len(m.Results))
	for _, r := range m.Results {
		d := Declaration{Name: r.Name, ID: r.ID, Error: r.Error}
		for _, u := range r.URLs {
			// A TCP listener on every address of the server: the public
			// reaches it at the name this client dials.
			if rest, ok := strings.CutPrefix(u, "tcp://:"); ok {
				u = "tcp://" + net.JoinHostPort(host, rest)
			}
			d.URLs = append(d.URLs, u)
		}
		if d.Error != "" {
			c.log.Warn("declared rule refused by the server", "rule", d.Name, "reason", d.Error)
		} else {
			c.log.Info("declared rule in force", "rule", d.Name, "id", d.ID, "urls", d.URLs)
		}
		out = append(out, d)
	}
	c.declared.mu.Lock()
	c.declared.answer, c.declared.have = out, true
	c.declared.mu.Unlock()
	c.declared.notify()
}

// Declared waits for the server's answer to the rules this client
// declares (config.Client.Declare) and, for the accepted ones, until they
// are in force here too: from then on their URLs answer. It returns ctx's
// error if ctx ends first, and nil at once when the client declares
// nothing.
func (c *Client) Declared(ctx context.Context) ([]Declaration, error) {
	if len(c.cfg.Declare) == 0 {
		return nil, nil
	}
	for {
		ch, answer, have := c.declared.wait()
		if have && c.inForce(answer) {
			return answer, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}

// inForce says whether every accepted declaration is in the rules in force.
func (c *Client) inForce(answer []Declaration) bool {
	t := c.rules.Load()
	for _, d := range answer {
		if d.ID != "" && t.ByID(d.ID) == nil {
			return false
		}
	}
	return true
}
