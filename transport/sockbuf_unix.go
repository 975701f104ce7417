//go:build unix

package transport

import (
	"errors"
	"net"
	"syscall"
)

// SocketBuffers returns the receive and send buffer sizes of the listener's
// UDP socket, as the kernel reports them. quic-go raises them at start (and
// warns when the kernel's net.core.rmem_max/wmem_max hold it back).
func SocketBuffers(l *Listener) (rcv, snd int, err error) {
	uc, ok := l.tr.Conn.(*net.UDPConn)
	if !ok {
		return 0, 0, errors.New("not a UDP socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		rcv, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if serr == nil {
			snd, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		}
	})
	if err == nil {
		err = serr
	}
	return rcv, snd, err
}
