//go:build unix

package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qtunnel/qtunnel/config"
	"github.com/qtunnel/qtunnel/control"
)

// versionVar is the variable that make dist and the Dockerfile stamp.
const versionVar = "github.com/qtunnel/qtunnel/internal/version.Version"

// allPlatforms are make dist's targets, in its order.
var allPlatforms = []struct{ goos, goarch string }{
	{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "arm64"},
}

// distPlatforms are the targets TestDist builds: linux/amd64 only (each
// target is a cold build of everything, a minute or more on two cores,
// and make test must stay short), all of them with DIST_ALL=1 set, as a
// release check does. make -n dist shows the whole default list either way.
func distPlatforms() []struct{ goos, goarch string } {
	if os.Getenv("DIST_ALL") == "1" {
		return allPlatforms
	}
	return allPlatforms[:1]
}

// root is the repository's root: this package's parent folder.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(dir, "go.mod"))
	return dir
}

// budget is a context that ends within limit and before the test binary's
// own deadline (-timeout), leaving time to report.
func budget(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	if d, ok := t.Deadline(); ok {
		limit = min(limit, time.Until(d)-30*time.Second)
	}
	require.Positive(t, limit, "no time left before the test deadline")
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	return ctx
}

// result is what one command printed and how it ended.
type result struct {
	stdout, stderr string
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("err=%v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
}

// command runs name in dir. When ctx ends, its whole process group is
// killed (make and the go commands under it), and the wait for its
// output is bounded too.
func command(ctx context.Context, dir string, env []string, name string, args ...string) result {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return result{stdout: out.String(), stderr: errOut.String(), err: err}
}

// childEnv is this process's environment without what a make above this
// test would hand to ours (its flags and command-line variables).
func childEnv(extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return name == "MAKEFLAGS" || name == "MFLAGS" || name == "MAKELEVEL" || name == "MAKEOVERRIDES"
	})
	return append(env, extra...)
}

// describe is the version make dist stamps when VERSION is not given.
func describe(ctx context.Context, dir string) string {
	r := command(ctx, dir, os.Environ(), "git", "describe", "--tags", "--always", "--dirty")
	if v := strings.TrimSpace(r.stdout); r.err == nil && v != "" {
		return v
	}
	return "dev"
}

