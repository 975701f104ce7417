package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
)

// apiRules are the rules in force when a fuzzed PUT /rules/{id} arrives.
var apiRules = []rules.Rule{
	{ID: "web", Client: "c1", Direction: rules.Reverse, Host: "app.example.test", Upstream: "http://127.0.0.1:3000"},
	{ID: "db", Client: "c1", Direction: rules.Forward, Protocol: rules.ProtoTCP, Listen: "127.0.0.1:6000", Upstream: "127.0.0.1:5432"},
}

// apiCall serves one request with h and returns the status and the body,
// which must be JSON.
func apiCall(t *testing.T, h http.HandlerFunc, method, id string, body []byte) (int, map[string]any, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, "/rules/x", bytes.NewReader(body))
	req.SetPathValue("id", id)
	rec := httptest.NewRecorder()
	h(rec, req)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	raw := rec.Body.Bytes()
	var v map[string]any
	require.NoError(t, json.Unmarshal(raw, &v), "the answer is JSON: %s", raw)
	return rec.Code, v, raw
}

// FuzzRulesAPIPut sends a fuzzed body to PUT /rules/{id} (the admin API's
// decode and validate path, without a listener). The answer is 200 or 400
// with a JSON body. A refused change leaves the rules in force as they
// were. An accepted one installs the body's rule, normalised, under the
// path's id at the next version and keeps every other rule; GET gives it
// back as JSON that a second PUT accepts as no change.
func FuzzRulesAPIPut(f *testing.F) {
	f.Add("api", []byte(`{"client":"c1","direction":"reverse","host":"App.Example.Test.","path_prefix":"api","upstream":"http://127.0.0.1:8081"}`))
	f.Add("web", []byte(`{"id":"web","client":"c1","direction":"reverse","host":"app.example.test","upstreams":["http://a:1","http://b:2"],"load_balance":"least_requests","retries":2,"health_check":{"path":"/healthz","interval":"5s"}}`))
	f.Add("web", []byte(`{"id":"web","client":"c1","direction":"reverse","host":"app.example.test","upstream":"http://127.0.0.1:3000"}`))
	f.Add("x", []byte(`{"id":"y","client":"c1","direction":"reverse","host":"h","upstream":"http://a:1"}`))
	f.Add("x", []byte(`{"id":"x","client":"c2","direction":"reverse","host":"app.example.test","upstream":"http://a:1"}`))
	f.Add("x", []byte(`{"id":"x","colour":"blue"}`))
	f.Add("fwd", []byte(`{"client":"c1","direction":"forward","protocol":"tcp","listen":"127.0.0.1:6000","upstream":"tcp://db:5432"} trailing`))
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		store, err := control.NewRuleStore(apiRules, 4)
		require.NoError(t, err)
		a := &rulesAPI{store: store}
		a.writable.Store(true)
		before := store.Table()

		status, v, raw := apiCall(t, a.put, http.MethodPut, id, body)
		after := store.Table()
		if status != http.StatusOK {
			require.Equal(t, http.StatusBadRequest, status, "%s", raw)
			msg, _ := v["error"].(string)
			require.NotEmpty(t, msg, "a refusal says why: %s", raw)
			require.Same(t, before, after, "a refused change changed the rules")
			return
		}
		require.Equal(t, after.HashHex(), v["hash"])
		require.Equal(t, float64(after.Version()), v["version"])
		if v["changed"] == false {
			require.Same(t, before, after, "an unchanged PUT installed a table")
			return
		}
		require.Equal(t, true, v["changed"])
		require.Equal(t, before.Version()+1, after.Version())

		// The body's rule, decoded as the handler does, is in force.
		var want rules.Rule
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		require.NoError(t, dec.Decode(&want))
		if want.ID == "" {
			want.ID = id
		}
		want.Normalize()
		got := after.ByID(id)
		require.NotNil(t, got, "the rule put is not in force")
		require.Equal(t, want, *got)
		for _, r := range before.Rules() {
			if r.ID != id {
				require.Equal(t, &r, after.ByID(r.ID), "rule %q was changed by a PUT of %q", r.ID, id)
			}
		}
		added := 1
		if before.ByID(id) != nil {
			added = 0 // replaced
		}
		require.Len(t, after.Rules(), len(before.Rules())+added)

		// What GET shows, PUT takes back as it is.
		status, _, raw = apiCall(t, a.get, http.MethodGet, id, nil)
		require.Equal(t, http.StatusOK, status)
		status, v, _ = apiCall(t, a.put, http.MethodPut, id, raw)
		require.Equal(t, http.StatusOK, status, "GET's answer %s is refused by PUT", raw)
		require.Equal(t, false, v["changed"], "GET's answer is not the rule in force")
		require.Same(t, after, store.Table())
	})
}

// The handler reads at most 1 MiB of a body: a longer one is cut there and
// fails to decode, whatever follows.
func TestRulesAPIPutBodyLimit(t *testing.T) {
	t.Parallel()
	store, err := control.NewRuleStore(apiRules, 4)
	require.NoError(t, err)
	a := &rulesAPI{store: store}
	a.writable.Store(true)
	before := store.Table()
	body := `{"client":"c1","direction":"reverse","host":"h","upstream":"http://a:1","host_header":"` + strings.Repeat("x", 1<<20) + `"}`
	status, v, _ := apiCall(t, a.put, http.MethodPut, "big", []byte(body))
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, v["error"], "rule body: unexpected EOF")
	require.Same(t, before, store.Table())
}

// A PUT body is one JSON object: anything after it is refused, not
// silently dropped.
func TestRulesAPIPutRefusesTrailingData(t *testing.T) {
	t.Parallel()
	store, err := control.NewRuleStore(apiRules, 4)
	require.NoError(t, err)
	a := &rulesAPI{store: store}
	a.writable.Store(true)
	before := store.Table()
	for _, trailing := range []string{` trailing`, ` {"id":"other"}`, `]`} {
		body := `{"client":"c1","direction":"reverse","host":"new.test","upstream":"http://a:1"}` + trailing
		status, v, _ := apiCall(t, a.put, http.MethodPut, "new", []byte(body))
		require.Equal(t, http.StatusBadRequest, status, trailing)
		require.Contains(t, v["error"], "one JSON object expected", trailing)
		require.Same(t, before, store.Table())
	}
	status, _, _ := apiCall(t, a.put, http.MethodPut, "new", []byte(`{"client":"c1","direction":"reverse","host":"new.test","upstream":"http://a:1"}`+"\n"))
	require.Equal(t, http.StatusOK, status, "a trailing newline is fine")
}
