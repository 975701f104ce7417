package edgeguard

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http/httpguts"
)

// scan feeds in to a scanner that records where requests end.
func scan(in []byte) (h1Scanner, []int) {
	var ends []int
	s := newH1Scanner(1 << 20)
	s.ends = &ends
	s.feed(in)
	return s, ends
}

func TestH1ScannerFramesLikeNetHTTP(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		ends    int // requests that end (head and body)
		bad     int // ordinal of the refused head, 0: none
		stopped bool
	}{
		{name: "two GETs", in: "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n", ends: 2},
		{name: "bare LF lines", in: "GET / HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\nHost: a\n\n", ends: 2},
		{name: "content-length body, then a GET", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n", ends: 2},
		{name: "chunked body with extension and trailer", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ends: 2},
		{name: "chunk size with trailing blanks", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5 \t\r\nhello\r\n0\r\n\r\n", ends: 1},
		{name: "CL and TE", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", bad: 1, stopped: true},
		{name: "TE and CL in other case and order", in: "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n", bad: 1, stopped: true},
		{name: "TE on HTTP/1.0", in: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", bad: 1, stopped: true},
		{name: "second request ambiguous", in: "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", ends: 1, bad: 2, stopped: true},
		{name: "TE continued over a folded line", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n , gzip\r\n\r\n", stopped: true},
		{name: "TE hidden in a folded line of another field", in: "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nzGET / HTTP/1.1\r\nHost: a\r\n\r\n", ends: 2},
		{name: "CL padded with blanks", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:    2   \r\n\r\nokGET / HTTP/1.1\r\nHost: a\r\n\r\n", ends: 2},
		{name: "equal repeated CL", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", ends: 1},
		{name: "different repeated CL", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", stopped: true},
		{name: "chunk line with bare LF", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", stopped: true},
		{name: "bad chunk size", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", stopped: true},
		{name: "HTTP/2.0 request line", in: "GET / HTTP/2.0\r\n\r\n", stopped: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, ends := scan([]byte(tt.in))
			require.Len(t, ends, tt.ends, "requests ended")
			require.Equal(t, tt.bad, s.bad, "refused head")
			require.Equal(t, tt.stopped, s.stopped(), "stopped")
			if tt.bad == 0 && !tt.stopped {
				checkAgainstNetHTTP(t, []byte(tt.in))
			}
		})
	}
}

// netHTTPRequests reads in as net/http's server reads requests, until the
// first error: the offset at which each request ended, and whether its raw
// head declared ambiguous framing.
func netHTTPRequests(in []byte) (ends []int, ambiguous []bool) {
	r := bytes.NewReader(in)
	br := bufio.NewReaderSize(r, 64<<10)
	lastMethod := ""
	for {
		if lastMethod == "POST" {
			// net/http's tolerance of old clients' CRLF after a POST.
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			_, _ = br.Discard(n)
		}
		start := len(in) - r.Len() - br.Buffered()
		if start >= len(in) {
			return
		}
		req, err := http.ReadRequest(br)
		if err != nil || !serverTakes(req) {
			return
		}
		lastMethod = req.Method
		_, err = io.Copy(io.Discard, req.Body)
		if err != nil {
			return
		}
		ends = append(ends, len(in)-r.Len()-br.Buffered())
		ambiguous = append(ambiguous, rawAmbiguous(in[start:]))
		if ambiguous[len(ambiguous)-1] {
			return
		}
	}
}

// serverTakes applies the checks net/http's server makes after reading a
// request: one it refuses closes the connection.
func serverTakes(req *http.Request) bool {
	if req.ProtoMajor != 1 {
		return false
	}
	hosts, haveHost := req.Header["Host"]
	if req.ProtoAtLeast(1, 1) && (!haveHost || len(hosts) == 0) && req.Method != "CONNECT" {
		return false
	}
	if len(hosts) > 1 || (len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0])) {
		return false
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// rawAmbiguous reads the head at the start of in with net/textproto, as
// net/http does before it drops fields, and reports whether it declares
// Transfer-Encoding together with Content-Length or on HTTP/1.0.
func rawAmbiguous(in []byte) bool {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(in)))
	line, err := tp.ReadLine()
	if err != nil {
		return false
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return false
	}
	_, te := h["Transfer-Encoding"]
	_, cl := h["Content-Length"]
	return te && (cl || strings.HasSuffix(line, "HTTP/1.0"))
}

// checkAgainstNetHTTP holds the scanner to net/http's reader on in: every
// request net/http reads ends where the scanner says, and the first one
// with ambiguous framing is the one the scanner refuses.
func checkAgainstNetHTTP(t *testing.T, in []byte) {
	t.Helper()
	s, ends := scan(in)
	goEnds, amb := netHTTPRequests(in)
	for k := range goEnds {
		if amb[k] {
			require.Equal(t, k+1, s.bad, "the ambiguous request is refused: %q", in)
			return
		}
		require.Greater(t, len(ends), k, "the scanner stopped before request %d that net/http read: %q", k+1, in)
		require.Equal(t, goEnds[k], ends[k], "request %d ends at the same byte: %q", k+1, in)
		require.True(t, s.bad == 0 || s.bad > k+1, "request %d is not refused: %q", k+1, in)
	}
}

// FuzzH1ScannerAgreesWithNetHTTP feeds the same bytes to the scanner and to
// net/http's request reader: the scanner must find the requests net/http
// reads where it reads them, refuse exactly the first ambiguous one, and
// reach the same state however the bytes are split into reads.
func FuzzH1ScannerAgreesWithNetHTTP(f *testing.F) {
	seeds := []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\nHost: a\nContent-Length:  1 \n\nxGET / HTTP/1.1\nHost: a\n\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s), uint8(7))
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint8) {
		checkAgainstNetHTTP(t, in)
		// Any split into reads gives the same result.
		one, _ := scan(in)
		s := newH1Scanner(1 << 20)
		step := int(split%31) + 1
		for i := 0; i < len(in); i += step {
			s.feed(in[i:min(i+step, len(in))])
		}
		require.Equal(t, one.bad, s.bad)
		require.Equal(t, one.heads, s.heads)
		require.Equal(t, one.stopped(), s.stopped())
	})
}