// TestDist runs `make dist` once into a temporary folder (nice'd, so that
// tests running beside it keep the CPU), for distPlatforms, and checks what
// it made: one
// static, -trimpath binary per platform for the right OS and CPU, stamped
// with the version git describe gives; SHA256SUMS in sha256sum's format,
// matching every binary; and the linux/amd64 binary runs here.
func TestDist(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode: make dist cross-builds three binaries (about 2 minutes on 2 cores from a cold build cache)")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed: cannot run make dist")
	}
	ctx := budget(t, 10*time.Minute)
	repo, dist := root(t), t.TempDir()

	// The version make will stamp: the environment's VERSION if set, else
	// git describe, taken before and after the build in case someone
	// changes the work tree meanwhile (-dirty).
	want := []string{os.Getenv("VERSION")}
	if want[0] == "" {
		want[0] = describe(ctx, repo)
	}
	platforms := distPlatforms()
	var list []string
	for _, p := range platforms {
		list = append(list, p.goos+"/"+p.goarch)
	}
	argv := []string{"make", "-C", repo, "--no-print-directory", "dist", "DIST=" + dist, "PLATFORMS=" + strings.Join(list, " ")}
	if nice, err := exec.LookPath("nice"); err == nil {
		argv = append([]string{nice, "-n", "19"}, argv...)
	}
	start := time.Now()
	r := command(ctx, repo, childEnv(), argv[0], argv[1:]...)
	require.NoError(t, r.err, "make dist:\n%s", r)
	t.Logf("make dist took %s", time.Since(start).Round(time.Second))
	if os.Getenv("VERSION") == "" {
		want = append(want, describe(ctx, repo))
	}

	var names []string
	for _, p := range platforms {
		names = append(names, "tunnel-"+p.goos+"-"+p.goarch)
	}
	entries, err := os.ReadDir(dist)
	require.NoError(t, err)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	require.ElementsMatch(t, append([]string{"SHA256SUMS"}, names...), got, "what make dist left in DIST")

	t.Run("SHA256SUMS", func(t *testing.T) {
		sums := readSums(t, filepath.Join(dist, "SHA256SUMS"))
		require.ElementsMatch(t, names, keys(sums))
		for _, name := range names {
			data, err := os.ReadFile(filepath.Join(dist, name))
			require.NoError(t, err)
			h := sha256.Sum256(data)
			require.Equal(t, hex.EncodeToString(h[:]), sums[name], name)
			t.Logf("%s: %d bytes (%.1f MiB), sha256 %s matches SHA256SUMS", name, len(data), float64(len(data))/(1<<20), sums[name])
		}
		// The file is what `sha256sum -c` reads, as the docs tell users to.
		if _, err := exec.LookPath("sha256sum"); err != nil {
			t.Log("sha256sum is not installed: SHA256SUMS checked in Go only")
			return
		}
		r := command(ctx, dist, os.Environ(), "sha256sum", "--check", "--strict", "SHA256SUMS")
		require.NoError(t, r.err, "%s", r)
		for _, name := range names {
			require.Contains(t, r.stdout, name+": OK\n")
		}
		t.Logf("sha256sum --check --strict:\n%s", r.stdout)
	})

	// The version make used, from its progress lines.
	var stamped string
	progress := regexp.MustCompile(`(?m)^dist: \S+/(tunnel-\S+) \((\S+)\)$`).FindAllStringSubmatch(r.stdout, -1)
	require.Len(t, progress, len(names), "make dist's progress lines:\n%s", r.stdout)
	for _, m := range progress {
		require.Contains(t, want, m[2], "%s is stamped with git describe's version (or VERSION's)", m[1])
		if stamped == "" {
			stamped = m[2]
		}
		require.Equal(t, stamped, m[2], "every binary carries the same version")
	}
	t.Logf("stamped version: %s", stamped)

	// Go leaves -ldflags out of the build info of a -trimpath build, so
	// the flags are read from make's recipe.
	t.Run("flags", func(t *testing.T) {
		r := command(ctx, repo, childEnv(), "make", "-C", repo, "--no-print-directory", "-n", "dist", "DIST="+dist)
		require.NoError(t, r.err, "%s", r)
		require.Regexp(t, `CGO_ENABLED=0 GOOS=\$os GOARCH=\$arch \S+ build -trimpath`, r.stdout)
		require.Contains(t, r.stdout, `-ldflags "-s -w -X `+versionVar+`=$v"`)
		var all []string
		for _, p := range allPlatforms {
			all = append(all, p.goos+"/"+p.goarch)
		}
		require.Contains(t, r.stdout, "for p in "+strings.Join(all, " ")+";", "make dist's default targets")
	})

	// Until the binary links the version package, the linker has nothing
	// to stamp (-X on a missing variable is ignored): then only the flags
	// are checked.
	deps := command(ctx, repo, os.Environ(), "go", "list", "-deps", "./cmd/tunnel")
	require.NoError(t, deps.err, "%s", deps)
	linked := slices.Contains(strings.Fields(deps.stdout), strings.TrimSuffix(versionVar, ".Version"))
	if !linked {
		t.Logf("cmd/tunnel does not import %s yet: the stamp is checked in make's flags only", strings.TrimSuffix(versionVar, ".Version"))
	}
	for _, p := range platforms {
		name := "tunnel-" + p.goos + "-" + p.goarch
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(dist, name)
			bi, err := buildinfo.ReadFile(file)
			require.NoError(t, err)
			require.Equal(t, "github.com/qtunnel/qtunnel/cmd/tunnel", bi.Path)
			settings := map[string]string{}
			for _, s := range bi.Settings {
				settings[s.Key] = s.Value
			}
			require.Equal(t, "0", settings["CGO_ENABLED"], "static: cgo is off")
			require.Equal(t, "true", settings["-trimpath"])
			require.Equal(t, p.goos, settings["GOOS"])
			require.Equal(t, p.goarch, settings["GOARCH"])
			if linked {
				data, err := os.ReadFile(file)
				require.NoError(t, err)
				require.True(t, bytes.Contains(data, []byte(stamped)), "the version string %q is in the binary", stamped)
			}

			switch p.goos {
			case "linux":
				f, err := elf.Open(file)
				require.NoError(t, err)
				defer f.Close()
				require.Equal(t, map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[p.goarch], f.Machine)
				for _, prog := range f.Progs {
					require.NotEqual(t, elf.PT_INTERP, prog.Type, "a static binary has no dynamic loader")
				}
				libs, err := f.ImportedLibraries()
				require.NoError(t, err)
				require.Empty(t, libs)
			case "darwin":
				f, err := macho.Open(file)
				require.NoError(t, err)
				defer f.Close()
				require.Equal(t, macho.CpuArm64, f.Cpu)
			}
		})
	}

	t.Run("runs", func(t *testing.T) {
		if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
			t.Skipf("this machine is %s/%s: it cannot run tunnel-linux-amd64", runtime.GOOS, runtime.GOARCH)
		}
		bin := filepath.Join(dist, "tunnel-linux-amd64")
		r := command(ctx, dist, os.Environ(), bin, "--help")
		require.NoError(t, r.err, "%s", r)
		require.Contains(t, r.stdout, "check-config", "the help lists the commands")

		r = command(ctx, dist, os.Environ(), bin, "version")
		if strings.Contains(r.stderr, `unknown command "version"`) {
			require.False(t, linked, "the version package is linked in, but there is no version command")
			t.Skip("this build has no version command yet (another change adds it): --help ran")
		}
		require.NoError(t, r.err, "%s", r)
		require.Contains(t, r.stdout, stamped, "tunnel version prints the stamped version")
		t.Logf("tunnel version printed: %s", strings.TrimSpace(r.stdout))
	})

	// The units' commands, as written, work with this binary: the check
	// before start passes on a good file, and the service's own command
	// line parses (asked for its help, so that nothing starts).
	t.Run("unit commands", func(t *testing.T) {
		if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
			t.Skipf("this machine is %s/%s: it cannot run tunnel-linux-amd64", runtime.GOOS, runtime.GOARCH)
		}
		bin := filepath.Join(dist, "tunnel-linux-amd64")
		etc := t.TempDir()
		token := filepath.Join(etc, "token")
		require.NoError(t, os.WriteFile(token, []byte("the-token\n"), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(etc, "server.yaml"), []byte(`listen: "127.0.0.1:4443"
public_http: "127.0.0.1:8080"
clients:
  - id: laptop
    token_sha256: `+control.HashToken("the-token").String()+`
rules:
  - id: app
    client: laptop
    direction: reverse
    host: app.example.com
    upstream: http://127.0.0.1:3000
`), 0o640))
		require.NoError(t, os.WriteFile(filepath.Join(etc, "client.yaml"), []byte(`id: laptop
server: tunnel.example.com:4443
server_pin: "sha256:`+base64.StdEncoding.EncodeToString(make([]byte, 32))+`"
token_file: `+token+`
`), 0o640))
		for _, side := range []string{"server", "client"} {
			u := unit(t, filepath.Join(repo, "deploy", "systemd", "qtunnel-"+side+".service"))
			for _, key := range []string{"ExecStartPre", "ExecStart"} {
				require.Len(t, u["Service."+key], 1)
				args := strings.Fields(strings.ReplaceAll(u["Service."+key][0], "/etc/qtunnel/", etc+"/"))
				require.Equal(t, "/usr/local/bin/tunnel", args[0])
				if key == "ExecStart" {
					args = append(args, "--help")
				}
				r := command(ctx, etc, os.Environ(), bin, args[1:]...)
				require.NoError(t, r.err, "%s: %s\n%s", side, key, r)
				if key == "ExecStartPre" {
					require.Contains(t, r.stdout, ": ok (", "%s: %s", side, key)
				}
			}
		}
		// A token file others can read stops the client's check.
		require.NoError(t, os.Chmod(token, 0o644))
		r := command(ctx, etc, os.Environ(), bin, "check-config", "client", filepath.Join(etc, "client.yaml"))
		require.Error(t, r.err)
		require.Contains(t, r.stderr, "is open to group or others (mode 0644)")
	})
}

