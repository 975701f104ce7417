package pipeline

import (
	"fmt"
	"slices"
	"sync"
)

// Module is a stage that configuration can name: a rule's stage list names
// modules, with their settings, and a Registry holds the modules a gateway
// knows. A stage package exports its Module beside its Name, Config and
// constructor.
type Module struct {
	// Name is how configuration names the stage (lower case, no spaces).
	Name string
	// Protocols are the protocols the stage handles: the gateway runs it
	// on exchanges of these only, and refuses it on a rule of another
	// kind (a TCP rule, for an HTTP stage). Zero means HTTPProtocols.
	Protocols Protocols
	// New builds the stage. decode fills the stage's Config from its
	// settings (a YAML node, JSON...) and fails on unknown or mistyped
	// fields; with no settings it leaves the Config as it is, so a zero
	// Config must be a working one. New validates before it returns.
	New func(decode func(v any) error) (Stage, error)
}

// NewModule makes the Module of a stage package from its name, the
// protocols it handles, and its constructor from a Config: New decodes the
// settings into a zero C (errors say the stage's name) and calls newStage,
// whose failure gives a nil Stage, never a typed nil.
func NewModule[C any, S Stage](name string, protocols Protocols, newStage func(C) (S, error)) Module {
	return Module{Name: name, Protocols: protocols, New: func(decode func(v any) error) (Stage, error) {
		var c C
		if err := decode(&c); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		s, err := newStage(c)
		if err != nil {
			return nil, err
		}
		return s, nil
	}}
}

// Protocols is a set of Protocol values.
type Protocols uint16

// Of returns the set of ps.
func Of(ps ...Protocol) Protocols {
	var s Protocols
	for _, p := range ps {
		s |= 1 << p
	}
	return s
}

// Has reports whether p is in the set.
func (s Protocols) Has(p Protocol) bool { return s&(1<<p) != 0 }

// Sets of protocols.
var (
	// HTTPProtocols are the exchanges that carry an *http.Request.
	HTTPProtocols = Of(ProtoHTTP1, ProtoHTTP2, ProtoGRPC, ProtoWebSocket)
	// AllProtocols adds TCP rules, whose exchanges carry no request.
	AllProtocols = HTTPProtocols | Of(ProtoTCP)
)

// Registry maps names to the stage modules a gateway knows, so that
// configuration can name stages. It is a plain value: nothing registers
// itself at init, and two registries never share state. The zero value is
// ready to use and safe for concurrent use.
type Registry struct {
	mu      sync.RWMutex
	modules map[string]Module
}

// Register adds m. Registering a name twice is an error.
func (r *Registry) Register(m Module) error {
	if m.Name == "" || m.New == nil {
		return fmt.Errorf("pipeline: register %q: a name and New are required", m.Name)
	}
	if m.Protocols == 0 {
		m.Protocols = HTTPProtocols
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.modules[m.Name]; dup {
		return fmt.Errorf("pipeline: stage %q is already registered", m.Name)
	}
	if r.modules == nil {
		r.modules = make(map[string]Module)
	}
	r.modules[m.Name] = m
	return nil
}

// Module returns the module registered as name.
func (r *Registry) Module(name string) (Module, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m, ok := r.modules[name]
	return m, ok
}

// Build makes the stage registered as name; decode fills its Config (nil:
// the zero Config).
func (r *Registry) Build(name string, decode func(v any) error) (Stage, error) {
	m, ok := r.Module(name)
	if !ok {
		return nil, fmt.Errorf("pipeline: unknown stage %q (known: %v)", name, r.Names())
	}
	if decode == nil {
		decode = func(any) error { return nil }
	}
	s, err := m.New(decode)
	if err != nil {
		return nil, fmt.Errorf("pipeline: stage %q: %w", name, err)
	}
	return s, nil
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.modules))
	for n := range r.modules {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
