package route_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/route"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

var testRules = []rules.Rule{
	{ID: "site", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", Upstream: "http://127.0.0.1:3000"},
	{ID: "api", Client: "laptop", Direction: rules.Reverse, Host: "app.example.test", PathPrefix: "/api", Upstream: "http://127.0.0.1:8081"},
	{ID: "other-site", Client: "desktop", Direction: rules.Reverse, Host: "other.example.test", Upstream: "http://127.0.0.1:3001"},
	{ID: "fwd-db", Client: "laptop", Direction: rules.Forward, Listen: "127.0.0.1:9000", Upstream: "http://10.0.0.5:5432"},
}

func newStore(t *testing.T, rs []rules.Rule) *rules.Store {
	t.Helper()
	tab, err := rules.NewTable(1, rs)
	require.NoError(t, err)
	var s rules.Store
	s.Swap(tab)
	return &s
}

func newRouter(t *testing.T, s *rules.Store, egress rules.Direction) *route.Router {
	t.Helper()
	r, err := route.New(route.Config{Rules: s, Egress: egress})
	require.NoError(t, err)
	return r
}

// next records the rule it saw, proving the chain went on.
type next struct {
	called bool
	rule   *rules.Rule
}

func (n *next) Handle(_ context.Context, x *pipeline.Exchange) error {
	n.called = true
	n.rule = x.Rule
	return nil
}

// requireNotFound checks that the router refused x with a 404 naming the
// what (host, rule id) that matched nothing, set no rule and stopped the
// chain.
func requireNotFound(t *testing.T, err error, x *pipeline.Exchange, n *next, what, name string) {
	t.Helper()
	var rj *pipeline.Reject
	require.ErrorAs(t, err, &rj)
	require.Equal(t, http.StatusNotFound, rj.Status)
	require.Contains(t, rj.Message, `"`+name+`"`, "the answer names the %s", what)
	require.False(t, n.called)
	require.Nil(t, x.Rule)
}

func TestNew(t *testing.T) {
	t.Parallel()
	s := newStore(t, testRules)
	tests := []struct {
		name    string
		cfg     route.Config
		wantErr string
	}{
		{"reverse", route.Config{Rules: s, Egress: rules.Reverse}, ""},
		{"forward", route.Config{Rules: s, Egress: rules.Forward}, ""},
		{"empty store is fine", route.Config{Rules: &rules.Store{}, Egress: rules.Forward}, ""},
		{"no store", route.Config{Egress: rules.Reverse}, "rule store is required"},
		{"no direction", route.Config{Rules: s}, "neither forward nor reverse"},
		{"bad direction", route.Config{Rules: s, Egress: "sideways"}, `"sideways"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := route.New(tt.cfg)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Nil(t, r)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "route", r.Name())
		})
	}
}

func TestIngress(t *testing.T) {
	t.Parallel()
	router := newRouter(t, newStore(t, testRules), rules.Reverse)
	tests := []struct {
		name     string
		listener string
		host     string
		target   string
		wantRule string // "" means 404
	}{
		{"host root", "", "app.example.test", "/", "site"},
		{"host with port and case", "", "App.Example.Test:8443", "/index.html", "site"},
		{"longest prefix wins", "", "app.example.test", "/api/users?id=1", "api"},
		{"prefix on a segment boundary only", "", "app.example.test", "/apix", "site"},
		{"other client's host", "", "other.example.test", "/", "other-site"},
		{"forward listener, any host", rules.ListenerKey(rules.Forward, "127.0.0.1:9000"), "whatever.test", "/", "fwd-db"},
		{"unknown host", "", "nope.example.test", "/", ""},
		{"known host on a forward listener", rules.ListenerKey(rules.Forward, "127.0.0.1:9000"), "app.example.test", "/", "fwd-db"},
		{"unknown listener", rules.ListenerKey(rules.Forward, "127.0.0.1:9999"), "app.example.test", "/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			x := pipeline.Acquire(pipeline.Ingress)
			defer x.Release()
			x.Listener = tt.listener
			x.Request = httptest.NewRequest(http.MethodGet, tt.target, nil)
			x.Request.Host = tt.host
			n := &next{}
			err := router.Handle(context.Background(), x, n)
			if tt.wantRule == "" {
				requireNotFound(t, err, x, n, "host", tt.host)
				return
			}
			require.NoError(t, err)
			require.True(t, n.called)
			require.Equal(t, tt.wantRule, n.rule.ID)
		})
	}
}

func TestEgress(t *testing.T) {
	t.Parallel()
	store := newStore(t, testRules)
	tests := []struct {
		name     string
		egress   rules.Direction
		ruleID   string
		client   string
		wantRule bool
	}{
		{"own reverse rule on the client", rules.Reverse, "site", "laptop", true},
		{"own forward rule on the server", rules.Forward, "fwd-db", "laptop", true},
		{"wrong direction: forward rule on the client", rules.Reverse, "fwd-db", "laptop", false},
		{"wrong direction: reverse rule on the server", rules.Forward, "site", "laptop", false},
		{"other client's rule", rules.Forward, "fwd-db", "desktop", false},
		{"other client's reverse rule", rules.Reverse, "other-site", "laptop", false},
		{"unknown id", rules.Reverse, "gone", "laptop", false},
		{"empty id", rules.Reverse, "", "laptop", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			router := newRouter(t, store, tt.egress)
			x := pipeline.Acquire(pipeline.Egress)
			defer x.Release()
			x.Head.RuleID = tt.ruleID
			x.Conn = &pipeline.Conn{ClientID: tt.client}
			n := &next{}
			err := router.Handle(context.Background(), x, n)
			if !tt.wantRule {
				requireNotFound(t, err, x, n, "rule id", tt.ruleID)
				return
			}
			require.NoError(t, err)
			require.True(t, n.called)
			require.Equal(t, tt.ruleID, n.rule.ID)
			require.Same(t, store.Load().ByID(tt.ruleID), x.Rule)
		})
	}
}

func TestNoTableRoutesNothing(t *testing.T) {
	t.Parallel()
	router := newRouter(t, &rules.Store{}, rules.Reverse)

	in := pipeline.Acquire(pipeline.Ingress)
	defer in.Release()
	in.Request = httptest.NewRequest(http.MethodGet, "/", nil)
	n := &next{}
	err := router.Handle(context.Background(), in, n)
	status, _, _ := pipeline.Answer(err)
	require.Equal(t, http.StatusNotFound, status)

	eg := pipeline.Acquire(pipeline.Egress)
	defer eg.Release()
	eg.Head.RuleID = "site"
	err = router.Handle(context.Background(), eg, n)
	status, _, _ = pipeline.Answer(err)
	require.Equal(t, http.StatusNotFound, status)
	require.False(t, n.called)
}

func TestSwappedTableTakesEffect(t *testing.T) {
	t.Parallel()
	store := newStore(t, testRules[:1])
	router := newRouter(t, store, rules.Reverse)
	try := func(target string) (string, error) {
		x := pipeline.Acquire(pipeline.Ingress)
		defer x.Release()
		x.Request = httptest.NewRequest(http.MethodGet, target, nil)
		x.Request.Host = "app.example.test"
		n := &next{}
		if err := router.Handle(context.Background(), x, n); err != nil {
			return "", err
		}
		return n.rule.ID, nil
	}
	id, err := try("/api/v1")
	require.NoError(t, err)
	require.Equal(t, "site", id)

	tab, err := rules.NewTable(2, testRules)
	require.NoError(t, err)
	store.Swap(tab)
	id, err = try("/api/v1")
	require.NoError(t, err)
	require.Equal(t, "api", id, "the router reads the store on every request")

	empty, err := rules.NewTable(3, nil)
	require.NoError(t, err)
	store.Swap(empty)
	_, err = try("/api/v1")
	status, _, _ := pipeline.Answer(err)
	require.Equal(t, http.StatusNotFound, status)
}
