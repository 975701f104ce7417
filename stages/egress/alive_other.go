//go:build !unix || aix

package egress

import "net"

// alive does not peek at the socket here (AIX has no MSG_DONTWAIT; other
// systems have no Unix recv): a connection that the upstream closed while
// idle fails its request before any answer, which the lean client retries
// once on a new connection.
func alive(net.Conn) bool { return true }