// readSums parses sha256sum's output format: "<64 hex>  <name>" per line.
func readSums(t *testing.T, file string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	line := regexp.MustCompile(`^([0-9a-f]{64})  (\S+)$`)
	sums := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		require.NotNil(t, m, "SHA256SUMS line %q", sc.Text())
		require.NotContains(t, sums, m[2], "listed twice")
		sums[m[2]] = m[1]
	}
	require.NoError(t, sc.Err())
	return sums
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// unit reads a systemd unit file's settings: "Section.Key" to its values
// in order (a key may repeat).
func unit(t *testing.T, file string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	settings := map[string][]string{}
	section := ""
	for l := range strings.Lines(string(data)) {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l[0] == '#' || l[0] == ';':
		case l[0] == '[':
			section = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			require.True(t, ok, "%s: %q is not Key=value", file, l)
			settings[section+"."+k] = append(settings[section+"."+k], v)
		}
	}
	return settings
}

// TestSystemdUnits checks what the units promise docs/DEPLOY.md, then has
// systemd's own tools check them where they are installed: verify (syntax
// and every setting known; its warnings fail the test too), security (the
// exposure score stays low) and sysusers (the user file creates qtunnel).
func TestSystemdUnits(t *testing.T) {
	dir := filepath.Join(root(t), "deploy", "systemd")
	const bin = "/usr/local/bin/tunnel"
	server := unit(t, filepath.Join(dir, "qtunnel-server.service"))
	client := unit(t, filepath.Join(dir, "qtunnel-client.service"))
	for side, u := range map[string]map[string][]string{"server": server, "client": client} {
		for key, want := range map[string]string{
			"User": "qtunnel", "Group": "qtunnel", "Restart": "on-failure",
			"StateDirectory": "qtunnel", "ConfigurationDirectory": "qtunnel",
			"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
			"PrivateTmp": "yes", "UMask": "0077",
		} {
			require.Equal(t, []string{want}, u["Service."+key], "%s: %s", side, key)
		}
		file := "/etc/qtunnel/" + side + ".yaml"
		require.Equal(t, []string{bin + " check-config " + side + " " + file}, u["Service.ExecStartPre"], side)
		require.Equal(t, []string{bin + " " + side + " -config " + file}, u["Service.ExecStart"], side)
	}
	require.Equal(t, []string{bin + " check-config server /etc/qtunnel/server.yaml", "/bin/kill -HUP $MAINPID"},
		server["Service.ExecReload"], "reload checks the file, then sends SIGHUP")
	require.Empty(t, client["Service.ExecReload"], "the client ignores SIGHUP")
	require.Equal(t, []string{"token:/etc/qtunnel/token"}, client["Service.LoadCredential"])
	require.Equal(t, []string{"1"}, client["Service.RestartPreventExitStatus"], "the client's exit 1 is final")

	// systemd's tools read copies whose commands point at an executable
	// that exists here: verify refuses a missing one.
	exe, err := os.Executable()
	require.NoError(t, err)
	copies := t.TempDir()
	var units []string
	for _, name := range []string{"qtunnel-server.service", "qtunnel-client.service"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		units = append(units, filepath.Join(copies, name))
		require.NoError(t, os.WriteFile(units[len(units)-1], bytes.ReplaceAll(data, []byte(bin), []byte(exe)), 0o644))
	}
	ctx := budget(t, 2*time.Minute)

	t.Run("systemd-analyze verify", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-analyze"); err != nil {
			t.Skip("systemd-analyze is not installed (Debian's systemd package; .ci/run installs it): the units were checked by the test's own reading only")
		}
		r := command(ctx, copies, os.Environ(), "systemd-analyze", append([]string{"verify"}, units...)...)
		require.NoError(t, r.err, "%s", r)
		// verify exits 0 on unknown settings; it warns instead.
		require.Empty(t, r.stdout+r.stderr, "systemd-analyze verify has something to say")
		t.Log("systemd-analyze verify: both units clean (no output, exit 0)")
	})

	t.Run("systemd-analyze security", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-analyze"); err != nil {
			t.Skip("systemd-analyze is not installed")
		}
		for _, u := range units {
			// --threshold is in tenths: fail above an exposure of 2.0.
			r := command(ctx, copies, os.Environ(), "systemd-analyze", "security", "--offline=yes", "--threshold=20", u)
			if strings.Contains(r.stderr, "unrecognized option") {
				t.Skipf("this systemd-analyze cannot score unit files offline (needs systemd 250): %s", strings.TrimSpace(r.stderr))
			}
			require.NoError(t, r.err, "%s", r)
			m := regexp.MustCompile(`Overall exposure level for \S+: \S+ \S+`).FindString(r.stdout)
			require.NotEmpty(t, m, "%s", r)
			t.Log(m)
		}
	})

	t.Run("systemd-sysusers", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-sysusers"); err != nil {
			t.Skip("systemd-sysusers is not installed (Debian's systemd package)")
		}
		sysroot := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(sysroot, "etc"), 0o755))
		r := command(ctx, copies, os.Environ(), "systemd-sysusers", "--root="+sysroot, filepath.Join(dir, "qtunnel.sysusers.conf"))
		require.NoError(t, r.err, "%s", r)
		passwd, err := os.ReadFile(filepath.Join(sysroot, "etc", "passwd"))
		require.NoError(t, err)
		require.Regexp(t, `(?m)^qtunnel:x:\d+:\d+:qtunnel tunnel gateway:/var/lib/qtunnel:/\S*nologin$`, string(passwd))
		group, err := os.ReadFile(filepath.Join(sysroot, "etc", "group"))
		require.NoError(t, err)
		require.Regexp(t, `(?m)^qtunnel:x:\d+:$`, string(group))
	})
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct{ keyword, args string }

