package gateway_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"google.golang.org/grpc/status"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/internal/e2etest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/transport"
)

// grpc-go's interop cases report failure with grpclog's Fatal, which exits
// the process; this logger turns it into a panic the test recovers.
type panicLogger struct{ grpclog.LoggerV2 }

func (panicLogger) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (panicLogger) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (panicLogger) Fatalln(args ...any)               { panic(fmt.Sprintln(args...)) }

func init() {
	grpclog.SetLoggerV2(panicLogger{grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard)})
}

// tlsFixture is a certificate for the test hosts, its files and a pool that
// trusts it.
type tlsFixture struct {
	cert              tls.Certificate
	certFile, keyFile string
	pool              *x509.CertPool
}

func newTLSFixture(t *testing.T, hosts ...string) tlsFixture {
	t.Helper()
	cert, err := transport.SelfSigned(hosts...)
	require.NoError(t, err)
	dir := t.TempDir()
	f := tlsFixture{cert: cert, certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem"), pool: x509.NewCertPool()}
	require.NoError(t, transport.WritePEM(cert, f.certFile, f.keyFile))
	f.pool.AddCert(cert.Leaf)
	return f
}

func (f tlsFixture) files() []config.CertFiles {
	return []config.CertFiles{{CertFile: f.certFile, KeyFile: f.keyFile}}
}

// cancelSeen records that an upstream stream handler saw its context end.
type cancelSeen struct {
	mu   sync.Mutex
	seen chan struct{}
}

func (c *cancelSeen) interceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	if ss.Context().Err() != nil {
		c.mu.Lock()
		if c.seen != nil {
			select {
			case c.seen <- struct{}{}:
			default:
			}
		}
		c.mu.Unlock()
	}
	return err
}

