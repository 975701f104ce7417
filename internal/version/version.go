// Package version tells which build of qtunnel is running.
//
// Release builds stamp Version at link time:
//
//	go build -ldflags "-X github.com/qtunnel/qtunnel/internal/version.Version=v1.2.3" ./cmd/tunnel
//
// (make build and make dist do). An unstamped build falls back to what the
// Go toolchain recorded in the binary: the main module's version when it was
// installed with go install module@version, else the VCS revision it was
// built from.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Unstamped is the value of Version in a build that was not stamped.
const Unstamped = "dev"

// Version is the release this binary was built as, set with the linker's
// -X flag; Unstamped otherwise. Read it through String, which falls back to
// the build information.
var Version = Unstamped

// String returns the version of this binary: Version when it was stamped,
// else the version derived from the build information (see Resolve).
func String() string {
	info, _ := debug.ReadBuildInfo()
	return Resolve(Version, info)
}

// Resolve returns stamped unless it is Unstamped or empty. Otherwise it
// derives a version from info: the main module's version when the toolchain
// knows one (go install module@v1.2.3), else "dev-" and the first 12 digits
// of the VCS revision, with "-dirty" when the work tree had changes; plain
// "dev" when info (which may be nil) tells neither.
func Resolve(stamped string, info *debug.BuildInfo) string {
	if stamped != "" && stamped != Unstamped {
		return stamped
	}
	if info == nil {
		return Unstamped
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var revision string
	var modified bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if revision == "" {
		return Unstamped
	}
	v := Unstamped + "-" + revision[:min(12, len(revision))]
	if modified {
		v += "-dirty"
	}
	return v
}

// Line is the one-line answer of 'program version':
// "tunnel v1.2.3 (go1.26.8, linux/amd64)".
func Line(program string) string {
	return fmt.Sprintf("%s %s (%s, %s/%s)", program, String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
