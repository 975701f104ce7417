package transport_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/transport"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

// countingWriter records each Write separately.
type countingWriter struct{ writes [][]byte }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (c *countingWriter) all() []byte { return bytes.Join(c.writes, nil) }

func readAllFrames(t *testing.T, b []byte) (types []codec.FrameType, body []byte) {
	t.Helper()
	r := codec.NewReader(bytes.NewReader(b), 1<<20)
	for {
		typ, _, err := r.Next()
		if err == io.EOF {
			return types, body
		}
		require.NoError(t, err)
		types = append(types, typ)
		if typ == codec.FrameData {
			p := make([]byte, r.DataLeft())
			n, err := io.ReadFull(readerFunc(r.ReadData), p)
			require.NoError(t, err)
			body = append(body, p[:n]...)
		}
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) {
	n, err := f(p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	return n, err
}

func TestFrameWriterSmallMessageIsOneWrite(t *testing.T) {
	t.Parallel()
	var dst countingWriter
	var w transport.FrameWriter
	w.Reset(&dst, 64<<10)
	defer w.Release()
	w.Response(&codec.ResponseHead{Status: 200, ContentLength: 1024, Header: http.Header{"A": {"b"}}})
	body := bytes.Repeat([]byte("x"), 1024)
	// net/http bodies of known length return io.EOF with their last bytes.
	n, err := w.CopyBody(iotest.DataErrReader(bytes.NewReader(body)))
	require.NoError(t, err)
	require.EqualValues(t, 1024, n)
	w.End()
	require.NoError(t, w.Flush())
	require.Len(t, dst.writes, 1, "head, body and END leave in one write")
	types, got := readAllFrames(t, dst.all())
	require.Equal(t, []codec.FrameType{codec.FrameResponse, codec.FrameData, codec.FrameEnd}, types)
	require.Equal(t, body, got)
}

func TestFrameWriterStreamsEachChunk(t *testing.T) {
	t.Parallel()
	var dst countingWriter
	var w transport.FrameWriter
	w.Reset(&dst, 16)
	defer w.Release()
	// OneByteReader returns data one byte at a time, each without io.EOF:
	// like a streamed body, each chunk must go out on its own.
	src := iotest.OneByteReader(strings.NewReader("abc"))
	_, err := w.CopyBody(src)
	require.NoError(t, err)
	require.Len(t, dst.writes, 3, "each chunk is written when it is read")
	w.Trailers(http.Header{"Grpc-Status": {"0"}})
	w.End()
	require.NoError(t, w.Flush())
	require.Len(t, dst.writes, 4, "trailers and END leave together")
	types, got := readAllFrames(t, dst.all())
	require.Equal(t, "abc", string(got))
	require.Equal(t, codec.FrameTrailers, types[len(types)-2])
}

// Trailers that were declared but never set carry nothing: no TRAILERS
// frame, so the peer sees none rather than an empty one.
func TestFrameWriterSkipsValuelessTrailers(t *testing.T) {
	t.Parallel()
	var dst countingWriter
	var w transport.FrameWriter
	w.Reset(&dst, 16)
	defer w.Release()
	w.Trailers(nil)
	w.Trailers(http.Header{"Grpc-Status": nil, "X-Sum": {}})
	w.End()
	require.NoError(t, w.Flush())
	types, _ := readAllFrames(t, dst.all())
	require.Equal(t, []codec.FrameType{codec.FrameEnd}, types)
}

func TestFrameWriterSplitsLargeBodiesAtChunkSize(t *testing.T) {
	t.Parallel()
	var dst countingWriter
	var w transport.FrameWriter
	w.Reset(&dst, 1000)
	defer w.Release()
	body := bytes.Repeat([]byte("0123456789"), 1000)
	_, err := w.CopyBody(bytes.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, w.Data([]byte("tail")))
	w.End()
	require.NoError(t, w.Flush())
	types, got := readAllFrames(t, dst.all())
	require.Equal(t, append(body, "tail"...), got)
	for _, typ := range types[:len(types)-1] {
		require.Equal(t, codec.FrameData, typ)
	}
	r := codec.NewReader(bytes.NewReader(dst.all()), 1000)
	for {
		typ, _, err := r.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, "no frame exceeds the chunk size")
		_ = typ
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("stream reset") }

func TestFrameWriterErrorsSayWhoseFault(t *testing.T) {
	t.Parallel()
	var w transport.FrameWriter
	w.Reset(failWriter{}, 16)
	defer w.Release()
	_, err := w.CopyBody(iotest.OneByteReader(strings.NewReader("ab")))
	var we transport.WriteError
	require.ErrorAs(t, err, &we)

	w.Reset(io.Discard, 16)
	_, err = w.CopyBody(iotest.ErrReader(errors.New("client went away")))
	require.ErrorContains(t, err, "client went away")
	require.False(t, errors.As(err, &we))
}

func TestBackoffFullJitterBoundedAndReset(t *testing.T) {
	t.Parallel()
	b := transport.Backoff{Base: 100 * time.Millisecond, Max: time.Second, Stable: time.Minute}
	ceilings := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, c := range ceilings {
		for range 50 {
			probe := b
			d := probe.Next()
			require.Greater(t, d, time.Duration(0))
			require.LessOrEqual(t, d, c*time.Millisecond, "attempt %d", i)
		}
		b.Next()
	}
	require.Equal(t, len(ceilings), b.Attempt())
	b.Connected(time.Second)
	require.Equal(t, len(ceilings), b.Attempt(), "a short connection does not reset")
	b.Connected(time.Minute)
	require.Zero(t, b.Attempt(), "a stable connection resets the counter")
}

func TestPinRoundTrip(t *testing.T) {
	t.Parallel()
	cert, err := transport.SelfSigned("127.0.0.1", "localhost")
	require.NoError(t, err)
	pin, err := transport.CertificatePin(cert)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(pin, "sha256:"))
	sum, err := transport.ParsePin(pin)
	require.NoError(t, err)
	want := sha256.Sum256(cert.Leaf.RawSubjectPublicKeyInfo)
	require.Equal(t, want[:], sum)
	for _, bad := range []string{"", "md5:abc", "sha256:!!", "sha256:YWJj"} {
		_, err := transport.ParsePin(bad)
		require.Error(t, err, bad)
	}
	_, err = transport.ClientTLS(transport.ClientTLSOptions{})
	require.ErrorContains(t, err, "CA file or a pin")
}

// handshake runs a real QUIC handshake on loopback and returns the dial error.
func handshake(t *testing.T, serverCert tls.Certificate, opts transport.ClientTLSOptions) error {
	t.Helper()
	ln, err := transport.Listen("127.0.0.1:0", transport.ServerTLS(serverCert), transport.Config{})
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		c, err := ln.Accept(ctx)
		if err == nil {
			<-c.Context().Done()
		}
	}()
	conf, err := transport.ClientTLS(opts)
	require.NoError(t, err)
	c, err := transport.Dial(ctx, ln.Addr().String(), conf, transport.Config{})
	if err == nil {
		require.NoError(t, c.Close(codec.ConnNormal, "done"))
	}
	cancel()
	<-accepted
	return err
}

