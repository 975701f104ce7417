package gateway

import (
	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/metrics"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/stages/breaker"
	"github.com/qtunnel/qtunnel/stages/decode"
	"github.com/qtunnel/qtunnel/stages/egress"
	"github.com/qtunnel/qtunnel/stages/encode"
	"github.com/qtunnel/qtunnel/stages/limit"
	"github.com/qtunnel/qtunnel/stages/ratelimit"
	"github.com/qtunnel/qtunnel/stages/route"
)

// The order tables: the stages of each side's chain, outermost first. This
// is the one place the order is written: the chains are built from it, Go
// users edit it by name (WithIngressEdits, WithEgressEdits), and every
// chain drawn in the docs is checked against it (TestDocsDrawTheOrder).
//
// Why this order:
//   - observe is first, so that every outcome is counted, refusals by
//     decode and route included;
//   - encode comes next: it writes on the way out, the answer or the
//     refusal, once every stage inside it has had its response phase (a
//     stage may change the answer after its next returns), and then runs
//     the exchange's finishers (pipeline.Exchange.Defer), which let go of
//     what the delivery needed;
//   - the in-flight limit comes right after decode, so that overload is
//     refused before any other work (decode gives the 503 its request id);
//   - the rate limit (and, on the egress side, the breaker) come after
//     route: their buckets and circuits are per rule and per upstream;
//   - the rule's own stages (rule_stages: authentication, IP filter...)
//     come after the rate limit, which so shields them (a password guesser
//     spends its tokens first), and before the request limit and egress; the
//     breaker guards upstreams, so it is on the egress side only;
//   - the ingress request limit (body, time to the answer's head, pace of
//     the user) comes last before egress, so that it times the whole trip
//     through the tunnel. The egress side has none: bodies stream through
//     bounded buffers there, every request crossed the peer's ingress
//     limit already, and the upstream pool bounds the connect and the wait
//     for the head.
var (
	ingressOrder = []stageEntry{
		{metrics.StageName, observeStage},
		{encode.Name, encodeStage},
		{decode.Name, decodeStage},
		{limit.Name, inFlightStage},
		{route.Name, routeStage},
		{ratelimit.Name, rateLimitStage},
		{RuleStagesName, ruleStagesStage},
		{limit.RequestName, requestLimitStage},
		{egress.Name, tunnelStage},
	}
	egressOrder = []stageEntry{
		{metrics.StageName, observeStage},
		{encode.Name, encodeStage},
		{decode.Name, decodeStage},
		{limit.Name, inFlightStage},
		{route.Name, routeStage},
		{ratelimit.Name, rateLimitStage},
		{breaker.Name, breakerStage},
		{egress.Name, upstreamStage},
	}
)

// IngressOrder returns the names of the ingress chain's stages, outermost
// first, before any option's edits.
func IngressOrder() []string { return orderNames(ingressOrder) }

// EgressOrder is IngressOrder for the egress chain.
func EgressOrder() []string { return orderNames(egressOrder) }

func orderNames(t []stageEntry) []string {
	out := make([]string, len(t))
	for i, e := range t {
		out[i] = e.name
	}
	return out
}

// stageEntry is one line of an order table: a stage's name and how this
// side builds it.
type stageEntry struct {
	name  string
	build func(*chainBuild) (pipeline.Stage, error)
}

// chainBuild is what the stages of one side are built from.
type chainBuild struct {
	chainSpec
	limiter *ratelimit.Limiter // shared by both chains
}

// order builds the stages of table and applies edits.
func (b *chainBuild) order(table []stageEntry, edits []pipeline.Edit) (pipeline.Order, error) {
	o := make(pipeline.Order, 0, len(table)+len(edits))
	for _, e := range table {
		s, err := e.build(b)
		if err != nil {
			return nil, err
		}
		o = append(o, pipeline.Named{Name: e.name, Stage: s})
	}
	return o.Apply(edits...)
}

func (b *chainBuild) frame() int { return int(b.settings.Limits.MaxFrameSize) }

func observeStage(b *chainBuild) (pipeline.Stage, error) { return b.kit.m.Stage(), nil }

func decodeStage(b *chainBuild) (pipeline.Stage, error) {
	return decode.New(decode.Config{MaxFrameSize: b.frame(), TrustedProxies: b.settings.TrustedPrefixes(),
		AllowSNIMismatch: b.settings.Limits.SNIHostMismatch == config.SNIAllow})
}

// inFlightStage: each chain has its own in-flight limit, so that requests
// from users and requests from the tunnel are counted apart.
func inFlightStage(b *chainBuild) (pipeline.Stage, error) {
	return limit.New(limit.Config{MaxInFlight: b.settings.Limits.MaxInFlight})
}

func routeStage(b *chainBuild) (pipeline.Stage, error) {
	return route.New(route.Config{Rules: b.store, Egress: b.egressDir})
}

func rateLimitStage(b *chainBuild) (pipeline.Stage, error) { return b.limiter, nil }

// ruleStagesStage runs each rule's own stage list (rulestages.go).
func ruleStagesStage(b *chainBuild) (pipeline.Stage, error) { return b.kit.rules, nil }

// requestLimitStage bounds the request body and the time to the answer's
// head, and holds the user to the pace of a live client: the body must
// keep coming (body_timeout, min_body_rate) until the answer starts, the
// answer must be read (send_timeout; on HTTP/1 the listener's connection
// guard does it) and must not sit idle (stream_idle_timeout).
func requestLimitStage(b *chainBuild) (pipeline.Stage, error) {
	l := b.settings.Limits
	return limit.New(limit.Config{
		MaxBodySize:       l.MaxBodySize.Bytes(),
		RequestTimeout:    l.RequestTimeout,
		BodyTimeout:       l.BodyTimeout,
		MinBodyRate:       l.MinBodyRate.Bytes(),
		MinRateGrace:      l.MinRateGrace,
		SendTimeout:       l.SendTimeout,
		StreamIdleTimeout: l.StreamIdleTimeout,
		Name:              limit.RequestName,
	})
}

func tunnelStage(b *chainBuild) (pipeline.Stage, error) {
	return egress.NewTunnel(egress.TunnelConfig{Conns: b.conns, MaxFrameSize: b.frame(), Streams: b.kit.m,
		RequestBuffer: int(b.settings.Limits.RequestBuffer), MaxStreamsPerSource: max(b.settings.Limits.MaxStreamsPerSource, 0)})
}

func breakerStage(b *chainBuild) (pipeline.Stage, error) { return b.kit.breaker, nil }

func upstreamStage(b *chainBuild) (pipeline.Stage, error) { return egress.NewUpstream(b.pool) }

func encodeStage(b *chainBuild) (pipeline.Stage, error) {
	return encode.New(encode.Config{MaxFrameSize: b.frame()})
}
