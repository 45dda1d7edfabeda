package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
)

// point is one measurement: a system at one concurrency, QoS and payload,
// and for (e) batch size.
type point struct {
	System      string `json:"system"` // a, b, c, d or e
	QoS         *int   `json:"qos"`    // null for (a), where it means nothing
	Concurrency int    `json:"concurrency"`
	Payload     int    `json:"payload_bytes"`
	// Batch is (e)'s requests per POST /batch; 0 elsewhere. A batch call
	// counts as that many requests in Requests, ReqPerSec, CPU and
	// AllocsPerReq; the latencies and Errors are of whole calls.
	Batch         int     `json:"batch_size,omitempty"`
	Requests      int     `json:"requests"` // completed in the window
	Seconds       float64 `json:"window_seconds"`
	ReqPerSec     float64 `json:"req_per_sec"`
	BatchesPerSec float64 `json:"batches_per_sec,omitempty"` // (e)'s batch calls
	P50           float64 `json:"p50_us"`
	P99           float64 `json:"p99_us"`
	P999          float64 `json:"p999_us"`
	Errors        int64   `json:"errors"`
	Error         string  `json:"error,omitempty"` // the point failed: see why
	// CPU is microseconds of CPU time (user + system) per request, by
	// process role ("bench" is the load generator), and their total.
	CPU map[string]float64 `json:"cpu_us_per_request,omitempty"`
	// Cores is how many CPU cores all its processes kept busy together:
	// at the machine's count the point was CPU-bound, and its req/s says
	// as much about the load generator's share as about the system.
	Cores float64 `json:"cores_busy,omitempty"`
	// OtherCores is how many cores the rest of the machine kept busy
	// meanwhile: more than a few hundredths, and something else competed
	// with the point for CPU.
	OtherCores *float64 `json:"other_cores_busy,omitempty"`
	// AllocsPerReq is mqttgw's heap allocations per request, from its
	// go_memstats_mallocs_total; null where mqttgw is not involved.
	AllocsPerReq *float64 `json:"mqttgw_allocs_per_request,omitempty"`
}

// summary is the point's progress line.
func (p point) summary() string {
	name := systemNames[p.System]
	if p.Batch > 0 {
		name += " ×" + strconv.Itoa(p.Batch)
	}
	s := fmt.Sprintf("%-20s qos=%s c=%-3d %6s B: %8.0f req/s  p50 %s  p99 %s",
		name, qosString(p.QoS), p.Concurrency, strconv.Itoa(p.Payload), p.ReqPerSec, latency(p.P50), latency(p.P99))
	if p.Error != "" {
		s += "  FAILED: " + p.Error
	}
	return s
}

// ratio compares the systems' throughput at one concurrency and QoS.
type ratio struct {
	Concurrency int      `json:"concurrency"`
	QoS         int      `json:"qos"`
	COverB      *float64 `json:"c_over_b,omitempty"` // mqttgw vs native MQTT
	COverA      *float64 `json:"c_over_a,omitempty"` // mqttgw vs bare HTTP
	DOverC      *float64 `json:"d_over_c,omitempty"` // mosquitto vs embedded broker
}

// batchRatio compares (e) at one batch size with one request per round
// trip, natively (b) and through mqttgw (c), at the same concurrency and
// QoS. The goal is an e/b beyond 2.
type batchRatio struct {
	Concurrency int      `json:"concurrency"`
	QoS         int      `json:"qos"`
	Batch       int      `json:"batch_size"`
	EOverB      *float64 `json:"e_over_b,omitempty"` // /batch vs native MQTT
	EOverC      *float64 `json:"e_over_c,omitempty"` // /batch vs /rpc
}

// report is everything one run measured.
type report struct {
	Started      time.Time      `json:"started"`
	Elapsed      float64        `json:"elapsed_seconds"`
	CPUs         int            `json:"cpus"`
	GoVersion    string         `json:"go_version"`
	Duration     string         `json:"duration_per_point"`
	Warmup       string         `json:"warmup_per_point"`
	Payload      int            `json:"payload_bytes"`
	Points       []point        `json:"points"`
	Ratios       []ratio        `json:"ratios"`
	Batch        []point        `json:"batch"`
	BatchRatios  []batchRatio   `json:"batch_ratios"`
	PayloadCurve []point        `json:"payload_curve"`
	Memory       []memoryResult `json:"memory"`
	Notes        []string       `json:"notes,omitempty"`
}

