package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/rules"
)

// rulesAPI serves the server's rules over the admin listener:
//
//	GET    /rules        the rules in force, their version and hash
//	GET    /rules/{id}   one rule
//	PUT    /rules/{id}   add or replace a rule (JSON body)
//	DELETE /rules/{id}   remove a rule
//
// Changes need the admin token: without one configured the API is
// read-only. A refused change answers 400 (or 404) with {"error": "..."}
// and leaves the rules in force alone; an accepted one answers the new
// version. Changes live in memory: a reload of the configuration file
// replaces them with the file's rules.
type rulesAPI struct {
	store    *control.RuleStore
	writable bool
}

func (a *rulesAPI) register(with func(pattern string, h http.Handler)) {
	with("GET /rules", http.HandlerFunc(a.list))
	with("GET /rules/{id}", http.HandlerFunc(a.get))
	with("PUT /rules/{id}", a.change(a.put))
	with("DELETE /rules/{id}", a.change(a.del))
}

// change refuses h's change when the API is read-only.
func (a *rulesAPI) change(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.writable {
			writeErr(w, http.StatusForbidden, "the rules API is read-only: set admin.token to change rules over it")
			return
		}
		h(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (a *rulesAPI) list(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, viewOf(a.store.Table()))
}

func (a *rulesAPI) get(w http.ResponseWriter, r *http.Request) {
	rule := a.store.Table().ByID(r.PathValue("id"))
	if rule == nil {
		writeErr(w, http.StatusNotFound, "no rule %q", r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, rule)
}

func (a *rulesAPI) put(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	var rule rules.Rule
	if err := dec.Decode(&rule); err != nil {
		writeErr(w, http.StatusBadRequest, "rule body: %v", err)
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		writeErr(w, http.StatusBadRequest, "rule body: one JSON object expected, and something follows it")
		return
	}
	if rule.ID == "" {
		rule.ID = id
	}
	if rule.ID != id {
		writeErr(w, http.StatusBadRequest, "the body's id %q is not the path's %q", rule.ID, id)
		return
	}
	t, err := a.store.Put(rule)
	a.answer(w, t, err)
}

func (a *rulesAPI) del(w http.ResponseWriter, r *http.Request) {
	t, err := a.store.Delete(r.PathValue("id"))
	a.answer(w, t, err)
}

func (a *rulesAPI) answer(w http.ResponseWriter, t *rules.Table, err error) {
	switch {
	case errors.Is(err, control.ErrNoRule):
		writeErr(w, http.StatusNotFound, "%v", err)
	case err != nil && !errors.Is(err, control.ErrUnchanged):
		writeErr(w, http.StatusBadRequest, "%v", err)
	default:
		writeJSON(w, http.StatusOK, map[string]any{"version": t.Version(), "hash": t.HashHex(), "changed": err == nil})
	}
}
