// Package e2e holds the end-to-end tests that run the tunnel binary as real
// server and client processes on loopback, driven by real clients (net/http
// and curl): both directions, signals and graceful shutdown, 1 GiB
// transfers with bounded memory, refused credentials, and the demo.
package e2e
