package config_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/qtunnel/qtunnel/config"
)

// TestDefaultsTable holds the table at the top of defaults.go to what
// SetDefaults does: every setting SetDefaults fills has a row, every row
// is such a setting, and a row's value written in a file is what
// SetDefaults gives the setting when it is left out ("-": a default
// derived from other settings, not checked).
func TestDefaultsTable(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("defaults.go")
	require.NoError(t, err)
	rowRE := regexp.MustCompile(`^//\t([a-z0-9_.]+) {2,}(\S+)`)
	rows := map[string]string{}
	for _, l := range strings.Split(string(src), "\n") {
		if m := rowRE.FindStringSubmatch(l); m != nil {
			require.NotContains(t, rows, m[1], "two rows for %s", m[1])
			rows[m[1]] = m[2]
		}
	}
	require.NotEmpty(t, rows)

	used := map[string]bool{}
	// check compares, for each setting SetDefaults fills in zero, the
	// default with the row's value decoded into zero and defaulted.
	check := func(t *testing.T, zero any, fresh func() any, setDefaults func(any)) {
		t.Helper()
		filled := fresh()
		setDefaults(filled)
		paths, err := config.Changed(zero, filled)
		require.NoError(t, err)
		require.NotEmpty(t, paths)
		for _, p := range paths {
			v, ok := rows[p]
			if !ok {
				t.Errorf("SetDefaults fills %s, which has no row in the table of defaults.go", p)
				continue
			}
			used[p] = true
			if v == "-" {
				continue
			}
			fromRow := fresh()
			require.NoError(t, yaml.Unmarshal([]byte(nested(p, v)), fromRow), "row %s", p)
			setDefaults(fromRow)
			diff, err := config.Changed(filled, fromRow)
			require.NoError(t, err)
			require.Empty(t, diff, "row %s: %s is not the default", p, v)
		}
	}
	check(t, config.Server{},
		func() any { return &config.Server{} },
		func(c any) { c.(*config.Server).SetDefaults() })
	// With server set, so that server_name takes its default.
	check(t, config.Client{Server: "tunnel.test:4443"},
		func() any { return &config.Client{Server: "tunnel.test:4443"} },
		func(c any) { c.(*config.Client).SetDefaults() })

	for p := range rows {
		if p != "state_dir" { // defaulted at use, by StateDirectory
			require.True(t, used[p], "row %s: SetDefaults fills no such setting", p)
		}
	}
}

// nested writes "a.b: v" as the YAML document a: {b: v}.
func nested(path, v string) string {
	var b strings.Builder
	for i, k := range strings.Split(path, ".") {
		b.WriteString(strings.Repeat("  ", i) + k + ":")
		if i == strings.Count(path, ".") {
			b.WriteString(" " + v)
		}
		b.WriteString("\n")
	}
	return b.String()
}
