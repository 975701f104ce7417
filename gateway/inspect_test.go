package gateway_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/rules"
	"github.com/qtunnel/qtunnel/stages/inspect"
)

// TestInspectorShowsAndReplaysRequests: with the client's inspector on,
// each request of a rule is listed with its fields (secrets masked), body
// previews and stage timings, arrives on the live events at once, and a
// replay reaches the upstream a second time, edited if asked.
func TestInspectorShowsAndReplaysRequests(t *testing.T) {
	var hits atomic.Int32
	var lastBody atomic.Value
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		lastBody.Store(r.Method + " " + r.URL.RequestURI() + " " + string(b) + " auth=" + r.Header.Get("Authorization"))
		w.Header().Set("Set-Cookie", "session=abc")
		_, _ = io.WriteString(w, strings.Repeat("answer ", 1000))
	}))
	p := startPair(t, pairOpts{
		rules: []rules.Rule{reverseRule("web", appHost, up.URL), forwardRule("fwd", "127.0.0.1:0", up.URL)},
		clientMutate: func(c *config.Client) {
			c.Admin.Listen = "127.0.0.1:0"
			c.Inspect = config.Inspect{Enabled: true, Entries: 3, BodyCapture: 64}
		},
	})
	base := "http://" + p.Client.AdminAddr().String() + "/inspect"

	// The live events, from before the request.
	events, err := http.Get(base + "/events")
	require.NoError(t, err)
	defer events.Body.Close()
	require.Equal(t, "text/event-stream", events.Header.Get("Content-Type"))
	lines := bufio.NewReader(events.Body)
	_, err = lines.ReadString('\n') // the opening comment: subscribed
	require.NoError(t, err)

	req := newRequest(t, http.MethodPost, p.publicURL("/orders?id=7"), appHost, strings.NewReader(`{"item":"tea"}`))
	req.Header.Set("Authorization", "Bearer top-secret")
	resp, body := do(t, h1Client(t), req)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, body, 7000)

	var live inspect.Entry
	for {
		line, err := lines.ReadString('\n')
		require.NoError(t, err)
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			require.NoError(t, json.Unmarshal([]byte(data), &live))
			break
		}
	}
	assert.Equal(t, "web", live.Rule)
	assert.Equal(t, http.MethodPost, live.Method)
	assert.Equal(t, "/orders?id=7", live.URI)
	assert.Equal(t, http.StatusOK, live.Status)
	assert.Equal(t, []string{"*** (17 bytes)"}, live.RequestHeader["Authorization"], "secrets are masked")
	assert.Equal(t, []string{"*** (11 bytes)"}, live.ResponseHeader["Set-Cookie"])
	assert.NotContains(t, fmtJSON(t, live), "top-secret")
	assert.Equal(t, `{"item":"tea"}`, string(live.RequestBody.Preview))
	assert.False(t, live.RequestBody.Truncated)
	assert.EqualValues(t, 7000, live.ResponseBody.Size)
	assert.Len(t, live.ResponseBody.Preview, 64, "previews stop at body_capture")
	assert.True(t, live.ResponseBody.Truncated)
	var stages []string
	for _, s := range live.Stages {
		stages = append(stages, s.Stage)
	}
	assert.Contains(t, stages, "egress", "the stages inside the inspector are timed")
	assert.Contains(t, stages, "route")
	assert.EqualValues(t, 1, hits.Load())

	// The list has it too.
	var list []inspect.Entry
	getJSON(t, base+"/requests?rule=web", &list)
	require.Len(t, list, 1)
	assert.Equal(t, live.Seq, list[0].Seq)

	// Replay, as it was: the upstream sees it a second time, with the
	// unmasked field.
	var replayed inspect.Entry
	postJSON(t, base+"/requests/"+itoa(live.Seq)+"/replay", "", http.StatusOK, &replayed)
	assert.EqualValues(t, 2, hits.Load())
	assert.Equal(t, `POST /orders?id=7 {"item":"tea"} auth=Bearer top-secret`, lastBody.Load())
	assert.Equal(t, live.Seq, replayed.Replay)
	assert.Equal(t, http.StatusOK, replayed.Status)

	// Edited.
	postJSON(t, base+"/requests/"+itoa(live.Seq)+"/replay", `{"method":"PUT","body":"{\"item\":\"coffee\"}","header":{"Authorization":[]}}`, http.StatusOK, &replayed)
	assert.EqualValues(t, 3, hits.Load())
	assert.Equal(t, `PUT /orders?id=7 {"item":"coffee"} auth=`, lastBody.Load())

	// A forward rule's request is kept too, and replays through the
	// tunnel.
	resp, _ = get(t, h1Client(t), p.forwardURL(t, "127.0.0.1:0", "/f"), "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	getJSON(t, base+"/requests?rule=fwd", &list)
	require.Len(t, list, 1)
	postJSON(t, base+"/requests/"+itoa(list[0].Seq)+"/replay", "", http.StatusOK, &replayed)
	assert.EqualValues(t, 5, hits.Load())

	// The ring is bounded: 3 entries per rule.
	for range 5 {
		resp, _ := get(t, h1Client(t), p.publicURL("/again"), appHost)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	eventually(t, 5*time.Second, func() bool {
		getJSON(t, base+"/requests?rule=web", &list)
		return len(list) == 3 && list[0].URI == "/again"
	}, "the web rule keeps its last 3 requests")

	postJSON(t, base+"/requests/999999/replay", "", http.StatusNotFound, nil)
}

func fmtJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

func postJSON(t *testing.T, url, body string, status int, v any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	require.Equal(t, status, resp.StatusCode, string(b))
	if v != nil {
		require.NoError(t, json.Unmarshal(b, v))
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
