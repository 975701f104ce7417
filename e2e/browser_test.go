package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/internal/e2etest"
)

// browser returns a headless Chromium context, or skips the test saying
// why when no Chromium is installed (.ci/run installs Debian's).
func browser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it): the browser tests need a real browser")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	require.NoError(t, chromedp.Do(ctx), "start Chromium")
	return ctx
}

// screenshot saves the page as name.png in $QTUNNEL_SCREENSHOTS (make
// screenshots sets it to docs/screenshots, which the README shows), or in
// the test's temporary directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("QTUNNEL_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644))
}

// waitText polls the page until the element sel's text contains want.
func waitText(t *testing.T, ctx context.Context, sel, want string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	var text string
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		got, err := chromedp.Run(qctx, chromedp.Text(chromedp.CSS(sel)))
		cancel()
		if err == nil {
			text = got
		}
		if err == nil && strings.Contains(text, want) {
			return text
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within %v; text: %q (err %v)", sel, want, d, text, err)
		}
		tick := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			tick.Stop()
			t.Fatalf("browser gone: %v", ctx.Err())
		case <-tick.C:
		}
	}
}

// TestDashboardAndInspectorInABrowser drives the admin pages in a real
// headless Chromium: the server's dashboard refuses a wrong admin token,
// then lists the connected client and its declared rule; a request made
// with curl appears in the client's inspector; Replay reaches the upstream
// a second time. It saves the screenshots the README shows.
func TestDashboardAndInspectorInABrowser(t *testing.T) {
	ctx := browser(t)
	curl, err := exec.LookPath("curl")
	require.NoError(t, err, "curl is installed by .ci/run")

	var hits atomic.Int64
	app := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"order": 42, "path": %q}`, r.URL.Path)
	}))
	appPort := app[strings.LastIndexByte(app, ':')+1:]
	dir := t.TempDir()
	tunnelAddr, public := e2etest.FreeAddr(t, "udp"), e2etest.FreeAddr(t, "tcp")
	serverAdmin, inspectAddr := e2etest.FreeAddr(t, "tcp"), e2etest.FreeAddr(t, "tcp")
	initp := start(t, "init", "init", dir, "--server-address", tunnelAddr, "--public-http", public)
	require.Zero(t, initp.wait(30*time.Second))
	const adminToken = "dashboard-admin-token"
	cfgPath := filepath.Join(dir, "server.yaml")
	cfg, err := os.ReadFile(cfgPath)
	require.NoError(t, err)
	writeFile(t, cfgPath, string(cfg)+fmt.Sprintf("\nadmin:\n  listen: %q\n  token: %q\n", serverAdmin, adminToken))
	srv := start(t, "server", "server", cfgPath)
	srv.waitFor(`server started`, 30*time.Second)
	exp := start(t, "expose", "expose", "http", appPort, "--config", filepath.Join(dir, "client.yaml"), "--inspect-addr", inspectAddr)
	url := exp.waitFor(`Forwarding\s+(http://\S+)\s+->`, 30*time.Second)[1]
	exp.waitFor(`Inspector\s+http://`+inspectAddr+`/ui/#inspect`, 5*time.Second)

	// The server's dashboard: a wrong token is refused.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("http://"+serverAdmin+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`))))
	waitText(t, ctx, "#login-error", "refused this token", 10*time.Second)
	dashVisible, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!document.querySelector("#dashboard").hidden`))
	require.NoError(t, err)
	assert.False(t, dashVisible, "nothing is shown without the token")
	screenshot(t, ctx, "dashboard-refused")

	// The right one opens it: the client, connected, and its rule.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#token"), adminToken),
		chromedp.Click(chromedp.CSS(`#login button[type="submit"]`))))
	waitText(t, ctx, "#clients tbody", "client1", 10*time.Second)
	waitText(t, ctx, "#clients tbody", "yes", 10*time.Second)
	rules := waitText(t, ctx, "#rules tbody", "client1.http-"+appPort, 10*time.Second)
	assert.Contains(t, rules, "declared", "the rule's source")
	assert.Contains(t, rules, "client1.localhost/")

	// A request with curl; it shows in the server's traffic.
	resolve := "client1.localhost:" + portOfURL(t, url) + ":127.0.0.1"
	out, err := exec.Command(curl, "-sS", "--resolve", resolve, "-H", "Authorization: Bearer secret-of-the-user", url+"orders/42").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), `"order": 42`)
	waitText(t, ctx, `#rules tbody tr[data-rule="client1.http-`+appPort+`"] td:nth-child(8)`, "1", 10*time.Second)
	screenshot(t, ctx, "dashboard")

	// The client's inspector has it, live.
	sent := time.Now()
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("http://"+inspectAddr+"/ui/#inspect"),
		chromedp.WaitVisible(chromedp.CSS("#requests"))))
	waitText(t, ctx, "#requests", "/orders/42", 10*time.Second)
	t.Logf("the curl request was listed %v after the page opened", time.Since(sent).Round(time.Millisecond))
	// A second request, with the page open: it arrives on the live events.
	sent = time.Now()
	out, err = exec.Command(curl, "-sS", "--resolve", resolve, url+"live").CombinedOutput()
	require.NoError(t, err, "%s", out)
	waitText(t, ctx, "#requests", "/live", 10*time.Second)
	t.Logf("a request made with the page open was listed %v after curl returned", time.Since(sent).Round(time.Millisecond))
	assert.EqualValues(t, 2, hits.Load())

	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#requests li:last-child`))))
	detail := waitText(t, ctx, "#detail", "/orders/42", 5*time.Second)
	assert.Contains(t, detail, "*** (25 bytes)", "the Authorization field is masked")
	assert.NotContains(t, detail, "secret-of-the-user")
	assert.Contains(t, detail, "egress", "stage timings")
	screenshot(t, ctx, "inspector")

	// Replay: the upstream sees the request a second time.
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#replay"))))
	waitText(t, ctx, "#replay-result", "Replayed: 200", 10*time.Second)
	assert.EqualValues(t, 3, hits.Load(), "the replay reached the upstream")
	waitText(t, ctx, "#requests", "(replay)", 10*time.Second)

	// On a phone screen.
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(390, 844), chromedp.Navigate("http://"+serverAdmin+"/ui/")))
	waitText(t, ctx, "#clients tbody", "client1", 10*time.Second)
	screenshot(t, ctx, "dashboard-phone")

	exp.signal(syscall.SIGINT)
	assert.Zero(t, exp.wait(30*time.Second))
}

func portOfURL(t *testing.T, raw string) string {
	t.Helper()
	u, err := neturl.Parse(raw)
	require.NoError(t, err)
	return u.Port()
}
