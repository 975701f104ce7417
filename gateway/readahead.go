package gateway

// Reading ahead on plain ingress connections.
//
// Go's HTTP/2 server reads each frame's 9-byte header and then its payload
// straight from the connection. Over TLS the TLS layer buffers, so those
// are copies; over h2c nothing does, and every frame costs two system calls
// (a gRPC call's HEADERS and DATA: 4.3 reads per call on the ingress side
// of the grpc-unary-c64 benchmark; 0.2 with reading ahead). A plain
// listener's connections therefore read ahead where the platform lets us
// wait for readability without a buffer (readahead_unix.go): a small read
// fills a pooled buffer with whatever the socket has, and the next reads
// are served from it. Reads of readAheadMin bytes or more (net/http's
// HTTP/1.1 buffer, large body reads) go straight to the socket as before,
// and the buffer is taken only once the socket has bytes and given back as
// soon as they are read, so an idle connection, even one parked in a read,
// holds none.
const (
	readAheadSize = 16 << 10
	readAheadMin  = 4 << 10
)
