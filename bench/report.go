package bench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
)

// Machine describes where a run happened.
type Machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	Kernel     string `json:"kernel"`
	Go         string `json:"go"`
	RmemMax    string `json:"net_core_rmem_max"`
	WmemMax    string `json:"net_core_wmem_max"`
	QUICRcvBuf int    `json:"quic_udp_rcvbuf"`
	QUICSndBuf int    `json:"quic_udp_sndbuf"`
}

func firstLine(path, prefix string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown"
}

func readMachine() Machine {
	kernel := firstLine("/proc/version", "Linux version")
	if f := strings.Fields(kernel); len(f) > 0 {
		kernel = f[0]
	}
	return Machine{
		CPU: firstLine("/proc/cpuinfo", "model name"), Cores: runtime.NumCPU(), Kernel: kernel, Go: runtime.Version(),
		RmemMax: firstLine("/proc/sys/net/core/rmem_max", ""), WmemMax: firstLine("/proc/sys/net/core/wmem_max", ""),
	}
}

// Bar is one line of the performance bar, checked against a run.
type Bar struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Pass bool   `json:"pass"`
}

func checkBars(r *Report) []Bar {
	var bars []Bar
	add := func(name, want, got string, pass bool) { bars = append(bars, Bar{name, want, got, pass}) }
	for _, dir := range []string{"reverse", "forward"} {
		if row := r.find("h1-c64", dir); row != nil {
			add("h1 1 KiB, 64 conns, "+dir, ">= 0.33x direct", fmt.Sprintf("%.2fx", row.Ratio), row.Ratio >= 0.33)
		}
		if row := r.find("grpc-unary-c64", dir); row != nil {
			add("gRPC unary, 64 streams, "+dir, ">= 0.33x direct", fmt.Sprintf("%.2fx", row.Ratio), row.Ratio >= 0.33)
		}
		if row := r.find("h1-c1", dir); row != nil {
			add("h1 1 conn added p50, "+dir, "<= 200 µs", fmt.Sprintf("%.0f µs", row.AddedP50), row.AddedP50 <= 200)
			add("h1 1 conn added p99, "+dir, "<= 500 µs", fmt.Sprintf("%.0f µs", row.AddedP99), row.AddedP99 <= 500)
		}
		if row := r.find("h1-open80", dir); row != nil {
			add("open loop 80%, "+dir, "0 errors, p99.9 <= 10 ms",
				fmt.Sprintf("%d errors, p99.9 %.1f ms", row.Load.Errors, row.Load.P999/1000), row.Load.Errors == 0 && row.Load.P999 <= 10000)
		}
		for _, s := range []string{"bulk-up", "bulk-down"} {
			if row := r.find(s, dir); row != nil && row.Ratio > 0 {
				add(s+", "+dir, ">= 0.75x raw quic-go bulk", fmt.Sprintf("%.2fx (%.0f MiB/s)", row.Ratio, row.MiBps), row.Ratio >= 0.75)
			}
		}
		if row := r.find("h1-rate1000", dir); row != nil {
			peak := max(row.ServerPeakRSS, row.ClientPeakRSS)
			add("peak RSS at 1000 req/s, "+dir, "<= 30 MiB each side",
				fmt.Sprintf("server %.1f, client %.1f MiB", mib(row.ServerPeakRSS), mib(row.ClientPeakRSS)), peak <= 30<<20)
		}
		if row := r.find("idle", dir); row != nil {
			per := max(row.ServerPerConn, row.ClientPerConn)
			add("idle keep-alive conn, "+dir, "<= 40 KiB each",
				fmt.Sprintf("server %.1f, client %.1f KiB", row.ServerPerConn/1024, row.ClientPerConn/1024), per <= 40<<10)
		}
	}
	return bars
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// WriteTable prints the human table and the bar.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "machine: %s, %d cores, Linux %s, %s; net.core.rmem_max=%s wmem_max=%s; quic-go UDP buffers rcv=%d snd=%d\n",
		r.Machine.CPU, r.Machine.Cores, r.Machine.Kernel, r.Machine.Go, r.Machine.RmemMax, r.Machine.WmemMax, r.Machine.QUICRcvBuf, r.Machine.QUICSndBuf)
	fmt.Fprintf(w, "options: %s; took %.0fs\n\n", r.Options, r.Duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\tthroughput\tvs direct\tp50 µs\tp99 µs\tp99.9 µs\terrors\tsrv CPU s/1k\tcli CPU s/1k\tload CPU s/1k\tsrv peak MiB\tcli peak MiB\t")
	for _, row := range r.Rows {
		tput := fmt.Sprintf("%.0f req/s", row.Load.RPS)
		lat := [3]string{fmt.Sprintf("%.0f", row.Load.P50), fmt.Sprintf("%.0f", row.Load.P99), fmt.Sprintf("%.0f", row.Load.P999)}
		errs := fmt.Sprint(row.Load.Errors)
		switch {
		case row.MiBps > 0:
			tput = fmt.Sprintf("%.0f MiB/s", row.MiBps)
			lat, errs = [3]string{"-", "-", "-"}, "-"
		case row.Scenario == "idle":
			tput = fmt.Sprintf("+%.1f/+%.1f KiB/conn", row.ServerPerConn/1024, row.ClientPerConn/1024)
			lat, errs = [3]string{"-", "-", "-"}, "-"
		}
		ratio := "-"
		if row.Ratio > 0 && row.Target != "direct" {
			ratio = fmt.Sprintf("%.2fx", row.Ratio)
			if strings.HasPrefix(row.Scenario, "bulk") {
				ratio += " quic"
			}
		}
		cpu := [2]string{"-", "-"}
		if row.ServerCPUPer1k > 0 || row.ClientCPUPer1k > 0 {
			cpu = [2]string{fmt.Sprintf("%.3f", row.ServerCPUPer1k), fmt.Sprintf("%.3f", row.ClientCPUPer1k)}
		}
		load := "-"
		if row.HarnessCPUPer1k > 0 {
			load = fmt.Sprintf("%.3f", row.HarnessCPUPer1k)
		}
		rss := [2]string{"-", "-"}
		if row.ServerPeakRSS > 0 {
			rss = [2]string{fmt.Sprintf("%.1f", mib(row.ServerPeakRSS)), fmt.Sprintf("%.1f", mib(row.ClientPeakRSS))}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", row.Scenario, row.Target, tput, ratio,
			lat[0], lat[1], lat[2], errs, cpu[0], cpu[1], load, rss[0], rss[1])
	}
	_ = tw.Flush()
	if len(r.Bars) > 0 {
		fmt.Fprintln(w, "\nthe bar:")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, b := range r.Bars {
			mark := "PASS"
			if !b.Pass {
				mark = "MISS"
			}
			fmt.Fprintf(tw, "  %s\t%s\twant %s\tgot %s\n", mark, b.Name, b.Want, b.Got)
		}
		_ = tw.Flush()
	}
}

