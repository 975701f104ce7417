package headers_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/headers"
	"github.com/qtunnel/qtunnel/stages/internal/stagetest"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func newStage(t testing.TB, c headers.Config) *headers.Stage {
	t.Helper()
	s, err := headers.New(c)
	require.NoError(t, err)
	require.Equal(t, headers.Name, s.Name())
	return s
}

// exchange is an ingress exchange with a request carrying reqHeader.
func exchange(reqHeader http.Header) *pipeline.Exchange {
	x := pipeline.Acquire(pipeline.Ingress)
	x.Request = httptest.NewRequest(http.MethodGet, "http://app.example.test/", nil)
	x.Request.Header = reqHeader
	return x
}

// answer is a next stage that records the request's header as it saw it
// and answers with respHeader.
func answer(seen *http.Header, respHeader http.Header) pipeline.Handler {
	return pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		if seen != nil {
			*seen = x.Request.Header.Clone()
		}
		resp := x.NewResponse()
		resp.StatusCode = http.StatusOK
		resp.Header = respHeader
		return nil
	})
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     headers.Config
		wantErr string
	}{
		{"zero value", headers.Config{}, ""},
		{"every rule", headers.Config{
			Request: headers.Rules{Set: map[string]string{"x-tenant": "acme", "Authorization": "Bearer x"},
				Add: map[string]string{"X-Forwarded-Prefix": "/api"}, Remove: []string{"Cookie", "x-debug"}},
			Response: headers.Rules{Set: map[string]string{"Cache-Control": "no-store", "X-Empty": ""},
				Add: map[string]string{"Set-Cookie": "a=b; Secure", "X-Utf8": "caf\xc3\xa9"}, Remove: []string{"Server", "Server"}},
		}, ""},
		{"the same field in set, add and remove", headers.Config{Request: headers.Rules{
			Set: map[string]string{"X-A": "1"}, Add: map[string]string{"x-a": "2"}, Remove: []string{"X-A"}}}, ""},

		{"invalid name", headers.Config{Request: headers.Rules{Set: map[string]string{"X Tenant": "a"}}},
			`request.set["X Tenant"]: "X Tenant" is not a valid header field name`},
		{"empty name", headers.Config{Response: headers.Rules{Remove: []string{""}}},
			`response.remove[0]: "" is not a valid header field name`},
		{"pseudo-header", headers.Config{Request: headers.Rules{Set: map[string]string{":authority": "a"}}},
			`request.set[":authority"]: ":authority" is not a valid header field name`},
		{"name with a colon", headers.Config{Request: headers.Rules{Add: map[string]string{"X-A:": "a"}}},
			`request.add["X-A:"]: "X-A:" is not a valid header field name`},
		{"value with a newline", headers.Config{Response: headers.Rules{Set: map[string]string{"X-A": "a\r\nX-B: b"}}},
			`response.set["X-A"]: value "a\r\nX-B: b" is not a valid header field value`},
		{"value with a NUL", headers.Config{Request: headers.Rules{Add: map[string]string{"X-A": "a\x00"}}},
			`request.add["X-A"]: value "a\x00" is not a valid header field value`},
		{"one field spelled twice", headers.Config{Request: headers.Rules{Set: map[string]string{"X-A": "1", "x-a": "2"}}},
			`request.set["x-a"]: "X-A" and "x-a" are the same field`},
	}
	for _, name := range []string{"Connection", "content-length", "Transfer-Encoding", "host", "Upgrade", "TE", "Trailer",
		"Keep-Alive", "proxy-connection", "Proxy-Authorization", "Proxy-Authenticate", "X-Request-ID"} {
		tests = append(tests,
			struct {
				name    string
				cfg     headers.Config
				wantErr string
			}{"set " + name, headers.Config{Request: headers.Rules{Set: map[string]string{name: "x"}}},
				fmt.Sprintf("request.set[%q]: %s cannot be edited", name, http.CanonicalHeaderKey(name))},
			struct {
				name    string
				cfg     headers.Config
				wantErr string
			}{"remove " + name, headers.Config{Response: headers.Rules{Remove: []string{"X-Fine", name}}},
				fmt.Sprintf("response.remove[1]: %s cannot be edited", http.CanonicalHeaderKey(name))},
		)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := headers.New(tt.cfg)
			stagetest.CheckNew(t, headers.Name, s, err, tt.wantErr)
			if tt.wantErr == "" {
				require.NoError(t, tt.cfg.Validate())
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	err := headers.Config{
		Request: headers.Rules{
			Set:    map[string]string{"Host": "a", "X-Ok": "fine", "Bad Name": "b"},
			Add:    map[string]string{"X-A": "\n"},
			Remove: []string{"X-Fine", "Transfer-Encoding", "a b"},
		},
		Response: headers.Rules{
			Set:    map[string]string{"X-Request-Id": "1"},
			Remove: []string{"Content-Length"},
		},
	}.Validate()
	require.Error(t, err)
	require.Equal(t, `request.remove[1]: Transfer-Encoding cannot be edited: it is a framing field`+"\n"+
		`request.remove[2]: "a b" is not a valid header field name`+"\n"+
		`request.set["Bad Name"]: "Bad Name" is not a valid header field name`+"\n"+
		`request.set["Host"]: Host cannot be edited: it is not a header field in net/http (the request's Host is set by the rule)`+"\n"+
		`request.add["X-A"]: value "\n" is not a valid header field value`+"\n"+
		`response.remove[0]: Content-Length cannot be edited: it is a framing field`+"\n"+
		`response.set["X-Request-Id"]: X-Request-Id cannot be edited: it is the gateway's own request id`, err.Error())
}

func TestZeroConfigEditsNothing(t *testing.T) {
	t.Parallel()
	s := newStage(t, headers.Config{})
	x := exchange(http.Header{"Cookie": {"a=b"}})
	defer x.Release()
	var seen http.Header
	require.NoError(t, s.Handle(context.Background(), x, answer(&seen, http.Header{"Server": {"x"}})))
	require.Equal(t, http.Header{"Cookie": {"a=b"}}, seen)
	require.Equal(t, http.Header{"Server": {"x"}}, x.Response.Header)

	// Nil headers stay nil: nothing to edit.
	x2 := exchange(nil)
	defer x2.Release()
	require.NoError(t, s.Handle(context.Background(), x2, answer(nil, nil)))
	require.Nil(t, x2.Request.Header)
	require.Nil(t, x2.Response.Header)
}

func TestRequestRules(t *testing.T) {
	t.Parallel()
	s := newStage(t, headers.Config{Request: headers.Rules{
		Set:    map[string]string{"x-tenant": "acme", "X-Empty": ""},
		Add:    map[string]string{"Accept": "application/json", "X-New": "1"},
		Remove: []string{"cookie", "X-Absent"},
	}})
	x := exchange(http.Header{
		"Cookie":   {"a=b", "c=d"},
		"X-Tenant": {"evil", "eviler"},
		"Accept":   {"text/html"},
		"X-Other":  {"kept"},
	})
	defer x.Release()
	var seen http.Header
	require.NoError(t, s.Handle(context.Background(), x, answer(&seen, http.Header{"Cookie": {"resp"}})))
	require.Equal(t, http.Header{
		"X-Tenant": {"acme"},
		"X-Empty":  {""},
		"Accept":   {"text/html", "application/json"},
		"X-New":    {"1"},
		"X-Other":  {"kept"},
	}, seen, "the next stage sees the edited request")
	require.Equal(t, http.Header{"Cookie": {"resp"}}, x.Response.Header, "request rules leave the answer alone")
}

func TestResponseRules(t *testing.T) {
	t.Parallel()
	s := newStage(t, headers.Config{Response: headers.Rules{
		Set:    map[string]string{"cache-control": "no-store"},
		Add:    map[string]string{"Vary": "Origin"},
		Remove: []string{"Server", "x-powered-by"},
	}})
	x := exchange(http.Header{"Server": {"user's"}, "Vary": {"user's"}})
	defer x.Release()
	var seen http.Header
	next := pipeline.HandlerFunc(func(ctx context.Context, x *pipeline.Exchange) error {
		require.NoError(t, answer(&seen, http.Header{
			"Server": {"nginx"}, "X-Powered-By": {"PHP"}, "Cache-Control": {"max-age=60"}, "Vary": {"Accept-Encoding"},
		}).Handle(ctx, x))
		// The answer is edited when next returns, not before.
		require.Equal(t, []string{"nginx"}, x.Response.Header["Server"])
		return nil
	})
	require.NoError(t, s.Handle(context.Background(), x, next))
	require.Equal(t, http.Header{"Server": {"user's"}, "Vary": {"user's"}}, seen, "response rules leave the request alone")
	require.Equal(t, http.Header{
		"Cache-Control": {"no-store"},
		"Vary":          {"Accept-Encoding", "Origin"},
	}, x.Response.Header)
}

// Remove, then set, then add, whatever the order of the settings.
func TestOrder(t *testing.T) {
	t.Parallel()
	rules := headers.Rules{
		Remove: []string{"X-A", "X-B"},
		Set:    map[string]string{"X-A": "set", "X-C": "set"},
		Add:    map[string]string{"X-A": "added", "X-B": "added", "X-C": "added"},
	}
	s := newStage(t, headers.Config{Request: rules, Response: rules})
	x := exchange(http.Header{"X-A": {"old"}, "X-B": {"old"}, "X-C": {"old"}})
	defer x.Release()
	var seen http.Header
	require.NoError(t, s.Handle(context.Background(), x, answer(&seen, http.Header{"X-A": {"old"}, "X-B": {"old"}, "X-C": {"old"}})))
	want := http.Header{"X-A": {"set", "added"}, "X-B": {"added"}, "X-C": {"set", "added"}}
	require.Equal(t, want, seen)
	require.Equal(t, want, x.Response.Header)
}

// Nil header maps are made when there is something to set.
func TestNilHeaders(t *testing.T) {
	t.Parallel()
	rules := headers.Rules{Set: map[string]string{"X-A": "1"}, Remove: []string{"X-B"}}
	s := newStage(t, headers.Config{Request: rules, Response: rules})
	x := exchange(nil)
	defer x.Release()
	require.NoError(t, s.Handle(context.Background(), x, answer(nil, nil)))
	require.Equal(t, http.Header{"X-A": {"1"}}, x.Request.Header)
	require.Equal(t, http.Header{"X-A": {"1"}}, x.Response.Header)
}

// A refusal further down is edited as an answer would be (its Header is
// what the user gets with it), and comes back as it is; a failure that is
// not a refusal carries no fields, and only the request is edited.
func TestNoResponse(t *testing.T) {
	t.Parallel()
	s := newStage(t, headers.Config{Response: headers.Rules{Set: map[string]string{"X-A": "1"}}})
	x := exchange(http.Header{})
	defer x.Release()
	refusal := pipeline.Rejectf(http.StatusForbidden, "no")
	err := s.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return refusal }))
	require.Same(t, refusal, err)
	require.Nil(t, x.Response)
	require.Equal(t, http.Header{"X-A": {"1"}}, refusal.Header, "the refusal gets the answer's fields")

	boom := errors.New("boom")
	err = s.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error { return boom }))
	require.Same(t, boom, err)
	require.Nil(t, x.Response)
}

