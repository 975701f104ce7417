// Package gateway assembles a tunnel Server and Client from configuration:
// listeners, the stage chains of both sides, the control plane, and the
// lifecycle (start, graceful shutdown).
//
// Each side runs two chains built from the same stage packages, in the
// order of one table per chain (order.go; IngressOrder, EgressOrder):
//
//	ingress: observe -> encode (to the user) -> decode -> limit -> route -> ratelimit -> rule_stages -> request_limit -> egress (tunnel stream)
//	egress:  observe -> encode (to the stream) -> decode -> limit -> route -> ratelimit -> breaker -> egress (upstream pool)
//
// Encode writes on the way out: the answer egress set, or the refusal a
// stage returned, once every stage between has had its response phase.
//
// The server is the ingress side of reverse rules (its public listener) and
// the egress side of forward rules; the client is the other way round.
// WithIngressEdits and WithEgressEdits let Go users change either chain by
// stage name: a stage of their own before or after any stage, or in its
// place.
package gateway
