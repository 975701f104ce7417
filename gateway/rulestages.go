package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages"
)

// RuleStagesName is the name, in the ingress order table, of the stage
// that runs each rule's own stage list (rules.Rule.Stages).
const RuleStagesName = "rule_stages"

// ruleStages is the ingress chain's stage that runs the stage list of the
// rule an exchange matched: a chain per rule, built from the modules the
// side knows (stages.Modules and WithModules) when a rule table is
// prepared, before it goes into force, so that a stage list that does not
// build refuses the change. An exchange whose rule has no stages costs one
// length check.
type ruleStages struct {
	reg    *pipeline.Registry
	dir    rules.Direction // the rules whose requests arrive on this side
	tracer pipeline.Option // nil: no stage spans
	cur    atomic.Pointer[ruleChains]
	mu     sync.Mutex // serialises prepare and commit
}

// ruleChains are the rule chains of one table (own, byKey), and what the
// stage looks chains up in (lookup): those and the table before's, for
// exchanges routed on it that are still on their way.
type ruleChains struct {
	own     map[*rules.Rule]*pipeline.Chain
	byKey   map[string]*pipeline.Chain // by rule id and stage list: reused while unchanged
	lookup  map[*rules.Rule]*pipeline.Chain
	prevKey map[string]*pipeline.Chain // byKey of the table before
}

func newRuleStages(extra []pipeline.Module, dir rules.Direction, tracer pipeline.Option) (*ruleStages, error) {
	rs := &ruleStages{reg: new(pipeline.Registry), dir: dir, tracer: tracer}
	for _, m := range append(stages.Modules(), extra...) {
		if err := rs.reg.Register(m); err != nil {
			return nil, err
		}
	}
	rs.cur.Store(&ruleChains{})
	return rs, nil
}

// Name implements pipeline.Namer.
func (*ruleStages) Name() string { return RuleStagesName }

// Handle implements pipeline.Stage.
func (rs *ruleStages) Handle(ctx context.Context, x *pipeline.Exchange, next pipeline.Handler) error {
	if x.Rule == nil || len(x.Rule.Stages) == 0 {
		return next.Handle(ctx, x)
	}
	c := rs.cur.Load().lookup[x.Rule]
	if c == nil {
		// The rule is not of a table this side prepared: never expected.
		return &pipeline.Reject{Status: http.StatusServiceUnavailable, RetryAfter: time.Second,
			Message: "the rule's stages are not ready, retry", Err: fmt.Errorf("no chain for rule %q", x.Rule.ID)}
	}
	return c.Then(ctx, x, next)
}

func stagesKey(r *rules.Rule) string {
	b, _ := json.Marshal(r.Stages) // StageRef encodes canonically
	return r.ID + "\x00" + string(b)
}

// prepare builds the chains of t's rules that this side runs, reusing those
// whose stage list did not change. Nothing is in force until commit.
func (rs *ruleStages) prepare(ctx context.Context, t *rules.Table) (*ruleChains, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	cur := rs.cur.Load()
	next := &ruleChains{own: map[*rules.Rule]*pipeline.Chain{}, byKey: map[string]*pipeline.Chain{}}
	var built []*pipeline.Chain // new ones, closed if the table is refused
	var errs []error
	for _, r := range t.Rules() {
		if len(r.Stages) == 0 {
			continue
		}
		r := t.ByID(r.ID) // the table's own pointer, which route hands out
		if r.Direction != rs.dir {
			// Run by the peer, with the modules it knows (a gateway of
			// your own may add some to one side only) and the files its
			// host holds: the peer checks them, and says if it cannot.
			continue
		}
		key := stagesKey(r)
		c := cur.byKey[key]
		if c == nil {
			var err error
			if c, err = rs.build(ctx, r); err != nil {
				errs = append(errs, err)
				continue
			}
			built = append(built, c)
		}
		next.own[r], next.byKey[key] = c, c
	}
	if err := errors.Join(errs...); err != nil {
		for _, c := range built {
			_ = c.Close(context.WithoutCancel(ctx))
		}
		return nil, err
	}
	return next, nil
}

