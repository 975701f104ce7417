package gateway

// Reading ahead on plain ingress connections.
//
// Go's HTTP/2 server reads each frame's 9-byte header and then its payload
// straight from the connection. Over TLS the TLS layer buffers, so those
// are copies; over h2c nothing does, and every frame costs two system calls
// (a gRPC call's HEADERS and DATA: 4.3 reads per call on the ingress side
// of the grpc-unary-c64 benchmark; 0.2 with reading ahead). A plain
// listener's TCP connections therefore read ahead where the platform lets a
// read wait for the socket without a buffer (readahead_unix.go): a small
// read fills a 16 KiB buffer with whatever the socket has, and the next
// reads are served from it. Reads of readAheadMin bytes or more with
// nothing buffered (large body reads, net/http's HTTP/1.1 buffer when it is
// empty) go straight to the socket. A buffer is held only while a read is
// running or while it has unread bytes: a read parked waiting for the
// socket holds none, so idle connections cost nothing more. The buffers
// have a pool of their own, apart from pipeline's, whose size calibration
// they would otherwise skew towards 16 KiB.
const (
	readAheadSize = 16 << 10
	readAheadMin  = 4 << 10
)