// computeRatios fills Ratios from Points: (c)/(b), (c)/(a) and (d)/(c)
// of req/s at each concurrency and QoS; (a) has no QoS and counts for
// both. Then BatchRatios: (e)/(b) and (e)/(c) of each batch point. A
// failed point makes no ratio.
func (rep *report) computeRatios() {
	type key struct {
		sys       string
		conc, qos int
	}
	rps := map[key]float64{}
	var order []key
	for _, p := range rep.Points {
		if p.Error != "" {
			continue
		}
		if p.QoS == nil {
			rps[key{p.System, p.Concurrency, -1}] = p.ReqPerSec
			continue
		}
		k := key{p.System, p.Concurrency, *p.QoS}
		rps[k] = p.ReqPerSec
		if p.System == sysGateway {
			order = append(order, k)
		}
	}
	div := func(a, b float64, okA, okB bool) *float64 {
		if !okA || !okB || b == 0 {
			return nil
		}
		r := a / b
		return &r
	}
	rep.Ratios = nil
	for _, k := range order {
		c := rps[k]
		b, okB := rps[key{sysNative, k.conc, k.qos}]
		a, okA := rps[key{sysEcho, k.conc, -1}]
		d, okD := rps[key{sysExternal, k.conc, k.qos}]
		rep.Ratios = append(rep.Ratios, ratio{
			Concurrency: k.conc, QoS: k.qos,
			COverB: div(c, b, true, okB),
			COverA: div(c, a, true, okA),
			DOverC: div(d, c, okD, true),
		})
	}
	rep.BatchRatios = nil
	for _, p := range rep.Batch {
		if p.Error != "" {
			continue
		}
		b, okB := rps[key{sysNative, p.Concurrency, *p.QoS}]
		c, okC := rps[key{sysGateway, p.Concurrency, *p.QoS}]
		rep.BatchRatios = append(rep.BatchRatios, batchRatio{
			Concurrency: p.Concurrency, QoS: *p.QoS, Batch: p.Batch,
			EOverB: div(p.ReqPerSec, b, true, okB),
			EOverC: div(p.ReqPerSec, c, true, okC),
		})
	}
}

// disturbedAt is how many cores other processes may use during a point
// before the report warns that they competed with it.
const disturbedAt = 0.2

// noteDisturbed adds a note when other processes took CPU from points:
// on a 2-core machine even half a core shifts req/s by a quarter.
func (rep *report) noteDisturbed() {
	n, all := 0, 0
	for _, list := range [][]point{rep.Points, rep.Batch, rep.PayloadCurve} {
		for _, p := range list {
			all++
			if p.OtherCores != nil && *p.OtherCores > disturbedAt {
				n++
			}
		}
	}
	if n > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d of %d points ran while other processes used more than %.1f cores (column other): their figures are disturbed; run again on a quiet machine", n, all, disturbedAt))
	}
}

// failures lists what failed, one line each.
func (rep *report) failures() []string {
	var out []string
	for _, list := range [][]point{rep.Points, rep.Batch, rep.PayloadCurve} {
		for _, p := range list {
			if p.Error != "" {
				out = append(out, p.summary())
			}
		}
	}
	for _, m := range rep.Memory {
		if m.Error != "" {
			out = append(out, fmt.Sprintf("memory, %d pending: %s", m.Pending, m.Error))
		}
	}
	return out
}