// Save writes results.json (WriteJSON) and chart.svg (WriteSVG) to dir,
// creating it if need be, and returns their paths.
func (r *Report) Save(dir string) (jsonPath, svgPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	jsonPath, svgPath = filepath.Join(dir, "results.json"), filepath.Join(dir, "chart.svg")
	for _, f := range []struct {
		path  string
		write func(io.Writer) error
	}{{jsonPath, r.WriteJSON}, {svgPath, r.WriteSVG}} {
		file, err := os.Create(f.path)
		if err != nil {
			return "", "", err
		}
		err = f.write(file)
		if cerr := file.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", "", err
		}
	}
	return jsonPath, svgPath, nil
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteSVG draws three panels: request throughput relative to direct,
// bulk throughput relative to raw quic-go, and the latency a tunnel adds
// at one connection against the bar.
func (r *Report) WriteSVG(w io.Writer) error {
	var b strings.Builder
	const width, height = 1000, 360
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&b, `<text x="10" y="18" font-size="13">qtunnel vs direct, measured in one run (%s, %d cores, %s)</text>`+"\n",
		html.EscapeString(r.Machine.CPU), r.Machine.Cores, html.EscapeString(r.Machine.Go))

	var reqs []svgGroup
	for _, s := range []string{"h1-c1", "h1-c64", "h2-mux64"} {
		if g, ok := r.ratioGroup(s, "direct", func(x *Row) float64 { return x.Load.RPS }); ok {
			reqs = append(reqs, g)
		}
	}
	var bulk []svgGroup
	for _, s := range []string{"bulk-up", "bulk-down"} {
		q := r.find("quic-bulk", "quic")
		rev, fwd := r.find(s, "reverse"), r.find(s, "forward")
		if q == nil || rev == nil || fwd == nil || q.MiBps <= 0 {
			continue
		}
		bulk = append(bulk, svgGroup{name: s, values: []float64{1, rev.MiBps / q.MiBps, fwd.MiBps / q.MiBps},
			labels: []string{fmt.Sprintf("%.0f MiB/s", q.MiBps), fmt.Sprintf("%.0f MiB/s", rev.MiBps), fmt.Sprintf("%.0f MiB/s", fwd.MiBps)}})
	}
	var lat []svgGroup
	if rev, fwd := r.find("h1-c1", "reverse"), r.find("h1-c1", "forward"); rev != nil && fwd != nil {
		lat = append(lat,
			svgGroup{name: "added p50", values: []float64{200, rev.AddedP50, fwd.AddedP50}},
			svgGroup{name: "added p99", values: []float64{500, rev.AddedP99, fwd.AddedP99}})
		for i := range lat {
			for _, v := range lat[i].values {
				lat[i].labels = append(lat[i].labels, fmt.Sprintf("%.0f µs", v))
			}
		}
	}
	panel(&b, 10, 40, 420, 260, "requests/s, share of direct", []string{"direct", "reverse", "forward"}, reqs, 1, true)
	panel(&b, 450, 40, 250, 260, "bulk MiB/s, share of raw quic-go", []string{"quic-go", "reverse", "forward"}, bulk, 1, true)
	panel(&b, 720, 40, 270, 260, "latency added at 1 connection (µs)", []string{"the bar", "reverse", "forward"}, lat, 0, false)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

