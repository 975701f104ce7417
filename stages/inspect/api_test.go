package inspect_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/pipeline"
	"github.com/qtunnel/qtunnel/pipeline/pipelinetest"
	"github.com/qtunnel/qtunnel/stages/inspect"
)

func TestMain(m *testing.M) { pipelinetest.VerifyNoLeaks(m) }

func serveThrough(t *testing.T, in *inspect.Inspector, body string) {
	t.Helper()
	chain, err := pipeline.New(context.Background(), []pipeline.Stage{in, pipelinetest.Answer{Body: "ok"}})
	require.NoError(t, err)
	_, err = pipelinetest.Serve(chain, httptest.NewRequest(http.MethodPost, "http://app.test/x", strings.NewReader(body)))
	require.NoError(t, err)
}

func TestAPIRefusals(t *testing.T) {
	in := inspect.New(inspect.Config{BodyCapture: 4})
	serveThrough(t, in, "a body longer than the capture")
	var sent []string
	replay := func(_ context.Context, _ string, r *http.Request) (*http.Response, error) {
		b, _ := io.ReadAll(r.Body)
		sent = append(sent, string(b))
		return &http.Response{StatusCode: http.StatusAccepted, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("done"))}, nil
	}
	srv := httptest.NewServer(in.Handler("/inspect", replay))
	defer srv.Close()
	post := func(path, body string) (int, string) {
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	seq := "1"
	code, body := post("/inspect/requests/"+seq+"/replay", "")
	assert.Equal(t, http.StatusConflict, code, "a body not kept whole is not replayed as it was")
	assert.Contains(t, body, "body_capture")
	code, _ = post("/inspect/requests/"+seq+"/replay", `{"body":"new"}`)
	assert.Equal(t, http.StatusOK, code, "with a body given, it is")
	assert.Equal(t, []string{"new"}, sent)
	code, _ = post("/inspect/requests/x/replay", "")
	assert.Equal(t, http.StatusBadRequest, code)
	code, _ = post("/inspect/requests/"+seq+"/replay", `{"nope":1}`)
	assert.Equal(t, http.StatusBadRequest, code, "unknown edit fields are refused")
	code, _ = post("/inspect/requests/77/replay", "")
	assert.Equal(t, http.StatusNotFound, code)

	none := httptest.NewServer(in.Handler("/inspect", nil))
	defer none.Close()
	resp, err := http.Post(none.URL+"/inspect/requests/1/replay", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotImplemented, resp.StatusCode)
}

func TestEventsEndWithEndEvents(t *testing.T) {
	in := inspect.New(inspect.Config{})
	srv := httptest.NewServer(in.Handler("/inspect", nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/inspect/events")
	require.NoError(t, err)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	_, err = r.ReadString('\n')
	require.NoError(t, err)
	serveThrough(t, in, "")
	for {
		line, err := r.ReadString('\n')
		require.NoError(t, err)
		if strings.HasPrefix(line, "data: ") {
			assert.Contains(t, line, `"uri":"/x"`)
			break
		}
	}
	in.EndEvents()
	_, err = io.ReadAll(r)
	require.NoError(t, err, "the stream ends cleanly")
}
