// Package gateway assembles a tunnel Server and Client from configuration:
// listeners, the stage chains of both sides, the control plane, and the
// lifecycle (start, graceful shutdown).
//
// Each side runs two chains built from the same stage packages, in the
// order of one table per chain (order.go; IngressOrder, EgressOrder):
//
//	ingress: observe -> decode -> limit -> route -> ratelimit -> rule_stages -> request_limit -> egress (tunnel stream) -> encode (to the user)
//	egress:  observe -> decode -> limit -> route -> ratelimit -> breaker -> egress (upstream pool) -> encode (to the stream)
//
// The server is the ingress side of reverse rules (its public listener) and
// the egress side of forward rules; the client is the other way round.
// WithIngressEdits and WithEgressEdits let Go users change either chain by
// stage name: a stage of their own before or after any stage, or in its
// place.
package gateway