type svgGroup struct {
	name   string
	values []float64
	labels []string
}

func (r *Report) ratioGroup(scenario, base string, v func(*Row) float64) (svgGroup, bool) {
	d := r.find(scenario, base)
	if d == nil || v(d) <= 0 {
		return svgGroup{}, false
	}
	g := svgGroup{name: scenario}
	for _, t := range []string{base, "reverse", "forward"} {
		row := r.find(scenario, t)
		if row == nil {
			return svgGroup{}, false
		}
		g.values = append(g.values, v(row)/v(d))
		g.labels = append(g.labels, fmt.Sprintf("%.0f req/s", v(row)))
	}
	return g, true
}

var svgColors = []string{"#9e9e9e", "#1f77b4", "#ff7f0e"}

// panel draws grouped bars in a box at (x, y). With percent, values are
// fractions and the axis reads 0-100%; otherwise the axis fits the data.
func panel(b *strings.Builder, x, y, w, h int, title string, legend []string, groups []svgGroup, _ float64, percent bool) {
	const top, bottom, left = 32, 50, 45
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="12">%s</text>`+"\n", x, y+12, html.EscapeString(title))
	maxV := 1.0
	if !percent {
		maxV = 0
		for _, g := range groups {
			for _, v := range g.values {
				maxV = max(maxV, v)
			}
		}
		if maxV <= 0 {
			maxV = 1
		}
		maxV *= 1.1
	}
	plotH := float64(h - top - bottom)
	y0 := float64(y + top)
	for i := 0; i <= 4; i++ {
		f := float64(i) / 4
		yy := y0 + plotH*(1-f)
		label := fmt.Sprintf("%.0f", f*maxV)
		if percent {
			label = fmt.Sprintf("%.0f%%", f*100)
		}
		fmt.Fprintf(b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e0e0e0"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
			x+left, x+w, yy, yy, x+left-4, yy+4, label)
	}
	if len(groups) == 0 {
		fmt.Fprintf(b, `<text x="%d" y="%.1f" fill="#888">not measured</text>`+"\n", x+left+10, y0+plotH/2)
		return
	}
	gw := float64(w-left) / float64(len(groups))
	for gi, g := range groups {
		x0 := float64(x+left) + float64(gi)*gw + gw*0.1
		bw := gw * 0.8 / float64(len(g.values))
		for i, v := range g.values {
			bh := plotH * min(v/maxV, 1)
			xx := x0 + float64(i)*bw
			label := ""
			if i < len(g.labels) {
				label = g.labels[i]
			}
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				xx, y0+plotH-bh, bw-2, bh, svgColors[i%len(svgColors)], g.name, legend[i%len(legend)], html.EscapeString(label))
			text := fmt.Sprintf("%.0f", v)
			if percent {
				text = fmt.Sprintf("%.0f%%", v*100)
			}
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", xx+bw/2-1, y0+plotH-bh-3, text)
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x0+gw*0.4, y0+plotH+15, html.EscapeString(g.name))
	}
	for i, name := range legend {
		lx := x + left + i*(w-left)/len(legend)
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			lx, y+h-18, svgColors[i], lx+14, y+h-9, html.EscapeString(name))
	}
}