func TestHandshakeChecksServerIdentity(t *testing.T) {
	t.Parallel()
	cert, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	other, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	pin, _ := transport.CertificatePin(cert)
	otherPin, _ := transport.CertificatePin(other)

	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600))

	tests := []struct {
		name    string
		opts    transport.ClientTLSOptions
		wantErr bool
	}{
		{"right pin", transport.ClientTLSOptions{Pin: pin}, false},
		{"wrong pin", transport.ClientTLSOptions{Pin: otherPin}, true},
		{"ca file", transport.ClientTLSOptions{CAFile: caFile, ServerName: "127.0.0.1"}, false},
		{"ca file and wrong name", transport.ClientTLSOptions{CAFile: caFile, ServerName: "example.test"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := handshake(t, cert, tt.opts)
			if !tt.wantErr {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.False(t, transport.Retryable(err), "an identity failure is fatal: %v", err)
			if tt.name == "wrong pin" {
				require.ErrorIs(t, err, transport.ErrPinMismatch)
			}
		})
	}
}

// TestOpenStreamWaitsForASlot reaches the peer's stream limit for real: the
// next OpenStream waits for a slot (and gets it once a stream ends), or,
// if none frees up within its wait, fails with pipeline.ErrOverloaded,
// which the ingress side answers 503 "at its stream limit".
func TestOpenStreamWaitsForASlot(t *testing.T) {
	t.Parallel()
	cert, err := transport.SelfSigned("127.0.0.1")
	require.NoError(t, err)
	ln, err := transport.Listen("127.0.0.1:0", transport.ServerTLS(cert), transport.Config{MaxStreams: 1})
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				return
			}
			// Each stream ends when the client ends it.
			_, _ = io.Copy(io.Discard, s)
			_ = s.Close()
		}
	}()
	pin, err := transport.CertificatePin(cert)
	require.NoError(t, err)
	conf, err := transport.ClientTLS(transport.ClientTLSOptions{Pin: pin})
	require.NoError(t, err)
	c, err := transport.Dial(ctx, ln.Addr().String(), conf, transport.Config{})
	require.NoError(t, err)
	defer c.Close(codec.ConnNormal, "done")

	first, err := transport.Opener{C: c.Conn, Wait: time.Minute}.OpenStream(ctx)
	require.NoError(t, err)
	_, err = first.Write([]byte("x")) // the server learns of the stream
	require.NoError(t, err)

	// No slot frees up: the wait ends with ErrOverloaded.
	_, err = transport.Opener{C: c.Conn, Wait: 100 * time.Millisecond}.OpenStream(ctx)
	require.ErrorIs(t, err, pipeline.ErrOverloaded)

	// A slot frees up while the next one waits: it gets it.
	got := make(chan error, 1)
	go func() {
		s, err := transport.Opener{C: c.Conn, Wait: time.Minute}.OpenStream(ctx)
		if err == nil {
			s.Abort(codec.StreamCancelled)
		}
		got <- err
	}()
	require.NoError(t, first.Close())
	_, _ = io.Copy(io.Discard, first) // the server's FIN: the stream is over
	require.NoError(t, <-got)
	require.NoError(t, c.Close(codec.ConnNormal, "done"))
	cancel()
	<-served
}
