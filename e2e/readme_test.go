package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestREADME runs every shell command README.md shows, in order, the way a
// new user would: each line of its ```sh, ```bash, ```shell and ```console
// blocks, the command lines of its unlabelled blocks (the curl lines that
// make demo prints), and the complete command lines quoted in its prose
// (`bin/tunnel demo -public ...`, `source <(bin/tunnel completion bash)`,
// `make dist`). Make and go commands run in the repository; the others run
// in a fresh temporary directory, with the tunnel binary on PATH and as
// bin/tunnel. Each must succeed, and where the README says what a command
// prints or does, that is checked too. Servers, clients and demos run in
// the background until their section of the README ends, and are stopped
// the way the README says (Ctrl-C, SIGTERM).
//
// Every command must be run or be in readmeSpecs with the reason it cannot
// run here; an entry of readmeSpecs that matches no command fails the test
// too, so the README and this test cannot drift apart.
func TestREADME(t *testing.T) {
	t.Parallel()
	repo, err := filepath.Abs("..")
	require.NoError(t, err)
	text, err := os.ReadFile(filepath.Join(repo, "README.md"))
	require.NoError(t, err)
	doc := parseREADME(string(text), repo)
	require.NotEmpty(t, doc.cmds, "no shell commands found in README.md")
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is not installed, and the README's commands use it (.ci/run installs it)")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash is not installed: the README's commands are run by bash, as a user's shell would")
	}

	r := newReadmeRun(t, repo, doc)
	specs := readmeSpecs()
	used := make([]bool, len(specs))
	var skipped, ran []string
	section := ""
	for _, c := range doc.cmds {
		if c.section != section {
			r.stopAll() // what a section started ends with it
			section = c.section
		}
		i := slices.IndexFunc(specs, func(s readmeSpec) bool { return s.match.MatchString(c.line) })
		name := fmt.Sprintf("README.md:%d %s", c.readme, c.line)
		if i >= 0 && specs[i].skip != "" {
			used[i] = true
			t.Logf("not run: README.md:%d %q: %s", c.readme, c.line, specs[i].skip)
			skipped = append(skipped, c.line)
			t.Run(name, func(t *testing.T) { r.checkSkipped(t, c) })
			continue
		}
		ran = append(ran, c.line)
		if i < 0 {
			t.Run(name, func(t *testing.T) { r.generic(t, c) })
			continue
		}
		used[i] = true
		t.Run(name, func(t *testing.T) { specs[i].run(r, t, c) })
	}
	r.stopAll()
	for i, s := range specs {
		if !used[i] {
			t.Errorf("readmeSpecs has an entry for %q, but README.md shows no such command: remove the entry", s.match)
		}
	}
	t.Logf("README.md: %d commands run, %d not run (reasons above):\n  run: %s\n  not run: %s",
		len(ran), len(skipped), strings.Join(ran, "\n       "), strings.Join(skipped, "\n           "))
}

// readmeSpec says how to run the README's commands that match it and what
// to check, or, with skip, why they cannot run inside the test suite.
type readmeSpec struct {
	match *regexp.Regexp
	skip  string
	run   func(r *readmeRun, t *testing.T, c readmeCmd)
}

