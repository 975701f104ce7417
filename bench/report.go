package bench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"os"
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
	fmt.Fprintln(tw, "scenario\ttarget\tthroughput\tvs direct\tp50 µs\tp99 µs\tp99.9 µs\terrors\tsrv CPU s/1k\tcli CPU s/1k\tsrv peak MiB\tcli peak MiB\t")
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
		rss := [2]string{"-", "-"}
		if row.ServerPeakRSS > 0 {
			rss = [2]string{fmt.Sprintf("%.1f", mib(row.ServerPeakRSS)), fmt.Sprintf("%.1f", mib(row.ClientPeakRSS))}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", row.Scenario, row.Target, tput, ratio,
			lat[0], lat[1], lat[2], errs, cpu[0], cpu[1], rss[0], rss[1])
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

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteSVG draws throughput relative to direct for each scenario: one bar
// per tunnel direction, with direct at 100%.
func (r *Report) WriteSVG(w io.Writer) error {
	type group struct {
		name   string
		values [3]float64 // direct, reverse, forward, as fractions of direct
		labels [3]string
	}
	var groups []group
	for _, s := range []string{"h1-c1", "h1-c64", "h1-open80", "h2-mux64", "bulk-up", "bulk-down"} {
		d := r.find(s, "direct")
		if d == nil {
			continue
		}
		g := group{name: s}
		base := d.Load.RPS
		unit := "req/s"
		if d.MiBps > 0 {
			base, unit = d.MiBps, "MiB/s"
		}
		if base <= 0 {
			continue
		}
		for i, t := range []string{"direct", "reverse", "forward"} {
			row := r.find(s, t)
			if row == nil {
				continue
			}
			v := row.Load.RPS
			if row.MiBps > 0 {
				v = row.MiBps
			}
			g.values[i] = v / base
			g.labels[i] = fmt.Sprintf("%.0f %s", v, unit)
		}
		groups = append(groups, g)
	}
	const width, height, top, bottom, left = 900, 380, 40, 60, 50
	plotH := float64(height - top - bottom)
	gw := float64(width-left-20) / float64(max(1, len(groups)))
	colors := [3]string{"#9e9e9e", "#1f77b4", "#ff7f0e"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14">qtunnel throughput relative to a direct connection (same run, %s)</text>`+"\n",
		left, html.EscapeString(r.Machine.CPU))
	for _, pct := range []float64{0, 0.25, 0.5, 0.75, 1} {
		y := float64(top) + plotH*(1-pct)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%.0f%%</text>`+"\n",
			left, width-20, y, y, left-5, y+4, pct*100)
	}
	for gi, g := range groups {
		x0 := float64(left) + float64(gi)*gw + gw*0.1
		bw := gw * 0.8 / 3
		for i, v := range g.values {
			h := plotH * min(v, 1.2) / 1.0
			if h > plotH {
				h = plotH
			}
			x := x0 + float64(i)*bw
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s (%.0f%%)</title></rect>`+"\n",
				x, float64(top)+plotH-h, bw-2, h, colors[i], g.name, []string{"direct", "reverse", "forward"}[i], g.labels[i], v*100)
			if i > 0 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.0f%%</text>`+"\n", x+bw/2, float64(top)+plotH-h-3, v*100)
			}
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x0+gw*0.4, height-bottom+16, g.name)
	}
	for i, name := range []string{"direct", "reverse tunnel", "forward tunnel"} {
		x := left + i*140
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			x, height-22, colors[i], x+16, height-12, name)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
