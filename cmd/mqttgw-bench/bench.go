package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// runBench is the bench itself: start the systems, measure every point,
// print the report. It prints what it measured even when it stops early
// (an error, SIGINT, --deadline), and returns an error if it did or if
// any point failed. Every child is killed before it returns.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.deadline, fmt.Errorf("--deadline %s reached", cfg.deadline))
	defer cancel()

	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "mqttgw-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	r := &runner{cfg: cfg, procs: &procs{}, self: self, mqttgw: cfg.mqttgw, dir: dir, log: stderr}
	defer r.procs.kill()
	defer metricsTransport.CloseIdleConnections()

	if r.mqttgw == "" {
		if r.mqttgw, err = r.buildMQTTGW(ctx); err != nil {
			return err
		}
	}
	rep := &report{Started: time.Now(), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Duration: cfg.duration.String(), Warmup: cfg.warmup.String(), Payload: cfg.payload}
	if cfg.only[sysExternal] && cfg.mosquittoNoDelay {
		rep.Notes = append(rep.Notes, "(d): mosquitto runs with set_tcp_nodelay true; --mosquitto-nodelay=false for its default")
	}
	runErr := r.run(ctx, rep)
	r.procs.kill()
	rep.Elapsed = time.Since(rep.Started).Round(time.Millisecond).Seconds()
	rep.computeRatios()
	rep.noteDisturbed()

	if cfg.jsonOut {
		err = rep.writeJSON(stdout)
	} else {
		err = rep.writeTables(stdout)
	}
	if runErr != nil {
		return runErr
	}
	if err != nil {
		return err
	}
	if failed := rep.failures(); len(failed) > 0 {
		return fmt.Errorf("%d part(s) failed:\n  %s", len(failed), strings.Join(failed, "\n  "))
	}
	return nil
}

// run measures every selected part into rep, in order: the systems side
// by side, (e)'s batches, (c)'s payload curve, then the memory test.
func (r *runner) run(ctx context.Context, rep *report) error {
	sys, err := r.startSystems(ctx, rep)
	if err != nil {
		return err
	}
	if err := r.matrix(ctx, rep, sys); err != nil {
		return err
	}
	if r.runsBatch() {
		if err := r.batches(ctx, rep, sys.emb); err != nil {
			return err
		}
	}
	if r.cfg.only[sysGateway] && !r.cfg.skipPayload {
		if err := r.payloadCurve(ctx, rep, sys.emb); err != nil {
			return err
		}
	}
	// The memory test starts a fresh mqttgw of its own: nothing else may
	// run, or hold memory in it, meanwhile.
	r.procs.kill()
	if r.cfg.only[sysGateway] && !r.cfg.skipMemory {
		return r.memory(ctx, rep)
	}
	return nil
}

// systems are the running systems under test; nil where not selected.
type systems struct {
	echo     *child
	echoBase string
	emb, ext *stack
}

// startSystems starts every selected system once, for all its points.
// The idle ones cost the others nothing measurable meanwhile.
func (r *runner) startSystems(ctx context.Context, rep *report) (*systems, error) {
	var s systems
	var err error
	if r.cfg.only[sysEcho] {
		if s.echo, s.echoBase, err = r.startEcho(ctx); err != nil {
			return nil, err
		}
	}
	if r.cfg.only[sysNative] || r.cfg.only[sysGateway] || r.runsBatch() {
		if s.emb, err = r.startEmbedded(ctx); err != nil {
			return nil, err
		}
	}
	if r.cfg.only[sysExternal] {
		s.ext, err = r.startExternal(ctx)
		if errors.Is(err, errNoMosquitto) {
			rep.Notes = append(rep.Notes, err.Error())
			r.logf("%v", err)
		} else if err != nil {
			return nil, err
		}
	}
	return &s, nil
}

// runsBatch says whether (e) is measured: selected, and not skipped.
func (r *runner) runsBatch() bool { return r.cfg.only[sysBatch] && !r.cfg.skipBatch }