func grpcUpstream(t *testing.T, cert *tls.Certificate, cs *cancelSeen) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(32 << 20), grpc.MaxSendMsgSize(32 << 20), grpc.StreamInterceptor(cs.interceptor)}
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}})))
	}
	s := grpc.NewServer(opts...)
	testgrpc.RegisterTestServiceServer(s, interop.NewTestServer())
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// TestGRPCInteropThroughBothTunnels runs grpc-go's own interoperability
// cases, client against server, through the reverse and the forward
// tunnel, over h2c and over TLS (ingress listener and upstream).
func TestGRPCInteropThroughBothTunnels(t *testing.T) {
	t.Parallel()
	ingressTLS := newTLSFixture(t, "grpc.app.test", "localhost", "127.0.0.1")
	upTLS := newTLSFixture(t, "127.0.0.1")
	cs := &cancelSeen{}
	plainUp := grpcUpstream(t, nil, cs)
	tlsUp := grpcUpstream(t, &upTLS.cert, cs)
	h2 := func(r rules.Rule) rules.Rule { r.UpstreamHTTP2 = true; return r }
	withTLSUp := func(r rules.Rule) rules.Rule {
		r.UpstreamHTTP2, r.Upstream, r.UpstreamCAFile = true, "https://"+tlsUp, upTLS.certFile
		return r
	}
	tlsFwd := forwardRule("fwd-tls", "localhost:0", "")
	tlsFwd.ListenTLS = true
	p := startPair(t, pairOpts{
		rules: []rules.Rule{
			h2(reverseRule("rev", appHost, "http://"+plainUp)),
			withTLSUp(reverseRule("rev-tls", "grpc.app.test", "")),
			h2(forwardRule("fwd", "127.0.0.1:0", "http://"+plainUp)),
			withTLSUp(tlsFwd),
		},
		serverMutate: func(c *config.Server) {
			c.PublicHTTPS = "127.0.0.1:0"
			c.PublicTLS = ingressTLS.files()
			c.Limits.MaxBodySize = config.Unlimited // the 16 MiB message, over the 10 MiB default
		},
		clientMutate: func(c *config.Client) {
			c.ForwardTLS = ingressTLS.files()
			c.Limits.MaxBodySize = config.Unlimited
		},
	})
	tlsCreds := func(name string) grpc.DialOption {
		return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ingressTLS.pool, ServerName: name}))
	}
	plain := grpc.WithTransportCredentials(insecure.NewCredentials())
	targets := []struct {
		name string
		addr string
		opts []grpc.DialOption
	}{
		{"reverse h2c", p.Server.PublicAddr().String(), []grpc.DialOption{plain, grpc.WithAuthority(appHost)}},
		{"reverse tls", p.Server.PublicTLSAddr().String(), []grpc.DialOption{tlsCreds("grpc.app.test"), grpc.WithAuthority("grpc.app.test")}},
		{"forward h2c", p.Client.ForwardAddr("127.0.0.1:0").String(), []grpc.DialOption{plain}},
		{"forward tls", p.Client.ForwardAddr("localhost:0").String(), []grpc.DialOption{tlsCreds("localhost")}},
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			cc, err := grpc.NewClient("passthrough:///"+tg.addr, tg.opts...)
			require.NoError(t, err)
			defer cc.Close()
			tc := testgrpc.NewTestServiceClient(cc)
			cases := []struct {
				name string
				run  func(ctx context.Context)
			}{
				{"empty_unary", func(ctx context.Context) { interop.DoEmptyUnaryCall(ctx, tc) }},
				{"large_unary", func(ctx context.Context) { interop.DoLargeUnaryCall(ctx, tc) }},
				{"client_streaming", func(ctx context.Context) { interop.DoClientStreaming(ctx, tc) }},
				{"server_streaming", func(ctx context.Context) { interop.DoServerStreaming(ctx, tc) }},
				{"ping_pong", func(ctx context.Context) { interop.DoPingPong(ctx, tc) }},
				{"empty_stream", func(ctx context.Context) { interop.DoEmptyStream(ctx, tc) }},
				{"timeout_on_sleeping_server", func(ctx context.Context) { interop.DoTimeoutOnSleepingServer(ctx, tc) }},
				{"cancel_after_begin", func(ctx context.Context) { interop.DoCancelAfterBegin(ctx, tc) }},
				{"cancel_after_first_response", func(ctx context.Context) { interop.DoCancelAfterFirstResponse(ctx, tc) }},
				{"status_code_and_message", func(ctx context.Context) { interop.DoStatusCodeAndMessage(ctx, tc) }},
				{"special_status_message", func(ctx context.Context) { interop.DoSpecialStatusMessage(ctx, tc) }},
				{"custom_metadata", func(ctx context.Context) { interop.DoCustomMetadata(ctx, tc) }},
				{"unimplemented_method", func(ctx context.Context) { interop.DoUnimplementedMethod(ctx, cc) }},
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					func() {
						defer func() {
							if r := recover(); r != nil {
								t.Fatalf("interop case %s failed: %v", c.name, r)
							}
						}()
						c.run(ctx)
					}()
				})
			}
			t.Run("16 MiB messages", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				body := bytes.Repeat([]byte{7}, 16<<20)
				resp, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 16 << 20, Payload: &testgrpc.Payload{Body: body}},
					grpc.MaxCallRecvMsgSize(32<<20), grpc.MaxCallSendMsgSize(32<<20))
				require.NoError(t, err)
				require.Len(t, resp.GetPayload().GetBody(), 16<<20)
			})
			t.Run("300 concurrent streams", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				var wg sync.WaitGroup
				errs := make(chan error, 300)
				for range 300 {
					wg.Go(func() {
						stream, err := tc.FullDuplexCall(ctx)
						if err == nil {
							err = stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 100}}})
						}
						if err == nil {
							_, err = stream.Recv()
						}
						if err == nil {
							err = stream.CloseSend()
						}
						if err == nil {
							if _, rerr := stream.Recv(); rerr != io.EOF {
								err = fmt.Errorf("want EOF after the last response, got %v", rerr)
							}
						}
						errs <- err
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					require.NoError(t, err)
				}
			})
			t.Run("cancellation reaches the upstream handler", func(t *testing.T) {
				seen := make(chan struct{}, 1)
				cs.mu.Lock()
				cs.seen = seen
				cs.mu.Unlock()
				ctx, cancel := context.WithCancel(context.Background())
				stream, err := tc.FullDuplexCall(ctx)
				require.NoError(t, err)
				require.NoError(t, stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 10}}}))
				_, err = stream.Recv()
				require.NoError(t, err)
				cancel()
				_, err = stream.Recv()
				require.Equal(t, codes.Canceled, status.Code(err))
				select {
				case <-seen:
				case <-time.After(10 * time.Second):
					t.Fatal("the upstream handler never saw the caller's cancellation")
				}
				cs.mu.Lock()
				cs.seen = nil
				cs.mu.Unlock()
			})
		})
	}
}