// readmeSpecs are the README's commands that need more than "exits 0"
// (the rest run through readmeRun.generic), and the few that cannot run
// here. Keep the skips few: each needs a reason that holds.
func readmeSpecs() []readmeSpec {
	re := regexp.MustCompile
	return []readmeSpec{
		{match: re(`^git clone `),
			skip: "the test runs in a checkout of the repository already, and <this repository> stands for its address; checked: the repository is a git work tree holding cmd/tunnel"},
		{match: re(`^make test$`),
			skip: "it is this test suite: run from here it would run TestREADME again, and that one make test, without end; checked: make -n test"},
		{match: re(`^make test-short$`),
			skip: "it is this test suite with -short, TestREADME included: it would run itself without end; checked: make -n test-short"},
		{match: re(`^\.ci/run$`),
			skip: "CI's entry point: it installs packages (curl, iproute2, systemd, h2spec) and runs make test, this suite; checked: it is an executable file"},
		{match: re(`^make h2spec$`),
			skip: "it runs TestH2Spec of this package, which this same suite runs beside this test; a second h2spec run at the same time would only repeat it on a busier machine; checked: make -n h2spec"},
		{match: re(`^make bench$`),
			skip: "the load harness, 3 runs with every core busy for about 8 minutes: longer than the rest of this suite together, and it measures, with nothing to assert; checked: make -n bench"},
		{match: re(`^make fuzz$`),
			skip: "30 s per fuzz target, about 15 minutes: the whole -timeout make test gives a package; checked: make -n fuzz"},
		{match: re(`^make image$`),
			skip: "docker build needs a Docker engine, which CI does not have (.ci/run installs none), and pulls the golang and distroless base images from registries; checked: make -n image"},

		{match: re(`^make screenshots$`),
			skip: "it runs TestDashboardAndInspectorInABrowser of this package, which this same suite runs, and writes the screenshots into the repository's docs/screenshots; checked: make -n screenshots"},
		{match: re(`^make build$`), run: (*readmeRun).makeBuild},
		{match: re(`^bin/tunnel expose `), run: (*readmeRun).expose},
		{match: re(`^(make demo|go run \./cmd/tunnel demo|(bin/)?tunnel demo)( |$)`), run: (*readmeRun).demo},
		{match: re(`^curl `), run: func(r *readmeRun, t *testing.T, c readmeCmd) { r.curl(t, c.line, c.heading) }},
		{match: re(`^bin/tunnel init `), run: (*readmeRun).initFlow},
		{match: re(`^bin/tunnel check-config `), run: (*readmeRun).checkConfig},
		{match: re(`^bin/tunnel (server|client) `), run: (*readmeRun).side},
		{match: re(`\| *bin/tunnel hash-token$`), run: (*readmeRun).hashToken},
		{match: re(`^source <\(bin/tunnel completion bash\)$`), run: (*readmeRun).completion},
		{match: re(`^make dist$`), run: (*readmeRun).makeDist},
		{match: re(`^make bench-micro$`), run: (*readmeRun).benchMicro},
	}
}

// readmeCmd is one command the README shows.
type readmeCmd struct {
	line    string // as run: comment removed, continuation lines joined
	comment string // the text after its '#': what the README says it does
	section string // the "## " heading it is under
	readme  int    // its line in README.md
	// heading is, for a command line of an output block, the block's
	// non-command line before it, which says what the command is for.
	heading string
}

// readmeDoc is what parseREADME finds.
type readmeDoc struct {
	cmds []readmeCmd
	// outputs holds output blocks: the lines of an unlabelled block, by the
	// command that the paragraph before the block names ("`make demo`
	// prints ..., for example:").
	outputs map[string][]string
}

var (
	codeSpanRx = regexp.MustCompile("`([^`]+)`")
	// placeholderRx finds what makes a code span syntax rather than a
	// command: <name>, FILE, [a|b], a|b.
	placeholderRx = regexp.MustCompile(`<[a-z][^>]*>|\b[A-Z]{3,}\b|\[[a-z|]+\]|[a-z]\|[a-z]`)
	commandWords  = map[string]bool{"make": true, "go": true, "curl": true, "bin/tunnel": true, "tunnel": true,
		"git": true, "echo": true, "source": true, "bash": true, "sh": true, "docker": true}
)

