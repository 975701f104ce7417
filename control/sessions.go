package control

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtunnel/qtunnel/pipeline"
)

// Session is the server's memory of one client across its connections.
type Session struct {
	ClientID string
	ID       string
	Created  time.Time

	lastSeen atomic.Int64 // unix nanoseconds
	conn     atomic.Pointer[pipeline.Conn]
	applied  atomic.Pointer[AppliedState] // the last rule set the client applied
	refused  atomic.Pointer[AppliedState] // the last one it refused, until one applies
}

// AppliedState is what a client last reported applying.
type AppliedState struct {
	Version uint64
	Hash    string
	Error   string
	At      time.Time
}

// Conn returns the session's live connection, or nil.
func (s *Session) Conn() *pipeline.Conn { return s.conn.Load() }

// LastSeen returns when the session last had a live connection or activity.
func (s *Session) LastSeen() time.Time { return time.Unix(0, s.lastSeen.Load()) }

// Touch records activity now.
func (s *Session) Touch(now time.Time) { s.lastSeen.Store(now.UnixNano()) }

// SetApplied records the client's latest APPLIED report: a rule set in
// force (Error empty), which also clears an earlier refusal, or a rule set
// the client refused (Error says why), which leaves the one in force as it
// was.
func (s *Session) SetApplied(a AppliedState) {
	if a.Error != "" {
		s.refused.Store(&a)
		return
	}
	s.applied.Store(&a)
	s.refused.Store(nil)
}

// Applied returns the rule set the client last reported in force, or nil.
func (s *Session) Applied() *AppliedState { return s.applied.Load() }

// Refused returns the rule set the client last refused, if none applied
// since, or nil.
func (s *Session) Refused() *AppliedState { return s.refused.Load() }

// Registry holds the sessions of a server, one per client id. The zero value
// is ready to use; safe for concurrent use.
type Registry struct {
	mu       sync.Mutex
	sessions map[string]*Session
	peak     int // the map's largest size since it was made
}

// Attach binds conn to the session of clientID, creating the session if
// needed. It returns the session, whether it existed (resumed), and the
// connection it replaced, if any: the caller closes that one with
// codec.ConnReplaced.
func (r *Registry) Attach(clientID string, conn *pipeline.Conn, now time.Time) (s *Session, resumed bool, replaced *pipeline.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions == nil {
		r.sessions = make(map[string]*Session)
	}
	s, resumed = r.sessions[clientID]
	if !resumed {
		s = &Session{ClientID: clientID, ID: newSessionID(), Created: now}
		r.sessions[clientID] = s
		r.peak = max(r.peak, len(r.sessions))
	}
	conn.SessionID = s.ID
	replaced = s.conn.Swap(conn)
	s.Touch(now)
	return s, resumed, replaced
}

// Detach unbinds conn from s if it is still s's connection; a connection that
// was already replaced leaves the session alone.
func (r *Registry) Detach(s *Session, conn *pipeline.Conn, now time.Time) {
	// Under the registry's lock, so that a sweep never sees the session
	// disconnected but not yet touched.
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.conn.CompareAndSwap(conn, nil) {
		s.Touch(now)
	}
}

// Conn returns the live connection of clientID, or nil. O(1).
func (r *Registry) Conn(clientID string) *pipeline.Conn {
	r.mu.Lock()
	s := r.sessions[clientID]
	r.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.conn.Load()
}

// Sweep removes sessions without a connection whose last activity is older
// than ttl (S7), and returns their client ids.
func (r *Registry) Sweep(now time.Time, ttl time.Duration) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var removed []string
	for id, s := range r.sessions {
		if s.conn.Load() == nil && now.Sub(s.LastSeen()) > ttl {
			delete(r.sessions, id)
			removed = append(removed, id)
		}
	}
	if r.peak > 64 && len(r.sessions) < r.peak/4 {
		// A Go map keeps the room of its largest size: after a crowd of
		// clients has gone, copy the few left so that the memory goes too.
		m := make(map[string]*Session, len(r.sessions))
		for id, s := range r.sessions {
			m[id] = s
		}
		r.sessions, r.peak = m, len(m)
	}
	slices.Sort(removed)
	return removed
}

// Sessions returns the sessions sorted by client id.
func (r *Registry) Sessions() []*Session {
	r.mu.Lock()
	out := make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		out = append(out, s)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b *Session) int { return strings.Compare(a.ClientID, b.ClientID) })
	return out
}

// Conns returns every live connection.
func (r *Registry) Conns() []*pipeline.Conn {
	var out []*pipeline.Conn
	for _, s := range r.Sessions() {
		if c := s.Conn(); c != nil {
			out = append(out, c)
		}
	}
	return out
}

func newSessionID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
