//go:build race

package gateway_test

// raceEnabled says the race detector is on: it slows every memory access
// several times, so tests that bound latency check it only without it (the
// second pass of make test).
const raceEnabled = true
