// Package gateway assembles a tunnel Server and Client from configuration:
// listeners, the stage chains of both sides, the control plane, and the
// lifecycle (start, graceful shutdown).
//
// Each side runs two chains built from the same stage packages:
//
//	ingress: decode -> route -> egress (tunnel stream) -> encode (to the user)
//	egress:  decode -> route -> egress (upstream pool)  -> encode (to the stream)
//
// The server is the ingress side of reverse rules (its public listener) and
// the egress side of forward rules; the client is the other way round.
// WithIngressStages and WithEgressStages let Go users change either chain,
// inserting stages of their own anywhere.
package gateway
