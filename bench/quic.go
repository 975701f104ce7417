package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/transport"
)

// rawQUIC is the transport's ceiling: quic-go alone, with the tunnel's own
// settings, a server and a client in this process. It answers the question
// "how much of the gap to direct is QUIC itself?".
type rawQUIC struct {
	ln   *transport.Listener
	conn *transport.ClientConn
	wg   sync.WaitGroup
	stop context.CancelFunc
}

func startRawQUIC(ctx context.Context) (*rawQUIC, error) {
	cert, err := transport.SelfSigned("127.0.0.1")
	if err != nil {
		return nil, err
	}
	pin, _ := transport.CertificatePin(cert)
	ln, err := transport.Listen("127.0.0.1:0", transport.ServerTLS(cert), transport.Config{})
	if err != nil {
		return nil, err
	}
	r := &rawQUIC{ln: ln}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.stop = cancel
	r.wg.Go(func() { r.serve(sctx) })
	tlsConf, err := transport.ClientTLS(transport.ClientTLSOptions{Pin: pin})
	if err == nil {
		r.conn, err = transport.Dial(ctx, ln.Addr().String(), tlsConf, transport.Config{})
	}
	if err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// serve echoes every stream: whatever arrives goes back, then FIN.
func (r *rawQUIC) serve(ctx context.Context) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := r.ln.Accept(ctx)
		if err != nil {
			return
		}
		conns.Go(func() {
			var streams sync.WaitGroup
			defer streams.Wait()
			for {
				s, err := c.AcceptStream(ctx)
				if err != nil {
					return
				}
				streams.Go(func() {
					_, _ = io.Copy(s, s)
					_ = s.Close()
				})
			}
		})
	}
}

func (r *rawQUIC) close() {
	if r.conn != nil {
		_ = r.conn.Close(codec.ConnNormal, "done")
	}
	r.stop()
	_ = r.ln.Close()
	r.wg.Wait()
}

// echo runs workers that each open a stream, send 1 KiB, read the 1 KiB echo,
// as fast as they go for d.
func (r *rawQUIC) echo(ctx context.Context, workers int, d time.Duration) LoadResult {
	msg := make([]byte, 1024)
	bufs := make([][]byte, workers)
	for i := range bufs {
		bufs[i] = make([]byte, 1024)
	}
	return closedLoop(ctx, workers, d, func(ctx context.Context, w int) error {
		return r.oneEcho(ctx, msg, bufs[w])
	})
}

func (r *rawQUIC) oneEcho(ctx context.Context, msg, buf []byte) error {
	s, err := r.conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if _, err := s.Write(msg); err != nil {
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	if _, err := io.ReadFull(s, buf); err != nil {
		return err
	}
	if _, err := s.Read(buf[:1]); !errors.Is(err, io.EOF) {
		return fmt.Errorf("echo: want EOF after 1 KiB, got %v", err)
	}
	return nil
}

// streamEcho runs workers that each open one stream and then, as fast as
// they go for d, send 1 KiB on it and read the 1 KiB echo: the exchanges of
// quic-echo without a stream each, what calls carried on long-lived
// streams would cost QUIC.
func (r *rawQUIC) streamEcho(ctx context.Context, workers int, d time.Duration) LoadResult {
	msg := make([]byte, 1024)
	bufs := make([][]byte, workers)
	streams := make([]*quic.Stream, workers)
	for i := range bufs {
		bufs[i] = make([]byte, 1024)
	}
	defer func() {
		for _, s := range streams {
			if s != nil {
				_ = s.Close()
				_, _ = io.Copy(io.Discard, s) // the echo ends with FIN
			}
		}
	}()
	return closedLoop(ctx, workers, d, func(ctx context.Context, w int) error {
		if streams[w] == nil {
			s, err := r.conn.OpenStreamSync(ctx)
			if err != nil {
				return err
			}
			streams[w] = s
		}
		if _, err := streams[w].Write(msg); err != nil {
			return err
		}
		_, err := io.ReadFull(streams[w], bufs[w])
		return err
	})
}

// bulk sends size bytes on one stream and reads them back: MiB/s one way.
// The echo makes both directions busy, like the tunnel's upload test: the
// figure is the rate of the upward copy.
func (r *rawQUIC) bulk(ctx context.Context, size int64) (float64, error) {
	s, err := r.conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(s, io.LimitReader(zeros{}, size))
		if err == nil {
			err = s.Close()
		}
		errc <- err
	}()
	n, err := io.Copy(io.Discard, s)
	if werr := <-errc; err == nil {
		err = werr
	}
	if err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("echoed %d of %d bytes", n, size)
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
}

// socketBuffers reports the UDP receive and send buffers quic-go got on its
// socket, as the kernel reports them (twice what was set, on Linux).
func (r *rawQUIC) socketBuffers() (rcv, snd int, err error) {
	return transport.SocketBuffers(r.ln)
}
