package config

import (
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Changed returns the settings that differ between a and b (two
// configurations of the same type), by their path in the file
// ("limits.max_in_flight", "rules", "admin.token"), sorted. A list is one
// setting. Values are compared as the file would hold them.
func Changed(a, b any) ([]string, error) {
	fa, err := flatten(a)
	if err != nil {
		return nil, err
	}
	fb, err := flatten(b)
	if err != nil {
		return nil, err
	}
	var out []string
	for k, v := range fa {
		if w, ok := fb[k]; !ok || !reflect.DeepEqual(v, w) {
			out = append(out, k)
		}
	}
	for k := range fb {
		if _, ok := fa[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out, nil
}

// flatten turns v into setting path -> value, through its YAML form.
func flatten(v any) (map[string]any, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	out := map[string]any{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if mm, ok := v.(map[string]any); ok {
			for k, x := range mm {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				walk(p, x)
			}
			return
		}
		out[prefix] = v
	}
	walk("", m)
	return out, nil
}

// Live reports whether a server setting (a path from Changed) takes effect
// when the file is reloaded; the others need a restart. LiveSettings lists
// them.
func Live(path string) bool {
	for _, p := range LiveSettings {
		if path == p || strings.HasPrefix(path, p+".") {
			return true
		}
	}
	return false
}

// LiveSettings are the server settings a reload applies (a path, or a
// section whose every setting is live).
var LiveSettings = []string{
	"rules", "clients",
	"log.level", "log.access",
	"admin.token",
	"rate_limit",
	"trusted_proxies",
	"limits.max_in_flight", "limits.max_body_size", "limits.request_timeout",
	"limits.body_timeout", "limits.min_body_rate", "limits.min_rate_grace",
	"limits.stream_idle_timeout", "limits.request_buffer",
	"limits.max_streams_per_source", "limits.sni_host_mismatch",
}

// WithLive returns running with the live settings (LiveSettings) taken
// from next: what is in force after a reload of next.
func WithLive(running, next Server) Server {
	out := running
	out.Rules, out.Clients = next.Rules, next.Clients
	out.Log.Level, out.Log.Access = next.Log.Level, next.Log.Access
	out.Admin.Token = next.Admin.Token
	out.RateLimit = next.RateLimit
	out.TrustedProxies = next.TrustedProxies
	l, n := &out.Limits, next.Limits
	l.MaxInFlight, l.MaxBodySize, l.RequestTimeout = n.MaxInFlight, n.MaxBodySize, n.RequestTimeout
	l.BodyTimeout, l.MinBodyRate, l.MinRateGrace = n.BodyTimeout, n.MinBodyRate, n.MinRateGrace
	l.StreamIdleTimeout, l.RequestBuffer = n.StreamIdleTimeout, n.RequestBuffer
	l.MaxStreamsPerSource, l.SNIHostMismatch = n.MaxStreamsPerSource, n.SNIHostMismatch
	return out
}
