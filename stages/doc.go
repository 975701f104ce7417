// Package stages is the home of the gateway's stage packages, one stage per
// sub-package: decode, limit, route, ratelimit, breaker, egress, encode.
// Each exports its Name, a Config whose zero value is the documented
// default, and a New(Config, ...) constructor that validates everything
// before the first request. The gateway's order tables (gateway/order.go)
// put them in its two chains:
//
//	ingress: observe -> encode -> decode -> limit -> route -> ratelimit -> rule_stages -> request_limit -> egress
//	egress:  observe -> encode -> decode -> limit -> route -> ratelimit -> breaker -> egress
//
// and any stage, the user's own included, can be put before or after any
// of them, or in its place, by name (pipeline.Before, After, Replace).
package stages