func (rep *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// writeTables prints the report as aligned text tables.
func (rep *report) writeTables(w io.Writer) error {
	fmt.Fprintf(w, "mqttgw-bench: %d CPUs, %s, %s per point after %s warmup, %d-byte payload; took %.1fs\n",
		rep.CPUs, rep.GoVersion, rep.Duration, rep.Warmup, rep.Payload, rep.Elapsed)
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	if len(rep.Points) > 0 {
		fmt.Fprintln(w, "\nThroughput and latency (closed loop). cpu:* is µs of CPU per request in each process")
		fmt.Fprintln(w, "(bench = this load generator); cores = CPU cores all of them kept busy (at the machine's")
		fmt.Fprintln(w, "count the point is CPU-bound); other = cores the rest of the machine used meanwhile (~0;")
		fmt.Fprintln(w, "±0.05 is rounding of 10 ms ticks); allocs = mqttgw's heap allocations per request.")
		tw := newTable(w)
		fmt.Fprintf(tw, "%s\tqos\tconc\treq/s\tp50\tp99\tp99.9\terrors\tcpu:bench\tcpu:mqttgw\tcpu:resp\tcpu:mosq\tcpu:echo\tcpu:total\tcores\tother\tallocs\t\n", padText("system"))
		for _, p := range rep.Points {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
				padText(systemNames[p.System]), qosString(p.QoS), p.Concurrency, reqPerSec(p), latency(p.P50), latency(p.P99), latency(p.P999), p.Errors,
				cpu(p, roleBench), cpu(p, roleMQTTGW), cpu(p, roleResponder), cpu(p, roleMosquitto), cpu(p, roleEcho), cpu(p, "total"), cores(p), otherCores(p), allocs(p))
		}
		tw.Flush()
	}
	if len(rep.Ratios) > 0 {
		fmt.Fprintln(w, "\nThroughput ratios: c/b = mqttgw vs native MQTT, c/a = mqttgw vs bare HTTP, d/c = on mosquitto vs embedded")
		tw := newTable(w)
		fmt.Fprintln(tw, "conc\tqos\tc/b\tc/a\td/c\t")
		for _, r := range rep.Ratios {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t\n", r.Concurrency, r.QoS, ratioString(r.COverB), ratioString(r.COverA), ratioString(r.DOverC))
		}
		tw.Flush()
	}
	rep.writeBatchTables(w)
	if len(rep.PayloadCurve) > 0 {
		p0 := rep.PayloadCurve[0]
		fmt.Fprintf(w, "\nPayload curve: (c) mqttgw, %d workers, QoS %s\n", p0.Concurrency, qosString(p0.QoS))
		tw := newTable(w)
		fmt.Fprintln(tw, "payload\treq/s\tMiB/s\tp50\tp99\tp99.9\terrors\tcpu:bench\tcpu:mqttgw\tcpu:resp\tcpu:total\tcores\tother\tallocs\t")
		for _, p := range rep.PayloadCurve {
			fmt.Fprintf(tw, "%s\t%s\t%.1f\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
				humanize.IBytes(uint64(p.Payload)), reqPerSec(p), p.ReqPerSec*float64(p.Payload)/(1<<20),
				latency(p.P50), latency(p.P99), latency(p.P999), p.Errors,
				cpu(p, roleBench), cpu(p, roleMQTTGW), cpu(p, roleResponder), cpu(p, "total"), cores(p), otherCores(p), allocs(p))
		}
		tw.Flush()
	}
	if len(rep.Memory) > 0 {
		fmt.Fprintln(w, "\nMemory per pending synchronous request: a fresh mqttgw, requests waiting (?timeout=60s) on a responder")
		fmt.Fprintln(w, "that never answers; deltas from before they were sent. heap = go_memstats_heap_inuse_bytes (live objects")
		fmt.Fprintln(w, "and garbage not yet collected), stack = go_memstats_stack_inuse_bytes, rss = VmRSS.")
		tw := newTable(w)
		fmt.Fprintln(tw, "pending\theap/req\tstack/req\trss/req\tgoroutines/req\theap\tstack\trss\tramp\tdrained to 0\t")
		for _, m := range rep.Memory {
			drained := fmt.Sprintf("yes, %.2fs", m.DrainSeconds)
			if !m.Drained {
				drained = "NO"
			}
			if m.Error != "" {
				// Why is under FAILED below: a long line would
				// stretch the column.
				fmt.Fprintf(tw, "%d\tFAILED\t-\t-\t-\t-\t-\t-\t-\t-\t\n", m.Pending)
				continue
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\t%.1fs\t%s\t\n", m.Pending,
				perReq(m.HeapPerReq), perReq(m.StackPerReq), perReq(m.RSSPerReq), m.GoroutinesPerReq,
				span(m.HeapBefore, m.HeapDuring), span(m.StackBefore, m.StackDuring), span(m.RSSBefore, m.RSSDuring),
				m.RampSeconds, drained)
		}
		tw.Flush()
	}
	if failed := rep.failures(); len(failed) > 0 {
		fmt.Fprintln(w, "\nFAILED:")
		for _, f := range failed {
			fmt.Fprintln(w, "  "+f)
		}
	}
	return nil
}

