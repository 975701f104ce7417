package rules_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/rules"
)

// manyClients is n clients with one reverse rule each, on hosts of their
// own, and one more rule for client 0 on the same host with a path.
func manyClients(n int) []rules.Rule {
	rs := make([]rules.Rule, 0, n+1)
	for i := range n {
		rs = append(rs, rules.Rule{ID: fmt.Sprintf("r%d", i), Client: fmt.Sprintf("c%d", i), Direction: rules.Reverse,
			Host: fmt.Sprintf("app%d.example.com", i), Upstream: "http://127.0.0.1:3000"})
	}
	return append(rs, rules.Rule{ID: "api", Client: "c0", Direction: rules.Reverse, Host: "app0.example.com",
		PathPrefix: "/api", Upstream: "http://127.0.0.1:3001"})
}

func TestTableIndexesHostsAndClients(t *testing.T) {
	t.Parallel()
	tab, err := rules.NewTable(1, manyClients(1000))
	require.NoError(t, err)
	assert.Equal(t, "api", tab.Match("", "APP0.example.com:8080", "/api/x").ID, "the longer prefix of the host first")
	assert.Equal(t, "r0", tab.Match("", "app0.example.com", "/other").ID)
	assert.Equal(t, "r999", tab.Match("", "app999.example.com", "/").ID)
	assert.Nil(t, tab.Match("", "nobody.example.com", "/"))
	assert.Len(t, tab.ForClient("c0"), 2)
	assert.Len(t, tab.ForClient("c500"), 1)
	assert.Empty(t, tab.ForClient("c-none"))
	assert.Len(t, tab.Clients(), 1000)

	// Conflicts are still found through the index.
	_, err = rules.NewTable(1, append(manyClients(100), rules.Rule{ID: "steal", Client: "c1", Direction: rules.Reverse,
		Host: "app5.example.com", Upstream: "http://127.0.0.1:1"}))
	require.ErrorContains(t, err, `host "app5.example.com" belongs to client "c5" (rule "r5")`)
	_, err = rules.NewTable(1, append(manyClients(100), rules.Rule{ID: "dup", Client: "c0", Direction: rules.Reverse,
		Host: "app0.example.com", PathPrefix: "/api", Upstream: "http://127.0.0.1:1"}))
	require.ErrorContains(t, err, `app0.example.com/api on the public listener is already routed by rule "api"`)
}

func TestChangedClients(t *testing.T) {
	t.Parallel()
	rs := manyClients(100)
	old, err := rules.NewTable(1, rs)
	require.NoError(t, err)
	same, err := rules.NewTable(2, rs)
	require.NoError(t, err)
	assert.Empty(t, rules.ChangedClients(old, same))

	next := append([]rules.Rule(nil), rs...)
	next[7].Upstream = "http://127.0.0.1:4000"                  // c7 changed
	next = append(next[:20], next[21:]...)                      // c20 lost its rule
	next[50].Client, next[50].Host = "c99", "moved.example.com" // r51 moves from c51 to c99
	tab, err := rules.NewTable(3, next)
	require.NoError(t, err)
	assert.Equal(t, []string{"c20", "c51", "c7", "c99"}, rules.ChangedClients(old, tab))
	assert.Len(t, rules.ChangedClients(nil, old), 100)
}

// BenchmarkNewTable is the cost of a rule-set change on the server: the
// whole table is built and checked again.
func BenchmarkNewTable(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		rs := manyClients(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rules.NewTable(1, rs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMatchPublic is the route stage's lookup on the public listener
// of a server with many clients.
func BenchmarkMatchPublic(b *testing.B) {
	tab, err := rules.NewTable(1, manyClients(10000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if tab.Match("", "app9999.example.com", "/x") == nil {
			b.Fatal("no match")
		}
	}
}
