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
// reason. Stages return it instead of calling next; it passes back through
// the response phase of every stage before, which may read it, add to its
// Header or return another error instead, and encode (outermost) renders
// it: as the user's response on the ingress side, as an ERROR frame on
// the egress side (which the ingress side then turns into the response).
// Return a new Reject each time: the chain and the stages before may write
// to it.
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

// AnswerHeader returns the header fields the user will get for an exchange
// that ended with err, for a stage's response phase to edit: the answer's
// (x.Response.Header, made if nil) when err is nil, a *Reject's Header
// (made if nil) when err is one, else nil (an error that is not a Reject
// is answered by the gateway's own fields only).
func AnswerHeader(x *Exchange, err error) http.Header {
	if err == nil {
		if x.Response == nil {
			return nil
		}
		if x.Response.Header == nil {
			x.Response.Header = make(http.Header)
		}
		return x.Response.Header
	}
	var rj *Reject
	if !errors.As(err, &rj) {
		return nil
	}
	if rj.Header == nil {
		rj.Header = make(http.Header)
	}
	return rj.Header
}

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
