//go:build !unix

package gateway

import "net"

// withReadAhead leaves the listener as it is where a read cannot wait for
// readability without a buffer.
func withReadAhead(ln net.Listener) net.Listener { return ln }