// An exchange without a request (a TCP exchange, should a gateway run the
// stage on one) has nothing to edit.
func TestNoRequest(t *testing.T) {
	t.Parallel()
	s := newStage(t, headers.Config{Request: headers.Rules{Set: map[string]string{"X-A": "1"}}})
	x := pipeline.Acquire(pipeline.Ingress)
	defer x.Release()
	reached := false
	require.NoError(t, s.Handle(context.Background(), x, pipeline.HandlerFunc(func(context.Context, *pipeline.Exchange) error {
		reached = true
		return nil
	})))
	require.True(t, reached)
}

// The values the stage shares between exchanges cannot be changed through
// one exchange's header by the usual means (Add, Set, append), and adding
// to the user's own values never writes into their slice.
func TestSharedValuesStayIntact(t *testing.T) {
	t.Parallel()
	s := newStage(t, headers.Config{Request: headers.Rules{
		Set: map[string]string{"X-Set": "mine"},
		Add: map[string]string{"X-Add": "mine", "X-Users": "mine"},
	}})
	users := make([]string, 1, 4)
	users[0] = "user's"
	x := exchange(http.Header{"X-Users": users})
	require.NoError(t, s.Handle(context.Background(), x, answer(nil, nil)))
	require.Equal(t, []string{"user's", "mine"}, x.Request.Header["X-Users"])
	require.Equal(t, "", users[:2][1], "the user's slice was not written into")
	// A later stage appends to the shared values.
	x.Request.Header.Add("X-Set", "later")
	x.Request.Header.Add("X-Add", "later")
	x.Request.Header["X-Set"] = append(x.Request.Header["X-Set"], "again")
	x.Release()

	y := exchange(http.Header{})
	defer y.Release()
	var seen http.Header
	require.NoError(t, s.Handle(context.Background(), y, answer(&seen, nil)))
	require.Equal(t, http.Header{"X-Set": {"mine"}, "X-Add": {"mine"}, "X-Users": {"mine"}}, seen)
}