// parseREADME finds the commands of a Markdown text, in order, each once.
func parseREADME(text, repo string) readmeDoc {
	doc := readmeDoc{outputs: map[string][]string{}}
	seen := map[string]bool{}
	add := func(c readmeCmd) {
		if c.line == "" || seen[c.line] {
			return
		}
		seen[c.line] = true
		doc.cmds = append(doc.cmds, c)
	}
	var (
		section, lang, prevPara string
		inFence                 bool
		para                    []string
		paraStart, fenceStart   int
		block                   []string
	)
	flushPara := func() {
		if len(para) == 0 {
			return
		}
		joined := strings.Join(para, "\n")
		for _, m := range codeSpanRx.FindAllStringSubmatchIndex(joined, -1) {
			span := strings.Join(strings.Fields(joined[m[2]:m[3]]), " ")
			if isProseCommand(span, repo) {
				add(readmeCmd{line: span, section: section, readme: paraStart + strings.Count(joined[:m[0]], "\n")})
			}
		}
		prevPara, para = joined, nil
	}
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		n, trimmed := i+1, strings.TrimSpace(l)
		switch {
		case inFence && strings.HasPrefix(trimmed, "```"):
			inFence = false
			parseBlock(&doc, add, lang, block, fenceStart, section, prevPara, repo)
			prevPara = ""
		case inFence:
			block = append(block, l)
		case strings.HasPrefix(trimmed, "```"):
			flushPara()
			inFence, lang, block, fenceStart = true, strings.TrimSpace(strings.TrimPrefix(trimmed, "```")), nil, n
		case strings.HasPrefix(l, "#"):
			flushPara()
			prevPara = ""
			if h, ok := strings.CutPrefix(l, "## "); ok {
				section = strings.TrimSpace(h)
			}
		case trimmed == "":
			flushPara()
		default:
			if len(para) == 0 {
				paraStart = n
			}
			para = append(para, l)
		}
	}
	flushPara()
	return doc
}

