//go:build !unix

package transport

import "errors"

// SocketBuffers is not available on this platform.
func SocketBuffers(l *Listener) (rcv, snd int, err error) {
	return 0, 0, errors.New("socket buffer sizes: not supported on this platform")
}