// Many adds to fields with values outgrow the exchange's strings: they
// allocate then, and stay right.
func TestManyAdds(t *testing.T) {
	t.Parallel()
	add := map[string]string{}
	h := http.Header{}
	want := http.Header{}
	for i := range 20 {
		k := fmt.Sprintf("X-F%02d", i)
		add[k] = "new"
		h[k] = []string{"old"}
		want[k] = []string{"old", "new"}
	}
	s := newStage(t, headers.Config{Request: headers.Rules{Add: add}, Response: headers.Rules{Add: add}})
	x := exchange(h)
	defer x.Release()
	var seen http.Header
	require.NoError(t, s.Handle(context.Background(), x, answer(&seen, h.Clone())))
	require.Equal(t, want, seen)
	require.Equal(t, want, x.Response.Header)
}

func TestModule(t *testing.T) {
	t.Parallel()
	require.Equal(t, headers.Name, headers.Module.Name)
	require.Equal(t, pipeline.HTTPProtocols, headers.Module.Protocols)
	require.False(t, headers.Module.Protocols.Has(pipeline.ProtoTCP))

	t.Run("decode fills the config", func(t *testing.T) {
		st, err := headers.Module.New(func(v any) error {
			c, ok := v.(*headers.Config)
			require.True(t, ok, "decode gets a *Config, not %T", v)
			c.Request.Set = map[string]string{"X-Tenant": "acme"}
			return nil
		})
		require.NoError(t, err)
		x := exchange(http.Header{})
		defer x.Release()
		var seen http.Header
		require.NoError(t, st.Handle(context.Background(), x, answer(&seen, nil)))
		require.Equal(t, http.Header{"X-Tenant": {"acme"}}, seen)
	})
	t.Run("no settings: the zero config", func(t *testing.T) {
		st, err := headers.Module.New(func(any) error { return nil })
		require.NoError(t, err)
		require.IsType(t, &headers.Stage{}, st)
	})
	t.Run("decode fails", func(t *testing.T) {
		bad := errors.New(`line 2: field "sett" not found in type headers.Rules`)
		st, err := headers.Module.New(func(any) error { return bad })
		require.ErrorIs(t, err, bad)
		require.EqualError(t, err, "headers: "+bad.Error())
		require.Nil(t, st, "no typed nil in the interface")
	})
	t.Run("invalid config", func(t *testing.T) {
		st, err := headers.Module.New(func(v any) error {
			v.(*headers.Config).Response.Remove = []string{"Content-Length"}
			return nil
		})
		require.EqualError(t, err, "headers: response.remove[0]: Content-Length cannot be edited: it is a framing field")
		require.Nil(t, st, "no typed nil in the interface")
	})
	t.Run("through a registry", func(t *testing.T) {
		var r pipeline.Registry
		require.NoError(t, r.Register(headers.Module))
		st, err := r.Build(headers.Name, nil)
		require.NoError(t, err)
		require.Equal(t, headers.Name, st.(pipeline.Namer).Name())
	})
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	rules := headers.Rules{
		Set:    map[string]string{"X-Set": "v"},
		Add:    map[string]string{"X-Add": "v"},
		Remove: []string{"X-Gone"},
	}
	s := newStage(t, headers.Config{Request: rules, Response: rules})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				x := exchange(http.Header{"X-Add": {fmt.Sprint(g)}, "X-Gone": {"x"}})
				var seen http.Header
				err := s.Handle(context.Background(), x, answer(&seen, http.Header{"X-Add": {fmt.Sprint(i)}, "X-Gone": {"x"}}))
				want := http.Header{"X-Set": {"v"}, "X-Add": {fmt.Sprint(g), "v"}}
				wantResp := http.Header{"X-Set": {"v"}, "X-Add": {fmt.Sprint(i), "v"}}
				got := fmt.Sprint(x.Response.Header)
				ok := err == nil && fmt.Sprint(seen) == fmt.Sprint(want) && got == fmt.Sprint(wantResp)
				// A later stage adds to the shared values.
				x.Request.Header.Add("X-Set", "later")
				x.Response.Header.Add("X-Set", "later")
				x.Release()
				if !ok {
					t.Errorf("got %v, %v, %v", err, seen, got)
					return
				}
			}
		})
	}
	wg.Wait()
}

