package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// grpcHost routes the reverse gRPC rule.
const grpcHost = "grpc.bench.test"

// startProtocolUpstreams starts the gRPC upstream (grpc-go's interop test
// service, h2c) and the TCP upstream (a sink that answers with the byte
// count, or a source of the bytes asked for).
func (e *env) startProtocolUpstreams() error {
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.grpcAddr = gl.Addr().String()
	e.grpcSrv = grpc.NewServer()
	testgrpc.RegisterTestServiceServer(e.grpcSrv, interop.NewTestServer())
	e.upWG.Go(func() { _ = e.grpcSrv.Serve(gl) })

	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.tcpLn, e.tcpAddr = tl, tl.Addr().String()
	e.upWG.Go(func() { serveTCP(tl) })
	return nil
}

// serveTCP is the TCP upstream: a first line "up" makes it swallow the rest
// and answer the count after the client half-closes; "down N" makes it send
// N bytes.
func serveTCP(ln net.Listener) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conns.Go(func() {
			defer c.Close()
			var cmd string
			var n int64
			if _, err := fmt.Fscanf(c, "%s %d\n", &cmd, &n); err != nil {
				return
			}
			switch cmd {
			case "up":
				got, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "%d", got)
			case "down":
				_, _ = io.Copy(c, io.LimitReader(zeros{}, n))
			}
		})
	}
}

// wsEcho is the WebSocket upstream: it echoes every message.
func wsEcho(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	for {
		typ, data, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, data); err != nil {
			return
		}
	}
}

// grpcTargets are where a gRPC client connects for each way of reaching the
// upstream.
func (e *env) grpcTargets() []target {
	return []target{
		{"direct", e.grpcAddr, ""},
		{"reverse", e.public, grpcHost},
		{"forward", e.grpcFwd, ""},
	}
}

// tcpTargets are the TCP upstream and the two TCP rules in front of it;
// Base is a host:port.
func (e *env) tcpTargets() []target {
	return []target{{"direct", e.tcpAddr, ""}, {"reverse", e.tcpRev, ""}, {"forward", e.tcpFwd, ""}}
}

// dialGRPC makes a plaintext HTTP/2 client connection to t, with t.Host as
// the authority if set.
func dialGRPC(t target) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if t.Host != "" {
		opts = append(opts, grpc.WithAuthority(t.Host))
	}
	return grpc.NewClient("passthrough:///"+t.Base, opts...)
}

// grpcUnary runs unary calls (1 KiB each way) on one HTTP/2 connection,
// workers streams at a time.
func grpcUnary(ctx context.Context, t target, workers int, d time.Duration) (LoadResult, error) {
	cc, err := dialGRPC(t)
	if err != nil {
		return LoadResult{}, err
	}
	defer cc.Close()
	tc := testgrpc.NewTestServiceClient(cc)
	req := &testgrpc.SimpleRequest{ResponseSize: 1024, Payload: &testgrpc.Payload{Body: make([]byte, 1024)}}
	return closedLoop(ctx, workers, d, func(ctx context.Context, _ int) error {
		_, err := tc.UnaryCall(ctx, req)
		return err
	}), nil
}

// grpcStream runs workers bidirectional streams, each a ping-pong of 1 KiB
// messages: a round trip is one "request".
func grpcStream(ctx context.Context, t target, workers int, d time.Duration) (LoadResult, error) {
	cc, err := dialGRPC(t)
	if err != nil {
		return LoadResult{}, err
	}
	defer cc.Close()
	tc := testgrpc.NewTestServiceClient(cc)
	streams := make([]testgrpc.TestService_FullDuplexCallClient, workers)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i := range streams {
		if streams[i], err = tc.FullDuplexCall(sctx); err != nil {
			return LoadResult{}, err
		}
	}
	msg := &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1024}},
		Payload: &testgrpc.Payload{Body: make([]byte, 1024)}}
	r := closedLoop(ctx, workers, d, func(_ context.Context, w int) error {
		if err := streams[w].Send(msg); err != nil {
			return err
		}
		_, err := streams[w].Recv()
		return err
	})
	for _, s := range streams {
		_ = s.CloseSend()
	}
	return r, nil
}

// wsEchoLoad runs workers WebSocket connections, each echoing 1 KiB
// messages: a round trip is one "request".
func wsEchoLoad(ctx context.Context, t target, workers int, d time.Duration) (LoadResult, error) {
	conns := make([]*websocket.Conn, workers)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close(websocket.StatusNormalClosure, "")
			}
		}
	}()
	url := "ws" + t.Base[len("http"):] + "/ws"
	for i := range conns {
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Host: t.Host, CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return LoadResult{}, err
		}
		conns[i] = c
	}
	msg := bytes.Repeat([]byte("w"), 1024)
	return closedLoop(ctx, workers, d, func(ctx context.Context, w int) error {
		if err := conns[w].Write(ctx, websocket.MessageBinary, msg); err != nil {
			return err
		}
		_, got, err := conns[w].Read(ctx)
		if err == nil && len(got) != len(msg) {
			err = errors.New("short echo")
		}
		return err
	}), nil
}

// tcpTransfer moves size bytes over one TCP connection to the TCP
// upstream, up or down, and returns MiB/s.
func tcpTransfer(ctx context.Context, addr string, size int64, up bool) (float64, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	start := time.Now()
	if up {
		if _, err := fmt.Fprintf(c, "up 0\n"); err != nil {
			return 0, err
		}
		if _, err := io.Copy(c, io.LimitReader(zeros{}, size)); err != nil {
			return 0, err
		}
		_ = c.(*net.TCPConn).CloseWrite()
		var got int64
		if _, err := fmt.Fscan(c, &got); err != nil {
			return 0, err
		}
		if got != size {
			return 0, fmt.Errorf("upstream got %d of %d bytes", got, size)
		}
	} else {
		if _, err := fmt.Fprintf(c, "down %d\n", size); err != nil {
			return 0, err
		}
		_ = c.(*net.TCPConn).CloseWrite()
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return 0, err
		}
		if n != size {
			return 0, fmt.Errorf("got %d of %d bytes", n, size)
		}
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
}
