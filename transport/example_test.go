package transport_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/qtunnel/qtunnel/codec"
	"github.com/qtunnel/qtunnel/transport"
)

// A small response leaves in one write: the head waits in the buffer, the
// body is read straight in behind it, END joins them.
func ExampleFrameWriter() {
	var stream writeCounter
	var sent bytes.Buffer
	w := transport.GetFrameWriter(io.MultiWriter(&stream, &sent), codec.DefaultMaxFrameSize)
	defer transport.PutFrameWriter(w)

	w.Response(&codec.ResponseHead{Status: 200, ContentLength: 5, Header: http.Header{}})
	_, _ = w.CopyBody(&eofWithData{bytes.NewReader([]byte("hello"))})
	w.End()
	_ = w.Flush()

	r := codec.NewReader(&sent, codec.DefaultMaxFrameSize)
	var types []string
	for {
		t, _, err := r.Next()
		if err != nil {
			break
		}
		types = append(types, t.String())
	}
	fmt.Println(stream.n, "write:", strings.Join(types, " "))
	// Output: 1 write: RESPONSE DATA END
}

// Backoff delays grow with each attempt, capped, and are drawn uniformly
// below the cap (full jitter).
func ExampleBackoff() {
	b := transport.Backoff{Base: 100e6, Max: 1e9} // 100ms, 1s
	for range 5 {
		d := b.Next()
		fmt.Println(d > 0 && d <= 1e9)
	}
	// Output:
	// true
	// true
	// true
	// true
	// true
}
