// Package transport carries the tunnel over QUIC (quic-go): TLS 1.3 server
// identity by certificate file or pinned self-signed key, listeners and
// dialers with central settings, the per-stream adapter the pipeline sees,
// the batched frame writer of the data path (S14, S15), and the reconnect
// backoff with full jitter (S4).
package transport