// check says whether this side knows r's stages and their kinds fit r.
func (rs *ruleStages) check(r *rules.Rule) error {
	var errs []error
	for i, ref := range r.Stages {
		m, ok := rs.reg.Module(ref.Name)
		if !ok {
			errs = append(errs, fmt.Errorf("rule %q: stages[%d]: unknown stage %q (known: %v)", r.ID, i, ref.Name, rs.reg.Names()))
			continue
		}
		if r.Protocol == rules.ProtoTCP && !m.Protocols.Has(pipeline.ProtoTCP) {
			errs = append(errs, fmt.Errorf("rule %q: stages[%d]: stage %q is for HTTP requests; a TCP rule cannot use it", r.ID, i, ref.Name))
		}
	}
	return errors.Join(errs...)
}

// build makes r's chain.
func (rs *ruleStages) build(ctx context.Context, r *rules.Rule) (*pipeline.Chain, error) {
	if err := rs.check(r); err != nil {
		return nil, err
	}
	list := make([]pipeline.Stage, 0, len(r.Stages))
	for i, ref := range r.Stages {
		s, err := rs.reg.Build(ref.Name, ref.Decode)
		if err != nil {
			return nil, fmt.Errorf("rule %q: stages[%d]: %w", r.ID, i, err)
		}
		list = append(list, s)
	}
	var opts []pipeline.Option
	if rs.tracer != nil {
		opts = append(opts, rs.tracer)
	}
	c, err := pipeline.New(ctx, list, opts...)
	if err != nil {
		return nil, fmt.Errorf("rule %q: %w", r.ID, err)
	}
	return c, nil
}

// commit puts next in force, once its table is. The chains of the table
// before stay reachable for exchanges routed on it; those of the one
// before that, if neither table uses them, are closed.
func (rs *ruleStages) commit(next *ruleChains) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	cur := rs.cur.Load()
	next.lookup = make(map[*rules.Rule]*pipeline.Chain, len(next.own)+len(cur.own))
	for r, c := range cur.own {
		next.lookup[r] = c
	}
	for r, c := range next.own {
		next.lookup[r] = c
	}
	inUse := map[*pipeline.Chain]bool{}
	for _, c := range next.lookup {
		inUse[c] = true
	}
	for _, c := range cur.prevKey {
		if !inUse[c] {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = c.Close(ctx)
			cancel()
		}
	}
	next.prevKey = cur.byKey
	rs.cur.Store(next)
}

// discard closes the chains prepare made for a table that was refused
// after all (by another part of its preparation).
func (rs *ruleStages) discard(next *ruleChains) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	cur := rs.cur.Load()
	for key, c := range next.byKey {
		if cur.byKey[key] != c {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = c.Close(ctx)
			cancel()
		}
	}
}

// close closes every chain, when the side stops.
func (rs *ruleStages) close(ctx context.Context) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	cur := rs.cur.Load()
	seen := map[*pipeline.Chain]bool{}
	var errs []error
	for _, m := range []map[string]*pipeline.Chain{cur.byKey, cur.prevKey} {
		for _, c := range m {
			if !seen[c] {
				seen[c] = true
				errs = append(errs, c.Close(ctx))
			}
		}
	}
	rs.cur.Store(&ruleChains{})
	return errors.Join(errs...)
}

// tracerOption is pipeline.WithTracer(t), or nil with no tracer.
func tracerOption(t trace.Tracer) pipeline.Option {
	if t == nil {
		return nil
	}
	return pipeline.WithTracer(t)
}

// CheckRuleStages builds, and closes again, the stage lists of the rules
// in rs that the side serving dir's requests runs (rules.Reverse: a
// server; rules.Forward: a client), with the modules the gateway ships and
// extra: what a start or a reload would refuse, said without running one
// (tunnel check-config).
func CheckRuleStages(rs []rules.Rule, dir rules.Direction, extra ...pipeline.Module) error {
	t, err := rules.NewTable(1, rs)
	if err != nil {
		return err
	}
	st, err := newRuleStages(extra, dir, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	set, err := st.prepare(ctx, t)
	if err != nil {
		return err
	}
	st.discard(set)
	return nil
}
