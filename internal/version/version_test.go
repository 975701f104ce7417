package version

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestResolve(t *testing.T) {
	t.Parallel()
	vcs := func(main string, settings ...string) *debug.BuildInfo {
		info := &debug.BuildInfo{Main: debug.Module{Path: "github.com/qtunnel/qtunnel", Version: main}}
		for i := 0; i+1 < len(settings); i += 2 {
			info.Settings = append(info.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return info
	}
	const rev = "0123456789abcdef0123456789abcdef01234567"
	tests := []struct {
		name    string
		stamped string
		info    *debug.BuildInfo
		want    string
	}{
		{name: "stamped wins", stamped: "v1.2.3", info: vcs("v0.9.0", "vcs.revision", rev), want: "v1.2.3"},
		{name: "stamped with a describe string", stamped: "v1.2.3-4-gabcdef0-dirty", info: nil, want: "v1.2.3-4-gabcdef0-dirty"},
		{name: "no build info", stamped: Unstamped, info: nil, want: "dev"},
		{name: "empty stamp is unstamped", stamped: "", info: nil, want: "dev"},
		{name: "go install module@version", stamped: Unstamped, info: vcs("v1.4.0"), want: "v1.4.0"},
		{name: "pseudo-version", stamped: Unstamped, info: vcs("v0.0.0-20260101000000-0123456789ab"), want: "v0.0.0-20260101000000-0123456789ab"},
		{name: "clean checkout", stamped: Unstamped, info: vcs("(devel)", "vcs.revision", rev, "vcs.modified", "false"), want: "dev-0123456789ab"},
		{name: "dirty checkout", stamped: Unstamped, info: vcs("(devel)", "vcs.revision", rev, "vcs.modified", "true"), want: "dev-0123456789ab-dirty"},
		{name: "short revision", stamped: Unstamped, info: vcs("", "vcs.revision", "abc"), want: "dev-abc"},
		{name: "no vcs information", stamped: Unstamped, info: vcs("(devel)", "-buildmode", "exe"), want: "dev"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Resolve(tt.stamped, tt.info))
		})
	}
}

func TestLine(t *testing.T) {
	t.Parallel()
	want := "tunnel " + String() + " (" + runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	require.Equal(t, want, Line("tunnel"))
	// A test binary is not stamped and, built by go test, has no VCS
	// information: String falls back to the unstamped name.
	require.Equal(t, Unstamped, Version)
}
