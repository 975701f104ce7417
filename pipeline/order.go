package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Named is one entry of a chain's order: a stage and the name it goes by.
// Edits find stages by these names.
type Named struct {
	Name  string
	Stage Stage
}

// Order is a chain's stages by name, outermost first.
type Order []Named

// Names returns the stage names, in order.
func (o Order) Names() []string {
	out := make([]string, len(o))
	for i, n := range o {
		out[i] = n.Name
	}
	return out
}

// String is the order as the docs draw it: "decode -> route -> ...".
func (o Order) String() string { return strings.Join(o.Names(), " -> ") }

// Stages returns the stages, in order, for New.
func (o Order) Stages() []Stage {
	out := make([]Stage, len(o))
	for i, n := range o {
		out[i] = n.Stage
	}
	return out
}

// Edit is one change of an Order by name: Before, After, Replace or
// Remove. Edits apply in the order given, each to the result of the last.
type Edit struct {
	op    editOp
	at    string
	stage Stage
}

type editOp uint8

const (
	opBefore editOp = iota + 1
	opAfter
	opReplace
	opRemove
)

// Before inserts s just before the stage named at: s's request phase runs
// before that stage's, and its response phase after.
func Before(at string, s Stage) Edit { return Edit{op: opBefore, at: at, stage: s} }

// After inserts s just after the stage named at.
func After(at string, s Stage) Edit { return Edit{op: opAfter, at: at, stage: s} }

// Replace puts s in the place of the stage named at.
func Replace(at string, s Stage) Edit { return Edit{op: opReplace, at: at, stage: s} }

// Remove takes the stage named at out of the chain.
func Remove(at string) Edit { return Edit{op: opRemove, at: at} }

func (e Edit) String() string {
	switch e.op {
	case opBefore:
		return "before " + e.at
	case opAfter:
		return "after " + e.at
	case opReplace:
		return "replace " + e.at
	case opRemove:
		return "remove " + e.at
	}
	return "invalid edit"
}

// Apply returns o with edits applied. A stage inserted or put in place goes
// by its Name (Namer); one without a name is refused, since later edits
// and errors could not name it. A name that is not in the order at the
// time of its edit is an error that lists the names there are; so is a
// second stage of a name already in the order (Replace excepted).
func (o Order) Apply(edits ...Edit) (Order, error) {
	out := slices.Clone(o)
	for _, e := range edits {
		i := slices.IndexFunc(out, func(n Named) bool { return n.Name == e.at })
		if i < 0 {
			return nil, fmt.Errorf("pipeline: %s: no stage %q in the chain (stages: %s)", e, e.at, strings.Join(out.Names(), ", "))
		}
		if e.op == opRemove {
			out = slices.Delete(out, i, i+1)
			continue
		}
		if e.stage == nil {
			return nil, fmt.Errorf("pipeline: %s: the stage is nil", e)
		}
		nm, ok := e.stage.(Namer)
		if !ok || nm.Name() == "" {
			return nil, fmt.Errorf("pipeline: %s: a stage %T must have a name (implement Name() string)", e, e.stage)
		}
		n := Named{Name: nm.Name(), Stage: e.stage}
		if j := slices.IndexFunc(out, func(m Named) bool { return m.Name == n.Name }); j >= 0 && !(e.op == opReplace && j == i) {
			return nil, fmt.Errorf("pipeline: %s: the chain has a stage %q already (stages: %s)", e, n.Name, strings.Join(out.Names(), ", "))
		}
		switch e.op {
		case opBefore:
			out = slices.Insert(out, i, n)
		case opAfter:
			out = slices.Insert(out, i+1, n)
		case opReplace:
			out[i] = n
		default:
			return nil, fmt.Errorf("pipeline: %s", e)
		}
	}
	return out, nil
}

// Build compiles the order into a Chain (New).
func (o Order) Build(ctx context.Context, opts ...Option) (*Chain, error) {
	return New(ctx, o.Stages(), opts...)
}

// Name gives s the name name, for a stage that has none of its own (a
// StageFunc): the name edits, errors, spans and metrics use. Provision,
// Validate and Close reach s.
func Name(name string, s Stage) Stage { return &namedStage{Stage: s, name: name} }

type namedStage struct {
	Stage
	name string
}

func (n *namedStage) Name() string { return n.name }

// Protocols passes on the stage's ProtocolHandler; 0 (every protocol)
// when it has none.
func (n *namedStage) Protocols() Protocols {
	if ph, ok := n.Stage.(ProtocolHandler); ok {
		return ph.Protocols()
	}
	return 0
}

// ForProtocols makes s a stage of the protocols ps only (ProtocolHandler):
// for a StageFunc that reads Exchange.Request, say, ForProtocols(
// HTTPProtocols, s) keeps TCP rules' exchanges away from it.
func ForProtocols(ps Protocols, s Stage) Stage {
	name := ""
	if n, ok := s.(Namer); ok {
		name = n.Name()
	}
	return &protocolStage{namedStage{Stage: s, name: name}, ps}
}

type protocolStage struct {
	namedStage
	ps Protocols
}

func (p *protocolStage) Protocols() Protocols { return p.ps }

func (n *namedStage) Provision(ctx context.Context) error {
	if p, ok := n.Stage.(Provisioner); ok {
		return p.Provision(ctx)
	}
	return nil
}

func (n *namedStage) Validate() error {
	if v, ok := n.Stage.(Validator); ok {
		return v.Validate()
	}
	return nil
}

func (n *namedStage) Close(ctx context.Context) error {
	if c, ok := n.Stage.(Closer); ok {
		return c.Close(ctx)
	}
	return nil
}
