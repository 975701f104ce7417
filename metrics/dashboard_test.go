package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// dashboardFile is the Grafana dashboard shipped in docs/.
const dashboardFile = "../docs/grafana-dashboard.json"

// everyFamily returns the type of every qtunnel family a Metrics
// registers, by name, with each labelled family given a series so that
// the registry exports it.
func everyFamily(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	out := map[string]dto.MetricType{}
	for _, mf := range ourFamilies(t, withEveryFamily(t)) {
		out[mf.GetName()] = mf.GetType()
	}
	return out
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Targets    []struct {
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

var metricName = regexp.MustCompile(`qtunnel_[a-z_]+`)

// TestDashboardUsesRegisteredMetrics: docs/grafana-dashboard.json is valid
// JSON, queries the ${DS_PROMETHEUS} data source, names only metrics this
// package registers (a histogram's _bucket, _sum and _count series only for
// histograms), and has a panel for every family.
func TestDashboardUsesRegisteredMetrics(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(raw, &d), "%s is not valid JSON", dashboardFile)
	require.NotEmpty(t, d.UID)
	require.GreaterOrEqual(t, d.SchemaVersion, 36, "schemaVersion of a current Grafana")

	var dsVar bool
	for _, v := range d.Templating.List {
		if v.Name == "DS_PROMETHEUS" {
			dsVar = true
			require.Equal(t, "datasource", v.Type)
			require.JSONEq(t, `"prometheus"`, string(v.Query))
		}
	}
	require.True(t, dsVar, "the dashboard has a DS_PROMETHEUS data source variable")

	families := everyFamily(t)
	used := map[string]bool{}
	ids := map[int]string{}
	var exprs int
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
			require.NotNil(t, p.Datasource, "panel %q", p.Title)
			require.Equal(t, datasource{"prometheus", "${DS_PROMETHEUS}"}, *p.Datasource, "panel %q", p.Title)
			for _, tg := range p.Targets {
				exprs++
				if tg.Datasource != nil {
					require.Equal(t, "${DS_PROMETHEUS}", tg.Datasource.UID, "panel %q", p.Title)
				}
				names := metricName.FindAllString(tg.Expr, -1)
				require.NotEmpty(t, names, "panel %q: %q names no qtunnel metric", p.Title, tg.Expr)
				for _, n := range names {
					base, typ, ok := resolve(families, n)
					require.True(t, ok, "panel %q: %s is not a registered metric (expr %q)", p.Title, n, tg.Expr)
					if base != n {
						require.Equal(t, dto.MetricType_HISTOGRAM, typ, "panel %q: %s: only histograms have %s", p.Title, base, strings.TrimPrefix(n, base))
					}
					used[base] = true
				}
			}
		}
	}
	walk(d.Panels)
	require.NotZero(t, exprs)
	for _, v := range d.Templating.List {
		for _, n := range metricName.FindAllString(string(v.Query), -1) {
			_, _, ok := resolve(families, n)
			require.True(t, ok, "variable %q: %s is not a registered metric", v.Name, n)
		}
	}
	var unused []string
	for name := range families {
		if !used[name] && name != "qtunnel_info" { // qtunnel_info feeds the variables
			unused = append(unused, name)
		}
	}
	slices.Sort(unused)
	require.Empty(t, unused, "families without a panel")
}

// resolve maps a series name to its family: itself, or a histogram's
// family for its _bucket, _sum and _count series.
func resolve(families map[string]dto.MetricType, name string) (string, dto.MetricType, bool) {
	if typ, ok := families[name]; ok {
		return name, typ, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if typ, ok := families[base]; ok {
				return base, typ, true
			}
		}
	}
	return "", 0, false
}