// A typical stage: a few fields set, added and removed on each side.
func typical(t testing.TB) *headers.Stage {
	return newStage(t, headers.Config{
		Request: headers.Rules{
			Set:    map[string]string{"X-Tenant": "acme", "X-Forwarded-Prefix": "/api"},
			Add:    map[string]string{"X-Trace-Tag": "gw"},
			Remove: []string{"Cookie", "X-Debug"},
		},
		Response: headers.Rules{
			Set:    map[string]string{"Strict-Transport-Security": "max-age=31536000", "X-Frame-Options": "DENY"},
			Add:    map[string]string{"Vary": "Origin"},
			Remove: []string{"Server", "X-Powered-By"},
		},
	})
}

// handleTypical runs s on x as a request with a user's fields and an
// answer with an upstream's; the fields are assigned from prebuilt
// values, so that the run allocates only what the stage does.
func handleTypical(s *headers.Stage, x *pipeline.Exchange, next pipeline.Handler, resp *http.Response) error {
	h := x.Request.Header
	clear(h)
	h["Cookie"], h["Accept"] = cookie, accept
	clear(resp.Header)
	resp.Header["Server"], resp.Header["Content-Type"] = server, contentType
	return s.Handle(context.Background(), x, next)
}

var (
	cookie      = []string{"a=b"}
	accept      = []string{"*/*"}
	server      = []string{"nginx"}
	contentType = []string{"text/plain"}
)