// parseBlock adds the commands of a fenced block whose first line is line
// start+1. prevPara is the paragraph just before the block.
func parseBlock(doc *readmeDoc, add func(readmeCmd), lang string, block []string, start int, section, prevPara, repo string) {
	switch lang {
	case "sh", "bash", "shell", "console":
		for i := 0; i < len(block); i++ {
			n, l := start+1+i, block[i]
			for strings.HasSuffix(strings.TrimRight(l, " \t"), `\`) && i+1 < len(block) {
				i++
				l = strings.TrimRight(strings.TrimSuffix(strings.TrimRight(l, " \t"), `\`), " \t") + " " + strings.TrimSpace(block[i])
			}
			if lang == "console" {
				var ok bool
				if l, ok = strings.CutPrefix(strings.TrimSpace(l), "$ "); !ok {
					continue // output
				}
			}
			line, comment := splitComment(l)
			add(readmeCmd{line: line, comment: comment, section: section, readme: n})
		}
	case "":
		// Output, with the commands shown in it: a line is a command when
		// it starts with one.
		var out []string
		heading := ""
		for i, l := range block {
			l = strings.TrimSpace(l)
			if l == "" {
				continue
			}
			out = append(out, l)
			if f := strings.Fields(l); commandWords[f[0]] {
				line, comment := splitComment(l)
				add(readmeCmd{line: line, comment: comment, section: section, readme: start + 1 + i, heading: heading})
			} else {
				heading = l
			}
		}
		for _, m := range codeSpanRx.FindAllStringSubmatch(prevPara, -1) {
			if span := strings.Join(strings.Fields(m[1]), " "); isProseCommand(span, repo) {
				doc.outputs[span] = out
				break
			}
		}
	}
}

// isProseCommand tells whether a code span in prose is a whole command
// line, such as `make dist`, rather than a word (`curl`) or a syntax
// (`tunnel help COMMAND`).
func isProseCommand(span, repo string) bool {
	f := strings.Fields(span)
	if len(f) == 0 || placeholderRx.MatchString(span) {
		return false
	}
	if commandWords[f[0]] {
		return len(f) > 1
	}
	if strings.Contains(f[0], "/") { // a script of the repository, such as .ci/run
		fi, err := os.Stat(filepath.Join(repo, f[0]))
		return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
	}
	return false
}

// splitComment cuts a shell line at its comment: a '#' that starts a word
// outside quotes.
func splitComment(l string) (line, comment string) {
	var quote rune
	prev := ' '
	for i, c := range l {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (prev == ' ' || prev == '\t'):
			return strings.TrimSpace(l[:i]), strings.TrimSpace(l[i+1:])
		}
		prev = c
	}
	return strings.TrimSpace(l), ""
}

// readmeRun is a user following the README: a home directory of their own,
// a shell, and the commands still running in other terminals.
type readmeRun struct {
	t          *testing.T // the whole test: background commands live in it
	repo, home string
	env        []string
	doc        readmeDoc
	bg         []*bgCmd
}

func newReadmeRun(t *testing.T, repo string, doc readmeDoc) *readmeRun {
	r := &readmeRun{t: t, repo: repo, home: t.TempDir(), doc: doc}
	require.NoError(t, os.Mkdir(filepath.Join(r.home, "bin"), 0o755))
	require.NoError(t, os.Symlink(tunnelBin, filepath.Join(r.home, "bin", "tunnel")))
	// A user's environment: the tunnel on PATH, and nothing of a make that
	// may be running this suite (make test), whose MAKEFLAGS and MAKELEVEL
	// would change what a nested make prints and does.
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "PATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS":
		default:
			r.env = append(r.env, kv)
		}
	}
	r.env = append(r.env, "PATH="+filepath.Dir(tunnelBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	return r
}

// dir is where c runs: make and go need the repository; everything else
// runs in the user's own directory.
func (r *readmeRun) dir(line string) string {
	if f := strings.Fields(line); f[0] == "make" || f[0] == "go" || strings.HasPrefix(f[0], ".ci/") {
		return r.repo
	}
	return r.home
}

func (r *readmeRun) shell(ctx context.Context, line, dir string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", line)
	cmd.Dir, cmd.Env = dir, r.env
	// Its own process group, as a terminal gives each command: Ctrl-C
	// reaches the whole group, and a timeout kills all of it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs line in dir, waits up to d, requires exit 0 and returns stdout
// and stderr.
func (r *readmeRun) run(t *testing.T, line, dir string, d time.Duration) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := r.shell(ctx, line, dir)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%q (in %s) did not finish within %v\nstdout:\n%s\nstderr:\n%s", line, dir, d, o.String(), e.String())
	}
	require.NoError(t, err, "%q (in %s) failed\nstdout:\n%s\nstderr:\n%s", line, dir, o.String(), e.String())
	return o.String(), e.String()
}

// generic runs a command the test has nothing more to check of: exit 0.
func (r *readmeRun) generic(t *testing.T, c readmeCmd) {
	t.Logf("no outcome known for %q: checking it exits 0", c.line)
	r.run(t, c.line, r.dir(c.line), 5*time.Minute)
}

// checkSkipped checks the little there is to check of a command that is
// not run: that what it names exists.
func (r *readmeRun) checkSkipped(t *testing.T, c readmeCmd) {
	f := strings.Fields(c.line)
	switch {
	case f[0] == "make":
		r.run(t, "make -n "+strings.Join(f[1:], " "), r.repo, time.Minute)
	case f[0] == "git":
		out, _ := r.run(t, "git rev-parse --is-inside-work-tree", r.repo, time.Minute)
		require.Equal(t, "true", strings.TrimSpace(out))
		require.DirExists(t, filepath.Join(r.repo, "cmd", "tunnel"))
	default:
		fi, err := os.Stat(filepath.Join(r.repo, f[0]))
		require.NoError(t, err)
		require.NotZero(t, fi.Mode()&0o111, "%s is not executable", f[0])
	}
}

// bgCmd is a command left running, as in another terminal.
type bgCmd struct {
	c     readmeCmd
	kind  string // "demo", "server", "client"
	cmd   *exec.Cmd
	out   *notifyBuffer
	done  chan struct{}
	err   error
	state *os.ProcessState
}

// notifyBuffer is a process's output, which tells its readers when it
// grows.
type notifyBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func (b *notifyBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.changed)
	b.changed = make(chan struct{})
	return b.b.Write(p)
}

// snapshot returns the output so far and a channel closed when it grows.
func (b *notifyBuffer) snapshot() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String(), b.changed
}

func (b *notifyBuffer) String() string { s, _ := b.snapshot(); return s }

func (r *readmeRun) start(t *testing.T, c readmeCmd, kind string) *bgCmd {
	t.Helper()
	p := &bgCmd{c: c, kind: kind, out: &notifyBuffer{changed: make(chan struct{})}, done: make(chan struct{})}
	p.cmd = r.shell(context.Background(), c.line, r.dir(c.line))
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start(), c.line)
	go func() {
		p.err = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	r.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if r.t.Failed() {
			r.t.Logf("--- output of %q ---\n%s", c.line, p.out.String())
		}
	})
	r.bg = append(r.bg, p)
	return p
}

// waitFor waits up to d for the output to satisfy ok, and fails the test
// if the command exits first or the time passes.
func (p *bgCmd) waitFor(t *testing.T, what string, d time.Duration, ok func(out string) bool) string {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		out, grew := p.out.snapshot()
		if ok(out) {
			return out
		}
		select {
		case <-grew:
		case <-p.done:
			if out := p.out.String(); ok(out) {
				return out
			}
			t.Fatalf("%q exited (%v) before it printed %s; output:\n%s", p.c.line, p.err, what, p.out.String())
		case <-deadline.C:
			t.Fatalf("%q did not print %s within %v; output:\n%s", p.c.line, what, d, p.out.String())
		}
	}
}

func (p *bgCmd) waitRx(t *testing.T, rx *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	out := p.waitFor(t, fmt.Sprintf("a line matching %q", rx), d, rx.MatchString)
	return rx.FindStringSubmatch(out)
}

// stop stops p as the README says and checks that it stopped cleanly: a
// demo by Ctrl-C (SIGINT to its process group, as a terminal sends it), a
// client by Ctrl-C in its terminal, a server by SIGTERM (a service
// manager's stop). Each exits 0, make demo aside: GNU make, given Ctrl-C
// itself, waits for its recipe and then ends by the same signal (the shell
// says 130) whatever the recipe did, so there the recipe's exit 0 shows as
// make printing no "make: *** ... Error" line.
func (p *bgCmd) stop(t *testing.T) {
	t.Helper()
	sig := syscall.SIGINT
	if p.kind == "server" {
		sig = syscall.SIGTERM
	}
	select {
	case <-p.done:
		t.Fatalf("%q exited (%v) before it was stopped; output:\n%s", p.c.line, p.err, p.out.String())
	default:
	}
	require.NoError(t, syscall.Kill(-p.cmd.Process.Pid, sig))
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%q still running 30s after %v; output:\n%s", p.c.line, sig, p.out.String())
	}
	out := p.out.String()
	if strings.HasPrefix(p.c.line, "make ") {
		ws, ok := p.state.Sys().(syscall.WaitStatus)
		require.True(t, ok)
		require.True(t, p.state.Success() || (ws.Signaled() && ws.Signal() == sig),
			"%q ended with %v after %v; output:\n%s", p.c.line, p.err, sig, out)
		require.NotRegexp(t, `(?m)^make(\[\d+\])?: \*\*\*`, out, "make reports its recipe failed after %v", sig)
	} else {
		require.NoError(t, p.err, "%q after %v must exit 0; output:\n%s", p.c.line, sig, out)
	}
	switch p.kind {
	case "demo":
		require.Contains(t, out, "demo stopped")
	case "server":
		require.Contains(t, out, `msg="server stopped"`)
	case "client":
		require.Contains(t, out, `msg="client stopped"`)
	}
}

// stopAll stops what is running, the last started first (the client
// before its server).
func (r *readmeRun) stopAll() {
	for i := len(r.bg) - 1; i >= 0; i-- {
		p := r.bg[i]
		r.t.Run("stop "+p.c.line, p.stop)
	}
	r.bg = nil
}

// demo runs make demo or tunnel demo: it must print what the README shows
// it printing, or, for a demo with other ports, curl lines with those
// ports, which are then run. The demos share the tunnel's port, so one
// that is running is stopped first, as the README's reader stops the demo
// with Ctrl-C before starting it again with other ports.
func (r *readmeRun) demo(t *testing.T, c readmeCmd) {
	for i := len(r.bg) - 1; i >= 0; i-- {
		if p := r.bg[i]; p.kind == "demo" {
			t.Run("stop "+p.c.line, p.stop)
			r.bg = append(r.bg[:i], r.bg[i+1:]...)
		}
	}
	p := r.start(t, c, "demo")
	if want := r.doc.outputs[c.line]; len(want) > 0 {
		// make builds first: from a cold cache that takes minutes.
		p.waitFor(t, "the lines README.md shows:\n"+strings.Join(want, "\n"), 5*time.Minute, func(out string) bool {
			return linesInOrder(out, want)
		})
		return
	}
	out := p.waitFor(t, "Press Ctrl-C to stop", 5*time.Minute, func(out string) bool {
		return strings.Contains(out, "Press Ctrl-C to stop")
	})
	for flag, curl := range map[string]string{"public": "curl -H 'Host: app.demo.localhost' http://%s/hello", "forward": "curl http://%s/hello"} {
		if m := regexp.MustCompile(`-?-` + flag + `[ =](\S+)`).FindStringSubmatch(c.line); m != nil {
			require.Contains(t, out, fmt.Sprintf(curl, m[1]), "-%s %s: the printed curl line names that address", flag, m[1])
		}
	}
	var printed []string
	heading := ""
	for l := range strings.SplitSeq(out, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "curl ") {
			printed = append(printed, l)
			t.Run(l, func(t *testing.T) { r.curl(t, l, heading) })
		} else if l != "" {
			heading = l
		}
	}
	require.Len(t, printed, 2, "one curl line per direction")
}

// linesInOrder tells whether out has each of want's lines, in that order,
// indentation aside.
func linesInOrder(out string, want []string) bool {
	i := 0
	for l := range strings.SplitSeq(out, "\n") {
		if i < len(want) && strings.TrimSpace(l) == want[i] {
			i++
		}
	}
	return i == len(want)
}

// curl runs a curl line: it answers "hello from the upstream near ...", and
// near which side the line's heading says ("... -> upstream near the
// client):").
func (r *readmeRun) curl(t *testing.T, line, heading string) {
	out, _ := r.run(t, line, r.home, time.Minute)
	want := "hello from the upstream near "
	if m := regexp.MustCompile(`upstream near (the \w+)\)`).FindStringSubmatch(heading); m != nil {
		want += m[1]
	}
	require.True(t, strings.HasPrefix(out, want), "%q answered %q, not %q...", line, out, want)
}

// makeBuild: "bin/tunnel, stamped: bin/tunnel version".
func (r *readmeRun) makeBuild(t *testing.T, c readmeCmd) {
	out, _ := r.run(t, c.line, r.repo, 5*time.Minute)
	m := regexp.MustCompile(`Version=([^"\s]+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "make build does not stamp a version:\n%s", out)
	require.FileExists(t, filepath.Join(r.repo, "bin", "tunnel"))
	v, _ := r.run(t, "bin/tunnel version", r.repo, time.Minute)
	require.True(t, strings.HasPrefix(v, "tunnel "+m[1]+" ("), "bin/tunnel version says %q; make build stamped %s", v, m[1])
}

// expose: with the user's app on the port the command names (the test
// serves one there, which answers as the README's curl expects), it prints
// what the README's comment says it prints ("prints Forwarding URL"), and
// keeps serving, as in another terminal.
func (r *readmeRun) expose(t *testing.T, c readmeCmd) {
	f := strings.Fields(c.line)
	require.GreaterOrEqual(t, len(f), 4, "%q: expose KIND PORT", c.line)
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", f[3]))
	require.NoError(t, err, "the README's app port %s must be free for the test to play the user's app", f[3])
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello from the upstream near the client (the user's app)\n")
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = app.Serve(ln) }()
	r.t.Cleanup(func() { _ = app.Close() })
	p := r.start(t, c, "expose")
	m := regexp.MustCompile(`\bprints (.+)$`).FindStringSubmatch(c.comment)
	require.NotNil(t, m, "the README's comment says what %q prints once it is up (# prints ...)", c.line)
	words := strings.Fields(m[1])
	for i, w := range words {
		words[i] = regexp.QuoteMeta(w)
	}
	p.waitRx(t, regexp.MustCompile(strings.Join(words, `\s+`)), 30*time.Second)
}

// initFlow: "key, token, qtunnel/server.yaml and client.yaml".
func (r *readmeRun) initFlow(t *testing.T, c readmeCmd) {
	r.run(t, c.line, r.home, time.Minute)
	dir := "."
	f := strings.Fields(c.line)[2:]
	for i := 0; i < len(f); i++ {
		if !strings.HasPrefix(f[i], "-") {
			dir = f[i]
			break
		}
		if !strings.Contains(f[i], "=") {
			i++ // the flag's value
		}
	}
	for _, name := range []string{"server-state/identity.key", "client.token", "server.yaml", "client.yaml"} {
		require.FileExists(t, filepath.Join(r.home, dir, name))
	}
}

// checkConfig: a file init wrote has no problems.
func (r *readmeRun) checkConfig(t *testing.T, c readmeCmd) {
	out, errOut := r.run(t, c.line, r.home, time.Minute)
	require.Regexp(t, `: ok \(`, out, "stderr: %s", errOut)
}

// side starts a server or a client, ready once it logs what the README's
// comment says it logs: the text after "logs ", as it appears in the log
// line, "..." standing for any text (logs "server started" ...
// pin="sha256:...").
func (r *readmeRun) side(t *testing.T, c readmeCmd) {
	kind := strings.Fields(c.line)[1]
	p := r.start(t, c, kind)
	m := regexp.MustCompile(`\blogs (.+)$`).FindStringSubmatch(c.comment)
	require.NotNil(t, m, "the README's comment says what %q logs once it is up (# logs ...): the test waits for that", c.line)
	rx := regexp.MustCompile(strings.ReplaceAll(regexp.QuoteMeta(strings.TrimSpace(m[1])), `\.\.\.`, `.*`))
	p.waitRx(t, rx, 30*time.Second)
}

// hashToken: the token's SHA-256, in hex, as token_sha256 takes it.
func (r *readmeRun) hashToken(t *testing.T, c readmeCmd) {
	out, _ := r.run(t, c.line, r.home, time.Minute)
	m := regexp.MustCompile(`^echo -n '([^']*)' \|`).FindStringSubmatch(c.line)
	require.NotNil(t, m, "cannot tell the token of %q", c.line)
	sum := sha256.Sum256([]byte(m[1]))
	require.Equal(t, hex.EncodeToString(sum[:]), strings.TrimSpace(out))
}

// completion: after the README's line, bash completes tunnel (and
// bin/tunnel: bash looks a path's last element up too).
func (r *readmeRun) completion(t *testing.T, c readmeCmd) {
	out, _ := r.run(t, c.line+" && complete -p tunnel", r.home, time.Minute)
	require.Regexp(t, `^complete .*-F \S+ tunnel\s*$`, out)
}

// makeDist: "static release binaries ... with checksums".
func (r *readmeRun) makeDist(t *testing.T, c readmeCmd) {
	out, _ := r.run(t, c.line, r.repo, 10*time.Minute)
	dist := filepath.Join(r.repo, "dist")
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	require.NoError(t, err)
	names := map[string]bool{}
	for l := range strings.SplitSeq(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(l, "  ")
		require.True(t, ok, "SHA256SUMS line %q", l)
		b, err := os.ReadFile(filepath.Join(dist, name))
		require.NoError(t, err)
		got := sha256.Sum256(b)
		require.Equal(t, sum, hex.EncodeToString(got[:]), "dist/%s does not match SHA256SUMS", name)
		names[name] = true
	}
	host := "tunnel-" + runtime.GOOS + "-" + runtime.GOARCH
	if !names[host] {
		t.Logf("make dist builds no %s; its binaries are checked against SHA256SUMS only", host)
		return
	}
	m := regexp.MustCompile(`dist: \S*` + regexp.QuoteMeta(host) + ` \(([^)]+)\)`).FindStringSubmatch(out)
	require.NotNil(t, m, "make dist does not say the version of %s:\n%s", host, out)
	v, _ := r.run(t, filepath.Join(dist, host)+" version", r.home, time.Minute)
	require.True(t, strings.HasPrefix(v, "tunnel "+m[1]+" ("), "dist/%s version says %q, make dist said %s", host, v, m[1])
	if runtime.GOOS == "linux" {
		f, err := elf.Open(filepath.Join(dist, host))
		require.NoError(t, err)
		defer f.Close()
		for _, p := range f.Progs {
			require.NotEqual(t, elf.PT_INTERP, p.Type, "dist/%s is not static: it names a dynamic loader", host)
		}
	}
}

// benchMicro: the benchmarks run, with allocations.
func (r *readmeRun) benchMicro(t *testing.T, c readmeCmd) {
	out, _ := r.run(t, c.line, r.repo, 10*time.Minute)
	require.Contains(t, out, "allocs/op")
	require.NotRegexp(t, `(?m)^(FAIL|--- FAIL)`, out)
}