// matrix measures the systems side by side: at each concurrency (a)
// once, since QoS means nothing to it, then (b), (c) and (d) at each QoS.
func (r *runner) matrix(ctx context.Context, rep *report, sys *systems) error {
	cfg := r.cfg
	payload := makePayload(cfg.payload)
	for _, conc := range cfg.concurrency {
		if sys.echo != nil {
			t, err := newHTTPTarget(sys.echoBase+"/rpc/"+echoTopic, payload, conc, cfg.requestTimeout)
			if err != nil {
				return err
			}
			pt := r.measure(ctx, point{System: sysEcho, Concurrency: conc, Payload: len(payload)}, t.do,
				[]role{{name: roleBench}, {name: roleEcho, pid: sys.echo.pid()}}, "")
			t.close()
			if err := r.record(ctx, &rep.Points, pt); err != nil {
				return err
			}
		}
		for _, qos := range cfg.qos {
			if cfg.only[sysNative] {
				t, err := newMQTTTarget(ctx, sys.emb.gw.mqtt, echoTopic, byte(qos), payload, conc, cfg.requestTimeout)
				if err != nil {
					return err
				}
				pt := r.measure(ctx, point{System: sysNative, QoS: &qos, Concurrency: conc, Payload: len(payload)}, t.do,
					sys.emb.roles(), sys.emb.gw.base+"/metrics")
				t.close()
				if err := r.record(ctx, &rep.Points, pt); err != nil {
					return err
				}
			}
			for _, s := range []struct {
				sys string
				st  *stack
			}{{sysGateway, sys.emb}, {sysExternal, sys.ext}} {
				if !cfg.only[s.sys] || s.st == nil {
					continue
				}
				pt := r.measureGateway(ctx, point{System: s.sys, QoS: &qos, Concurrency: conc, Payload: len(payload)}, s.st, payload)
				if err := r.record(ctx, &rep.Points, pt); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// payloadCurve measures (c) at QoS 1 and --payload-concurrency with each
// of --payloads.
func (r *runner) payloadCurve(ctx context.Context, rep *report, emb *stack) error {
	qos := 1
	for _, size := range r.cfg.payloads {
		pt := r.measureGateway(ctx, point{System: sysGateway, QoS: &qos, Concurrency: r.cfg.payloadConc, Payload: size}, emb, makePayload(size))
		if err := r.record(ctx, &rep.PayloadCurve, pt); err != nil {
			return err
		}
	}
	return nil
}

// memory runs the memory test at each of --pending.
func (r *runner) memory(ctx context.Context, rep *report) error {
	// This process holds a connection per pending request.
	limit, err := raiseFileLimit()
	if err != nil {
		r.logf("raising the open-file limit: %v", err)
	}
	for _, n := range r.cfg.pending {
		if err == nil && limit < uint64(n)+256 {
			rep.Memory = append(rep.Memory, memoryResult{Pending: n,
				Error: fmt.Sprintf("the open-file hard limit, %d, is too low for %d connections (ulimit -Hn)", limit, n)})
			continue
		}
		rep.Memory = append(rep.Memory, r.measurePending(ctx, n))
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
	return nil
}

// measureGateway measures (c) or (d): HTTP POSTs through st's mqttgw to
// its echo responder.
func (r *runner) measureGateway(ctx context.Context, pt point, st *stack, payload []byte) point {
	// mqttgw's own ?timeout is the request timeout, and the client waits
	// a little longer: a request with no reply is then mqttgw's 504, with
	// its problem detail, rather than a client-side timeout.
	url := fmt.Sprintf("%s/rpc/%s?qos=%d&timeout=%s", st.gw.base, echoTopic, *pt.QoS, r.cfg.requestTimeout)
	t, err := newHTTPTarget(url, payload, pt.Concurrency, r.cfg.requestTimeout+2*time.Second)
	if err != nil {
		pt.Error = err.Error()
		return pt
	}
	defer t.close()
	return r.measure(ctx, pt, t.do, st.roles(), st.gw.base+"/metrics")
}

// record appends pt and logs it; it stops the run when the context is
// done or a child has died, since every later point would fail too.
func (r *runner) record(ctx context.Context, to *[]point, pt point) error {
	*to = append(*to, pt)
	r.logf("%s", pt.summary())
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if dead := r.procs.exited(); len(dead) > 0 {
		return errors.New(strings.Join(dead, "\n"))
	}
	return nil
}

// measure runs one point: the load from do, the CPU of every role's
// process and, with metricsURL, mqttgw's allocations, all over the same
// window. A call of do is pt.Batch requests when that is set: per
// request figures divide by those, and latencies are of whole calls.
func (r *runner) measure(ctx context.Context, pt point, do requestFunc, roles []role, metricsURL string) point {
	type snapshot struct {
		taken   bool
		at      time.Time
		cpu     []time.Duration
		cpuErr  []error
		busy    time.Duration // the whole machine's
		busyErr error
		mallocs float64
		metErr  error
	}
	var snaps [2]snapshot
	probe := func(start bool) {
		s := &snaps[1]
		if start {
			s = &snaps[0]
		}
		s.taken, s.at = true, time.Now()
		s.busy, s.busyErr = machineBusy()
		s.cpu = make([]time.Duration, len(roles))
		s.cpuErr = make([]error, len(roles))
		for i, ro := range roles {
			s.cpu[i], s.cpuErr[i] = ro.cpu()
		}
		if metricsURL != "" {
			var m map[string]float64
			m, s.metErr = scrape(ctx, metricsURL, metricMallocs)
			s.mallocs = m[metricMallocs]
		}
	}
	perCall := max(pt.Batch, 1)
	spec := loadSpec{
		concurrency: pt.Concurrency,
		warmup:      r.cfg.warmup,
		duration:    r.cfg.duration,
		maxRequests: max(r.cfg.maxRequests/int64(perCall), 1),
		// Past the request timeout, so that a request that hangs fails
		// as a timeout, counted, before the grace cancels it.
		grace: r.cfg.requestTimeout + 5*time.Second,
	}
	res, err := runLoad(ctx, spec, do, probe)

	calls := len(res.latencies)
	n := calls * perCall
	pt.Requests = n
	pt.Seconds = res.window.Seconds()
	pt.ReqPerSec = float64(n) / res.window.Seconds()
	if pt.Batch > 0 {
		pt.BatchesPerSec = float64(calls) / res.window.Seconds()
	}
	pt.P50 = micros(percentile(res.latencies, 0.50))
	pt.P99 = micros(percentile(res.latencies, 0.99))
	pt.P999 = micros(percentile(res.latencies, 0.999))
	pt.Errors = res.errors
	switch {
	case err != nil:
		pt.Error = err.Error()
	case res.errors > 0 && pt.Batch > 0:
		pt.Error = fmt.Sprintf("%d failed batch call(s); the first: %v", res.errors, res.firstErr)
	case res.errors > 0:
		pt.Error = fmt.Sprintf("%d failed request(s); the first: %v", res.errors, res.firstErr)
	case n == 0:
		pt.Error = "no request completed in the window"
	}
	if pt.Error != "" && metricsURL != "" {
		// Where did the requests go? mqttgw's counters of dropped and
		// late messages tell, if it is still there to ask.
		if lines, err := troubleCounters(context.WithoutCancel(ctx), metricsURL); err == nil && len(lines) > 0 {
			pt.Error += "; mqttgw's /metrics: " + strings.Join(lines, ", ")
		}
	}
	if !snaps[0].taken || !snaps[1].taken || n == 0 {
		return pt
	}
	pt.CPU = map[string]float64{}
	var total float64
	var ours time.Duration
	for i, ro := range roles {
		if snaps[0].cpuErr[i] != nil || snaps[1].cpuErr[i] != nil {
			continue // the column shows "-"
		}
		d := snaps[1].cpu[i] - snaps[0].cpu[i]
		ours += d
		us := micros(d) / float64(n)
		pt.CPU[ro.name] = us
		total += us
	}
	pt.CPU["total"] = total
	elapsed := snaps[1].at.Sub(snaps[0].at).Seconds()
	pt.Cores = ours.Seconds() / elapsed
	if snaps[0].busyErr == nil && snaps[1].busyErr == nil {
		// /proc/stat and /proc/<pid>/stat tick apart: a little either
		// way is rounding, not another process.
		other := (snaps[1].busy - snaps[0].busy - ours).Seconds() / elapsed
		pt.OtherCores = &other
	}
	if metricsURL != "" && snaps[0].metErr == nil && snaps[1].metErr == nil {
		a := (snaps[1].mallocs - snaps[0].mallocs) / float64(n)
		pt.AllocsPerReq = &a
	}
	return pt
}

// micros is d in microseconds.
func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// makePayload is n bytes of printable text: a body any hop may log or
// inspect without surprise.
func makePayload(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[i%len(alphabet)]
	}
	return b
}