// writeBatchTables prints (e)'s points and their ratios.
func (rep *report) writeBatchTables(w io.Writer) {
	if len(rep.Batch) == 0 {
		return
	}
	fmt.Fprintln(w, "\n(e) mqttgw POST /batch: each call carries batch requests to the echo responder, as (c)'s one")
	fmt.Fprintln(w, "POST /rpc does. req/s, cpu:* and allocs count requests; batch/s, p50, p99, p99.9 and errors are of")
	fmt.Fprintln(w, "whole batch calls.")
	tw := newTable(w)
	fmt.Fprintln(tw, "batch\tqos\tconc\treq/s\tbatch/s\tp50\tp99\tp99.9\terrors\tcpu:bench\tcpu:mqttgw\tcpu:resp\tcpu:total\tcores\tother\tallocs\t")
	for _, p := range rep.Batch {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			p.Batch, qosString(p.QoS), p.Concurrency, reqPerSec(p), batchesPerSec(p), latency(p.P50), latency(p.P99), latency(p.P999), p.Errors,
			cpu(p, roleBench), cpu(p, roleMQTTGW), cpu(p, roleResponder), cpu(p, "total"), cores(p), otherCores(p), allocs(p))
	}
	tw.Flush()
	if len(rep.BatchRatios) == 0 {
		return
	}
	fmt.Fprintln(w, "\nBatch throughput ratios (req/s at the same conc and qos): e/b = /batch vs native MQTT (the issue's")
	fmt.Fprintln(w, "goal: beyond 2), e/c = /batch vs one POST /rpc per request")
	tw = newTable(w)
	fmt.Fprintln(tw, "conc\tqos\tbatch\te/b\te/c\t")
	for _, r := range rep.BatchRatios {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t\n", r.Concurrency, r.QoS, r.Batch, ratioString(r.EOverB), ratioString(r.EOverC))
	}
	tw.Flush()
}

// newTable right-aligns every column: numbers line up by their last
// digit. The system names are padded to one width (padText) so that they
// still read as left-aligned.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
}

func padText(s string) string {
	longest := 0
	for _, n := range systemNames {
		longest = max(longest, len(n))
	}
	return fmt.Sprintf("%-*s", longest, s)
}

func qosString(q *int) string {
	if q == nil {
		return "-"
	}
	return strconv.Itoa(*q)
}

func reqPerSec(p point) string {
	if p.Error != "" {
		return "FAILED"
	}
	return humanize.Comma(int64(p.ReqPerSec + 0.5))
}

// latency prints microseconds with three significant figures or so.
func latency(us float64) string {
	switch {
	case us == 0:
		return "-"
	case us < 1000:
		return fmt.Sprintf("%.0fµs", us)
	case us < 10_000:
		return fmt.Sprintf("%.2fms", us/1000)
	case us < 100_000:
		return fmt.Sprintf("%.1fms", us/1000)
	default:
		return fmt.Sprintf("%.0fms", us/1000)
	}
}

func batchesPerSec(p point) string {
	if p.Error != "" {
		return "-"
	}
	return humanize.Comma(int64(p.BatchesPerSec + 0.5))
}

func cpu(p point, role string) string {
	v, ok := p.CPU[role]
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func cores(p point) string {
	if p.Cores == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", p.Cores)
}

func otherCores(p point) string {
	if p.OtherCores == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *p.OtherCores)
}

func allocs(p point) string {
	if p.AllocsPerReq == nil {
		return "-"
	}
	return fmt.Sprintf("%.0f", *p.AllocsPerReq)
}

func ratioString(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *r)
}

func perReq(b float64) string {
	if b < 0 {
		return "-" + humanize.IBytes(uint64(-b))
	}
	return humanize.IBytes(uint64(b + 0.5))
}

func span(before, during uint64) string {
	return strings.ReplaceAll(humanize.IBytes(before)+"→"+humanize.IBytes(during), " ", "")
}
