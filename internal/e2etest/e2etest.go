// Package e2etest holds helpers for tests that run the tunnel as real
// processes or on real sockets: a TestMain that builds the tunnel binary,
// free loopback addresses, and a raw TCP upstream.
package e2etest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
)

// Main builds the tunnel binary into a temporary directory and sets *binary
// to its path, runs the tests, removes the directory, and, if the tests
// passed, fails the run on leaked goroutines. Call it from TestMain; it
// does not return.
//
// The binary is built without the race detector: it is the product as
// shipped. The tests themselves may run with -race.
func Main(m *testing.M, binary *string) {
	dir, err := os.MkdirTemp("", "qtunnel-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*binary = filepath.Join(dir, "tunnel")
	build := exec.Command("go", "build", "-o", *binary, "github.com/qtunnel/qtunnel/cmd/tunnel")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tunnel:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	ignore := append(pipelinetest.IgnoredGoroutines(), goleak.IgnoreCurrent())
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(ignore...); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// FreeAddr returns a loopback address, network "tcp" or "udp", that was
// free a moment ago.
func FreeAddr(t testing.TB, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		defer c.Close()
		return c.LocalAddr().String()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// TCPUpstream serves raw TCP on a loopback port until the test ends: each
// connection is handed to serve in a goroutine of its own, with a deadline
// of d for the whole connection, and closed when serve returns. The
// cleanup waits for every connection's serve to return. It returns the
// address.
func TCPUpstream(t testing.TB, d time.Duration, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(d))
				serve(c)
			})
		}
	})
	return ln.Addr().String()
}

// SyncBuffer is a bytes.Buffer that one goroutine (a process's output, a
// logger) may write while another reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
