package pipeline

import (
	"fmt"
	"slices"
	"sync"
)

// Factory builds a stage from its configuration. decode fills a config
// struct from wherever the configuration lives (a YAML node, JSON, a map); a
// factory calls it at most once, then validates.
type Factory func(decode func(v any) error) (Stage, error)

// Registry maps stage names to factories, so that chains can be described by
// name in configuration. It is a plain value: nothing registers itself at
// init, and two registries never share state. The zero value is ready to use
// and safe for concurrent use.
type Registry struct {
	mu        sync.RWMutex
	factories map[string]Factory
}

// Register adds a factory under name. Registering a name twice is an error.
func (r *Registry) Register(name string, f Factory) error {
	if name == "" || f == nil {
		return fmt.Errorf("pipeline: register %q: name and factory are required", name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.factories[name]; dup {
		return fmt.Errorf("pipeline: stage %q is already registered", name)
	}
	if r.factories == nil {
		r.factories = make(map[string]Factory)
	}
	r.factories[name] = f
	return nil
}

// Build makes the stage registered as name.
func (r *Registry) Build(name string, decode func(v any) error) (Stage, error) {
	r.mu.RLock()
	f, ok := r.factories[name]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("pipeline: unknown stage %q (known: %v)", name, r.Names())
	}
	if decode == nil {
		decode = func(any) error { return nil }
	}
	s, err := f(decode)
	if err != nil {
		return nil, fmt.Errorf("pipeline: stage %q: %w", name, err)
	}
	return s, nil
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.factories))
	for n := range r.factories {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
