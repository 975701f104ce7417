package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/qtunnel/qtunnel/codec"
)

// Reject ends a chain with an answer for the user: an HTTP status and a short
// reason. Stages return it instead of calling next; the listener that owns
// the exchange turns it into a response (ingress side) or an ERROR frame
// (egress side, which the ingress side then turns into the response).
type Reject struct {
	Status int
	// Message is the response body's reason, one line, safe to show users.
	Message string
	// RetryAfter is sent as Retry-After when positive.
	RetryAfter time.Duration
	// Header holds fields to send with the answer (WWW-Authenticate on a
	// 401, say). The answer's own fields (Content-Type, Content-Length,
	// X-Request-Id, Retry-After) cannot be overridden. A Reject made on
	// the egress side crosses the tunnel as an ERROR frame, which carries
	// no fields: Header is for the ingress side's stages.
	Header http.Header
	// Err is the cause, for logs; it is not shown to the user.
	Err error
	// Stage names the stage that refused; the chain fills it in.
	Stage string
}

// Rejectf returns a *Reject with status and a formatted message.
func Rejectf(status int, format string, args ...any) *Reject {
	return &Reject{Status: status, Message: fmt.Sprintf(format, args...)}
}

func (r *Reject) Error() string {
	if r.Err != nil {
		return fmt.Sprintf("%d %s: %v", r.Status, r.Message, r.Err)
	}
	return fmt.Sprintf("%d %s", r.Status, r.Message)
}

func (r *Reject) Unwrap() error { return r.Err }

// ErrOverloaded is returned when a bounded resource is full. It maps to 503
// with Retry-After: the request was not processed and may be retried.
var ErrOverloaded = errors.New("overloaded")

// Answer says what the user should see for err: a status, a message and a
// Retry-After. A *Reject or *codec.Error gives its own; deadlines give 504;
// overload gives 503; anything else is a 502 from the gateway.
func Answer(err error) (status int, msg string, retryAfter time.Duration) {
	var rj *Reject
	if errors.As(err, &rj) {
		return rj.Status, rj.Message, rj.RetryAfter
	}
	var ce *codec.Error
	if errors.As(err, &ce) {
		return ce.Status, ce.Message, time.Duration(ce.RetryAfter) * time.Second
	}
	switch {
	case errors.Is(err, ErrOverloaded):
		return http.StatusServiceUnavailable, "gateway overloaded, retry later", time.Second
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "timed out", 0
	}
	return http.StatusBadGateway, "tunnel error", 0
}