func TestGRPCErrorsFromTheGatewayAreGRPCStatuses(t *testing.T) {
	t.Parallel()
	p := startPair(t, pairOpts{rules: []rules.Rule{reverseRule("rev", appHost, "http://"+closedPort(t))}})
	for _, c := range []struct {
		authority string
		code      codes.Code
		says      string
	}{
		{"unknown.test", codes.Unimplemented, "no route"},
		{appHost, codes.Unavailable, "unreachable"},
	} {
		cc, err := grpc.NewClient("passthrough:///"+p.Server.PublicAddr().String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(c.authority))
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(ctx, &testgrpc.Empty{})
		cancel()
		cc.Close()
		require.Equal(t, c.code, status.Code(err), "%v", err)
		require.Contains(t, status.Convert(err).Message(), c.says)
	}
}

// wsUpstream echoes every message; "close-please" gets close code 4001.
func wsUpstream(t *testing.T) string {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			Subprotocols: []string{"echo.v2", "echo.v1"}, CompressionMode: websocket.CompressionContextTakeover})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(32 << 20)
		ctx := r.Context()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			if string(data) == "close-please" {
				_ = c.Close(4001, "bye from upstream")
				return
			}
			if err := c.Write(ctx, typ, data); err != nil {
				return
			}
		}
	})
	return upstream(t, h).URL
}

func TestWebSocketThroughBothTunnels(t *testing.T) {
	t.Parallel()
	fx := newTLSFixture(t, "ws.app.test", "localhost", "127.0.0.1")
	up := wsUpstream(t)
	wssFwd := forwardRule("fwd-tls", "localhost:0", up)
	wssFwd.ListenTLS = true
	p := startPair(t, pairOpts{
		rules: []rules.Rule{
			reverseRule("rev", appHost, up), reverseRule("rev-tls", "ws.app.test", up),
			forwardRule("fwd", "127.0.0.1:0", up), wssFwd,
		},
		serverMutate: func(c *config.Server) { c.PublicHTTPS, c.PublicTLS = "127.0.0.1:0", fx.files() },
		clientMutate: func(c *config.Client) { c.ForwardTLS = fx.files() },
	})
	tlsClient := func(name string) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fx.pool, ServerName: name}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	for _, tg := range []struct {
		name, url, host string
		client          *http.Client
	}{
		{"reverse ws", "ws://" + p.Server.PublicAddr().String() + "/ws", appHost, nil},
		{"reverse wss", "wss://" + p.Server.PublicTLSAddr().String() + "/ws", "ws.app.test", tlsClient("ws.app.test")},
		{"forward ws", "ws://" + p.Client.ForwardAddr("127.0.0.1:0").String() + "/ws", "", nil},
		{"forward wss", "wss://" + p.Client.ForwardAddr("localhost:0").String() + "/ws", "localhost", tlsClient("localhost")},
	} {
		t.Run(tg.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, tg.url, &websocket.DialOptions{
				HTTPClient: tg.client, Host: tg.host, Subprotocols: []string{"echo.v1"},
				CompressionMode: websocket.CompressionContextTakeover})
			require.NoError(t, err)
			defer c.CloseNow()
			c.SetReadLimit(32 << 20)
			require.Equal(t, "echo.v1", c.Subprotocol(), "subprotocol negotiated end to end")
			require.Contains(t, resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate", "extension negotiated end to end")
			require.Len(t, resp.Header.Get("X-Request-Id"), 16)

			echo := func(typ websocket.MessageType, msg []byte) {
				t.Helper()
				require.NoError(t, c.Write(ctx, typ, msg))
				gotTyp, got, err := c.Read(ctx)
				require.NoError(t, err)
				require.Equal(t, typ, gotTyp)
				require.True(t, bytes.Equal(msg, got), "echo of %d bytes differs", len(msg))
			}
			echo(websocket.MessageText, []byte("hello over the tunnel"))
			echo(websocket.MessageBinary, []byte{0, 1, 2, 255})
			big := make([]byte, 16<<20)
			for i := range big {
				big[i] = byte(i * 7)
			}
			echo(websocket.MessageBinary, big)

			w, err := c.Writer(ctx, websocket.MessageText)
			require.NoError(t, err)
			for _, part := range []string{"frag", "ment", "ed"} {
				_, err := w.Write([]byte(part))
				require.NoError(t, err)
			}
			require.NoError(t, w.Close())
			_, got, err := c.Read(ctx)
			require.NoError(t, err)
			require.Equal(t, "fragmented", string(got), "a fragmented message arrives whole")

			read := make(chan error, 1)
			go func() {
				_, data, err := c.Read(ctx)
				if err == nil && string(data) != "after ping" {
					err = fmt.Errorf("got %q", data)
				}
				read <- err
			}()
			require.NoError(t, c.Ping(ctx), "ping answered by the upstream's pong")
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("after ping")))
			require.NoError(t, <-read)

			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("close-please")))
			_, _, err = c.Read(ctx)
			require.Equal(t, websocket.StatusCode(4001), websocket.CloseStatus(err), "close code crosses: %v", err)
			var ce websocket.CloseError
			require.True(t, errors.As(err, &ce))
			require.Equal(t, "bye from upstream", ce.Reason)
		})
	}
}