func dockerfile(t *testing.T, file string) []instruction {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	var out []instruction
	var cur strings.Builder
	for l := range strings.Lines(string(data)) {
		l = strings.TrimRight(l, " \t\r\n")
		if strings.HasPrefix(strings.TrimSpace(l), "#") || strings.TrimSpace(l) == "" {
			continue // comments may sit inside a continued instruction too
		}
		if rest, ok := strings.CutSuffix(l, `\`); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(l)
		kw, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{strings.ToUpper(kw), strings.Join(strings.Fields(args), " ")})
		cur.Reset()
	}
	require.Empty(t, cur.String(), "the Dockerfile ends inside a continued line")
	return out
}

// TestDockerfile checks the image's promises by reading the Dockerfile
// (a static build stage; a distroless or scratch final stage run as a
// numeric non-root user with /tunnel as entry point, the example
// configuration's ports and volumes for configuration and state), then
// builds it with make image where a Docker engine answers.
func TestDockerfile(t *testing.T) {
	repo := root(t)
	ins := dockerfile(t, filepath.Join(repo, "Dockerfile"))
	var froms []int
	for i, in := range ins {
		if in.keyword == "FROM" {
			froms = append(froms, i)
		}
	}
	require.Len(t, froms, 2, "a build stage and a final stage")
	require.Regexp(t, `^golang:\S+ AS build$`, ins[froms[0]].args)
	build, final := ins[froms[0]+1:froms[1]], ins[froms[1]+1:]
	require.Regexp(t, `^(gcr\.io/distroless/static\S*|scratch)$`, ins[froms[1]].args)

	find := func(stage []instruction, keyword string) []string {
		var args []string
		for _, in := range stage {
			if in.keyword == keyword {
				args = append(args, in.args)
			}
		}
		return args
	}
	require.Contains(t, find(build, "ARG"), "VERSION=dev")
	runs := strings.Join(find(build, "RUN"), "\n")
	require.Contains(t, runs, "go mod download", "the module cache is a layer of its own")
	require.Contains(t, runs, "CGO_ENABLED=0 go build -trimpath")
	require.Contains(t, runs, `-ldflags "-s -w -X `+versionVar+`=${VERSION}"`, "stamped as make dist stamps")

	users := find(final, "USER")
	require.Len(t, users, 1)
	m := regexp.MustCompile(`^(\d+)(?::(\d+))?$`).FindStringSubmatch(users[0])
	require.NotNil(t, m, "USER %q must be numeric", users[0])
	require.NotEqual(t, "0", m[1], "not root")
	require.Equal(t, []string{`["/tunnel"]`}, find(final, "ENTRYPOINT"))

	// The exposed ports are those of examples/server.yaml.
	data, err := os.ReadFile(filepath.Join(repo, "examples", "server.yaml"))
	require.NoError(t, err)
	ex, err := config.ParseServer("examples/server.yaml", data)
	require.NoError(t, err)
	_, quicPort, err := net.SplitHostPort(ex.Listen)
	require.NoError(t, err)
	_, httpPort, err := net.SplitHostPort(ex.PublicHTTP)
	require.NoError(t, err)
	exposed := strings.Fields(strings.Join(find(final, "EXPOSE"), " "))
	require.ElementsMatch(t, []string{quicPort + "/udp", httpPort + "/tcp"}, exposed)

	var volumes []string
	for _, v := range find(final, "VOLUME") {
		var list []string
		require.NoError(t, json.Unmarshal([]byte(v), &list), "VOLUME %s", v)
		volumes = append(volumes, list...)
	}
	require.ElementsMatch(t, []string{"/etc/qtunnel", "/var/lib/qtunnel"}, volumes)
	require.Contains(t, find(final, "ENV"), "STATE_DIRECTORY=/var/lib/qtunnel", "the server's default state_dir is the state volume")

	ignore, err := os.ReadFile(filepath.Join(repo, ".dockerignore"))
	require.NoError(t, err)
	for _, p := range []string{".git", "bin", "dist", "*.test"} {
		require.Regexp(t, `(?m)^`+regexp.QuoteMeta(p)+`$`, string(ignore), "the build context leaves out %s", p)
	}

	t.Run("docker build", func(t *testing.T) {
		if _, err := exec.LookPath("docker"); err != nil {
			t.Skip("docker is not installed: the image was checked by reading the Dockerfile only")
		}
		if _, err := exec.LookPath("make"); err != nil {
			t.Skip("make is not installed: cannot run make image")
		}
		ctx := budget(t, 15*time.Minute)
		probe, cancel := context.WithTimeout(ctx, 20*time.Second)
		r := command(probe, repo, os.Environ(), "docker", "version", "--format", "{{.Server.Version}}")
		cancel()
		if r.err != nil {
			why, _, _ := strings.Cut(strings.TrimSpace(r.stderr), "\n")
			t.Skipf("no Docker engine answers, so the image is not built (the Dockerfile was checked by reading it): docker version: %v: %s", r.err, why)
		}
		if testing.Short() {
			t.Skip("skipped in -short mode: an image build takes minutes")
		}
		const image = "qtunnel-deploytest"
		version := fmt.Sprintf("deploytest-%d", os.Getpid())
		tag := image + ":" + version
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			command(ctx, repo, os.Environ(), "docker", "image", "rm", "-f", tag)
		})
		r = command(ctx, repo, childEnv(), "make", "-C", repo, "--no-print-directory", "image", "IMAGE="+image, "VERSION="+version)
		require.NoError(t, r.err, "make image:\n%s", r)

		r = command(ctx, repo, os.Environ(), "docker", "image", "inspect", "--format", "{{json .Config}}", tag)
		require.NoError(t, r.err, "%s", r)
		var cfg struct {
			User         string
			Entrypoint   []string
			ExposedPorts map[string]struct{}
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &cfg))
		require.Equal(t, users[0], cfg.User)
		require.Equal(t, []string{"/tunnel"}, cfg.Entrypoint)
		require.Len(t, cfg.ExposedPorts, 2)

		r = command(ctx, repo, os.Environ(), "docker", "run", "--rm", tag, "--help")
		require.NoError(t, r.err, "%s", r)
		require.Contains(t, r.stdout, "check-config", "the help lists the commands")
		r = command(ctx, repo, os.Environ(), "docker", "run", "--rm", tag, "version")
		if strings.Contains(r.stderr, `unknown command "version"`) {
			t.Skip("this build has no version command yet; the image built and runs --help")
		}
		require.NoError(t, r.err, "%s", r)
		require.Contains(t, r.stdout, version)
		t.Logf("image %s built; tunnel version in it printed %s", tag, strings.TrimSpace(r.stdout))
	})
}
