//go:build unix

package gateway

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// readAheadPair returns both ends of a loopback TCP connection, the
// accepted one reading ahead.
func readAheadPair(t *testing.T) (*readAheadConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	dialed := make(chan net.Conn, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Error(err)
		}
		dialed <- c
	}()
	c, err := withReadAhead(ln).Accept()
	require.NoError(t, err)
	peer := <-dialed
	require.NotNil(t, peer)
	t.Cleanup(func() { c.Close(); peer.Close() })
	ra, ok := c.(*readAheadConn)
	require.True(t, ok, "a TCP connection reads ahead")
	return ra, peer
}

func TestReadAheadDeliversEveryByteInOrder(t *testing.T) {
	c, peer := readAheadPair(t)
	want := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	go func() {
		rest := want
		for len(rest) > 0 {
			n := min(len(rest), 1+rng.IntN(40000))
			if _, err := peer.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
		_ = peer.(*net.TCPConn).CloseWrite()
	}()
	var got bytes.Buffer
	p := make([]byte, 64<<10)
	sizes := []int{9, 1, 1029, 16384, 4096, 3, 65536, 100}
	for i := 0; ; i++ {
		n, err := c.Read(p[:sizes[i%len(sizes)]])
		got.Write(p[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
	}
	require.True(t, bytes.Equal(want, got.Bytes()), "read %d bytes of %d, in order: %v", got.Len(), len(want), bytes.Equal(want[:got.Len()], got.Bytes()))
	require.Nil(t, c.buf, "nothing held once all is read")
}

func TestReadAheadServesSmallReadsFromOneSocketRead(t *testing.T) {
	c, peer := readAheadPair(t)
	msg := bytes.Repeat([]byte("0123456789"), 100)
	_, err := peer.Write(msg)
	require.NoError(t, err)
	head := make([]byte, 9)
	_, err = io.ReadFull(c, head)
	require.NoError(t, err)
	require.Equal(t, msg[:9], head)
	// The rest arrived with the first read. With the deadline past, a read
	// that reached the socket would fail; these are served from the buffer.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(-time.Second)))
	rest := make([]byte, len(msg)-9)
	_, err = io.ReadFull(c, rest)
	require.NoError(t, err)
	require.Equal(t, msg[9:], rest)
	require.Nil(t, c.buf, "the buffer goes back to the pool once read")
	_, err = c.Read(head)
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "then the deadline applies: %v", err)
	require.True(t, errors.Is(err, os.ErrDeadlineExceeded))
}

// A deadline that passes while the read waits ends it as net/http expects:
// a timeout, of an operation named "read".
func TestReadAheadDeadlinePassingWhileParked(t *testing.T) {
	c, _ := readAheadPair(t)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	_, err := c.Read(make([]byte, 9))
	var oe *net.OpError
	require.True(t, errors.As(err, &oe), "%T %v", err, err)
	require.Equal(t, "read", oe.Op)
	require.True(t, oe.Timeout())
	// A later deadline lets the next read wait again.
	require.NoError(t, c.SetReadDeadline(time.Time{}))
}

func TestReadAheadWriteToSendsBufferedBytesFirst(t *testing.T) {
	c, peer := readAheadPair(t)
	_, err := peer.Write([]byte("0123456789"))
	require.NoError(t, err)
	head := make([]byte, 3)
	_, err = io.ReadFull(c, head)
	require.NoError(t, err)
	require.NoError(t, peer.Close())
	var rest bytes.Buffer
	_, err = c.WriteTo(&rest)
	require.NoError(t, err)
	require.Equal(t, "3456789", rest.String())
}

// The wrapper under net/http's own server, over h2c: bodies of every size
// echo whole, on one connection, with several streams at once.
func TestReadAheadUnderAnH2CServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(w, r.Body)
	})}
	go func() { _ = srv.Serve(withReadAhead(ln)) }()
	t.Cleanup(func() { _ = srv.Close() })

	var cp http.Protocols
	cp.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &cp}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	sizes := []int{0, 1, 9, 1029, 4095, 4096, 16383, 16384, 70000, 1 << 20}
	errs := make(chan error, len(sizes))
	for _, n := range sizes {
		go func() {
			body := bytes.Repeat([]byte{byte(n)}, n)
			res, err := client.Post("http://"+ln.Addr().String()+"/", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			defer res.Body.Close()
			got, err := io.ReadAll(res.Body)
			switch {
			case err != nil:
				errs <- err
			case res.ProtoMajor != 2:
				errs <- errors.New("not HTTP/2: " + res.Proto)
			case !bytes.Equal(body, got):
				errs <- errors.New("body of " + strconv.Itoa(n) + " bytes came back different")
			default:
				errs <- nil
			}
		}()
	}
	for range sizes {
		require.NoError(t, <-errs)
	}
}

func TestReadAheadLargeReadsGoStraightToTheSocket(t *testing.T) {
	c, peer := readAheadPair(t)
	_, err := peer.Write([]byte("hello"))
	require.NoError(t, err)
	p := make([]byte, readAheadMin)
	n, err := c.Read(p)
	require.NoError(t, err)
	require.Equal(t, "hello", string(p[:n]))
	require.Nil(t, c.buf, "no buffer taken for a read the caller buffers itself")
}

func TestReadAheadParkedReadEndsOnCloseAndHalfCloseWorks(t *testing.T) {
	c, peer := readAheadPair(t)
	// Half-close: the peer sees EOF, and can still send.
	require.NoError(t, c.CloseWrite())
	_, err := peer.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)

	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 9))
		done <- err
	}()
	_, err = peer.Write([]byte("x"))
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err, "a parked read wakes when bytes come")
	case <-time.After(10 * time.Second):
		t.Fatal("read did not wake")
	}
	go func() {
		_, err := c.Read(make([]byte, 9))
		done <- err
	}()
	// Closing our end while the read waits ends it with net.ErrClosed.
	// Whether the read parked before the close or after, that is the error.
	require.NoError(t, c.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, net.ErrClosed)
		var oe *net.OpError
		require.True(t, errors.As(err, &oe) && oe.Op == "read", "net/http tells a closed connection by Op read: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("read did not end on close")
	}
}

func TestReadAheadEOF(t *testing.T) {
	c, peer := readAheadPair(t)
	_, err := peer.Write([]byte("last"))
	require.NoError(t, err)
	require.NoError(t, peer.Close())
	got, err := io.ReadAll(struct{ io.Reader }{c}) // small reads: io.ReadAll starts at 512
	require.NoError(t, err)
	require.Equal(t, "last", string(got))
}
