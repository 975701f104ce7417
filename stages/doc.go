// Package stages is the home of the gateway's stage packages, one stage per
// sub-package: decode, route, egress, encode (and, as they land, rate-limit,
// breaker, timeout, size limit). Each has a Config whose zero value is the
// documented default and a New(Config, ...) constructor that validates
// everything before the first request. The default chain on both sides is
//
//	decode -> route -> egress -> encode
//
// and any stage, the user's own included, can be placed anywhere in it.
package stages
