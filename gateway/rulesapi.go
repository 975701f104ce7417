package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/qtunnel/qtunnel/control"
	"github.com/qtunnel/qtunnel/internal/httpx"
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
// version, and is kept: in the server's state directory, merged with the
// configuration file's rules at every reload and restart by the rule
// control/overlay.go documents (the API's latest change of an id wins; a
// change that no longer fits the file is listed under "conflicts" and
// logged, not dropped). GET /rules says where each rule comes from
// ("source": "file" or "api").
type rulesAPI struct {
	store    *control.RuleStore
	writable atomic.Bool // an admin token is set (changes live with admin.token)
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
		if !a.writable.Load() {
			writeErr(w, http.StatusForbidden, "the rules API is read-only: set admin.token to change rules over it")
			return
		}
		h(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) { httpx.WriteJSON(w, status, v) }

func writeErr(w http.ResponseWriter, status int, format string, args ...any) {
	httpx.WriteJSONError(w, status, fmt.Sprintf(format, args...))
}

func (a *rulesAPI) list(w http.ResponseWriter, _ *http.Request) {
	v := viewOf(a.store.Table())
	sources := a.store.Sources()
	for i := range v.Rules {
		v.Rules[i].Source = sources[v.Rules[i].ID]
	}
	type conflict struct {
		ID      string      `json:"id"`
		Rule    *rules.Rule `json:"rule,omitempty"`
		Deleted bool        `json:"deleted,omitempty"`
		Error   string      `json:"error"`
	}
	out := struct {
		tableView
		Conflicts []conflict `json:"conflicts,omitempty"`
	}{tableView: v}
	for _, c := range a.store.Conflicts() {
		out.Conflicts = append(out.Conflicts, conflict{ID: c.Change.ID, Rule: c.Change.Rule, Deleted: c.Change.Rule == nil, Error: c.Err.Error()})
	}
	writeJSON(w, http.StatusOK, out)
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
	case errors.Is(err, control.ErrNotSaved):
		writeErr(w, http.StatusInternalServerError, "%v (version %d is in force until the next restart)", err, t.Version())
	case err != nil && !errors.Is(err, control.ErrUnchanged):
		writeErr(w, http.StatusBadRequest, "%v", err)
	default:
		writeJSON(w, http.StatusOK, map[string]any{"version": t.Version(), "hash": t.HashHex(), "changed": err == nil})
	}
}