func typicalExchange() (*pipeline.Exchange, pipeline.Handler, *http.Response) {
	x := exchange(http.Header{})
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}}
	next := pipeline.HandlerFunc(func(_ context.Context, x *pipeline.Exchange) error {
		x.Response = resp
		return nil
	})
	return x, next, resp
}

func TestEditsDoNotAllocate(t *testing.T) {
	s := typical(t)
	x, next, resp := typicalExchange()
	defer x.Release()
	require.NoError(t, handleTypical(s, x, next, resp))
	require.Equal(t, http.Header{"Accept": {"*/*"}, "X-Tenant": {"acme"}, "X-Forwarded-Prefix": {"/api"}, "X-Trace-Tag": {"gw"}}, x.Request.Header)
	require.Equal(t, http.Header{"Content-Type": {"text/plain"}, "Strict-Transport-Security": {"max-age=31536000"},
		"X-Frame-Options": {"DENY"}, "Vary": {"Origin"}}, resp.Header)
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		if err := handleTypical(s, x, next, resp); err != nil {
			panic(err)
		}
	}))
}

func BenchmarkTypical(b *testing.B) {
	s := typical(b)
	x, next, resp := typicalExchange()
	defer x.Release()
	b.ReportAllocs()
	for b.Loop() {
		if err := handleTypical(s, x, next, resp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTypicalParallel(b *testing.B) {
	s := typical(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x, next, resp := typicalExchange()
		defer x.Release()
		for pb.Next() {
			if err := handleTypical(s, x, next, resp); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkZero is an instance with no rules: the cost of listing the
// stage on a rule and configuring nothing.
func BenchmarkZero(b *testing.B) {
	s := newStage(b, headers.Config{})
	x, next, _ := typicalExchange()
	defer x.Release()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Handle(ctx, x, next); err != nil {
			b.Fatal(err)
		}
	}
}