// tcpUpstream answers each connection with "got " and everything it read
// once the client half-closed; with a leading "sum" line it answers the
// SHA-256 of the rest instead.
func tcpUpstream(t *testing.T) string {
	return e2etest.TCPUpstream(t, time.Minute, func(c net.Conn) {
		data, err := io.ReadAll(c)
		if err != nil {
			return
		}
		if rest, ok := bytes.CutPrefix(data, []byte("sum\n")); ok {
			fmt.Fprintf(c, "%x", sha256.Sum256(rest))
			return
		}
		_, _ = c.Write(append([]byte("got "), data...))
	})
}

func TestTCPThroughBothTunnels(t *testing.T) {
	t.Parallel()
	up := tcpUpstream(t)
	p := startPair(t, pairOpts{rules: []rules.Rule{
		{ID: "rev-tcp", Client: clientID, Direction: rules.Reverse, Protocol: rules.ProtoTCP, Listen: "127.0.0.1:0", Upstream: "tcp://" + up},
		{ID: "fwd-tcp", Client: clientID, Direction: rules.Forward, Protocol: rules.ProtoTCP, Listen: "127.0.0.1:0", Upstream: up},
	}})
	size := 32 << 20
	if testing.Short() {
		size = 4 << 20
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	want := fmt.Sprintf("%x", sha256.Sum256(payload))
	for _, tg := range []struct{ name, addr string }{
		{"reverse", p.Server.ListenerAddr("127.0.0.1:0").String()},
		{"forward", p.Client.ForwardAddr("127.0.0.1:0").String()},
	} {
		t.Run(tg.name, func(t *testing.T) {
			roundTrip := func(send []byte) string {
				c, err := net.Dial("tcp", tg.addr)
				require.NoError(t, err)
				defer c.Close()
				require.NoError(t, c.SetDeadline(time.Now().Add(60*time.Second)))
				go func() {
					_, _ = c.Write(send)
					_ = c.(*net.TCPConn).CloseWrite() // half-close: the answer still comes back
				}()
				got, err := io.ReadAll(c)
				require.NoError(t, err)
				return string(got)
			}
			require.Equal(t, "got hello", roundTrip([]byte("hello")))
			require.Equal(t, want, roundTrip(append([]byte("sum\n"), payload...)), "bytes cross whole")
		})
	}
}

func TestTCPUpstreamDownClosesTheConnection(t *testing.T) {
	t.Parallel()
	p := startPair(t, pairOpts{rules: []rules.Rule{
		{ID: "rev-tcp", Client: clientID, Direction: rules.Reverse, Protocol: rules.ProtoTCP, Listen: "127.0.0.1:0", Upstream: closedPort(t)},
	}})
	c, err := net.Dial("tcp", p.Server.ListenerAddr("127.0.0.1:0").String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n)
	require.Error(t, err, "the connection is closed, not left hanging")
	require.False(t, os.IsTimeout(err))
	require.False(t, strings.Contains(err.Error(), "timeout"))
}
