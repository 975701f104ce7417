package admin

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// The web page (ui/): the dashboard and the request inspector, served
// under /ui/ from files embedded in the binary (no CDN, nothing fetched
// elsewhere). The page is static and holds nothing secret, so it is
// served without the token; it asks for the token and sends it with every
// call to the endpoints that hold the data (GET /dashboard, /inspect/...),
// which need it as every endpoint does.
//
//go:embed ui
var uiFiles embed.FS

// uiHandler serves the page's files.
func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic("admin: the embedded ui directory is missing: " + err.Error())
	}
	files := http.StripPrefix("/ui/", http.FileServer(http.FS(sub)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ui" {
			http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
			return
		}
		// The page runs no script but its own.
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		w.Header().Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
}

// uiPath says whether path is one of the page's files.
func uiPath(path string) bool { return path == "/ui" || strings.HasPrefix(path, "/ui/") }
