// Package bench is the load harness that drives tuning of the hot path.
//
// It starts a sample upstream (in the harness process), a tunnel server and
// a tunnel client (separate processes, the shipped binary: Options.Binary,
// else cmd/tunnel built by BuildTunnel), and runs each
// scenario three ways in the same run: directly against the upstream,
// through the reverse tunnel and through the forward tunnel. It also
// measures the transport's ceiling, raw quic-go, in the same run. Load comes
// from vegeta (closed loop: N workers as fast as they go; open loop: a
// constant rate with latency counted from each request's intended send time,
// so that stalls are not hidden by coordinated omission); latencies go into
// HdrHistogram. CPU time and peak RSS of each side come from /proc.
//
// Results are a table (with progress while it runs), a JSON file and an SVG
// chart; see BENCHMARKS.md for the figures and the commands.
//
// Its command line is cmd/tunnel-bench (make bench, make bench-quick), not a
// command of the gateway binary: cmd/tunnel imports nothing of this package
// or of its load generator (cmd/tunnel's TestBinaryLinksNoLoadGenerator).
package bench
