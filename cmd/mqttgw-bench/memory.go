package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// memoryResult is what holding Pending synchronous requests costs mqttgw:
// its Go heap and goroutine stacks in use (from its /metrics) and its
// resident set (from /proc), before and while they wait.
type memoryResult struct {
	Pending          int     `json:"pending"`
	HeapBefore       uint64  `json:"heap_inuse_before_bytes"`
	HeapDuring       uint64  `json:"heap_inuse_during_bytes"`
	StackBefore      uint64  `json:"stack_inuse_before_bytes"`
	StackDuring      uint64  `json:"stack_inuse_during_bytes"`
	RSSBefore        uint64  `json:"rss_before_bytes"`
	RSSDuring        uint64  `json:"rss_during_bytes"`
	HeapPerReq       float64 `json:"heap_bytes_per_request"`
	StackPerReq      float64 `json:"stack_bytes_per_request"`
	RSSPerReq        float64 `json:"rss_bytes_per_request"`
	GoroutinesPerReq float64 `json:"goroutines_per_request"`
	Drained          bool    `json:"drained"`         // mqttgw_pending_requests was back to 0 after the cancel
	DrainSeconds     float64 `json:"drain_seconds"`   // how long that took
	Error            string  `json:"error,omitempty"` // the test failed: the figures are not to be trusted
	RampSeconds      float64 `json:"ramp_seconds"`    // time to get them all pending
}

// memory test settings.
const (
	// rampParallel is how many requests may be connecting and sending at
	// once: 10,000 SYNs at once overflow the listen backlog (somaxconn)
	// and cost seconds of retransmits.
	rampParallel = 128
	rampTimeout  = 60 * time.Second
	drainTimeout = 10 * time.Second
)

// measurePending starts a fresh mqttgw (so that nothing from the
// throughput points is still in its heap) with room for n requests in
// flight and a responder that never answers, holds n requests pending
// (HTTP clients waiting with ?timeout=60s), reads mqttgw's memory, then
// cancels them all and checks that mqttgw_pending_requests comes back
// to 0.
func (r *runner) measurePending(ctx context.Context, n int) memoryResult {
	m := memoryResult{Pending: n}
	fail := func(err error) memoryResult {
		m.Error = err.Error()
		r.logf("memory, %d pending: %v", n, err)
		return m
	}
	gw, err := r.startGateway(ctx, "--max-inflight", strconv.Itoa(max(20_000, n)))
	if err != nil {
		return fail(err)
	}
	defer r.procs.stop(gw.child)
	silent, err := r.startResponder(ctx, gw.mqtt, silentTopic, true)
	if err != nil {
		return fail(err)
	}
	defer r.procs.stop(silent)

	metrics := gw.base + "/metrics"
	before, err := readMemory(ctx, metrics, gw.pid())
	if err != nil {
		return fail(err)
	}

	reqCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A connection per request, as 10,000 waiting clients would have; no
	// keep-alive, so that the cancel closes them all.
	transport := &http.Transport{DisableKeepAlives: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	url := gw.base + "/rpc/" + silentTopic + "?timeout=60s&qos=1"
	payload := makePayload(r.cfg.payload)

	var (
		wg       sync.WaitGroup
		answered atomic.Int64 // requests that did not stay pending
		mu       sync.Mutex
		firstErr error
	)
	noteErr := func(err error) {
		answered.Add(1)
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	defer wg.Wait() // after cancel (deferred later, so run first)
	defer cancel()

	rampStart := time.Now()
	sem := make(chan struct{}, rampParallel)
launch:
	for range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break launch
		}
		wg.Go(func() {
			var once sync.Once
			release := func() { once.Do(func() { <-sem }) }
			defer release()
			// The slot is free once the request is on the wire; the
			// transport's writer goroutine calls WroteRequest.
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { release() }}
			req, err := http.NewRequestWithContext(httptrace.WithClientTrace(reqCtx, trace), http.MethodPost, url, bytes.NewReader(payload))
			if err != nil {
				noteErr(err)
				return
			}
			req.Header.Set("Content-Type", payloadType)
			resp, err := client.Do(req)
			if err != nil {
				if reqCtx.Err() == nil {
					noteErr(err)
				}
				return
			}
			resp.Body.Close()
			noteErr(fmt.Errorf("answered %s instead of staying pending", resp.Status))
		})
	}

	// pendingIs reads mqttgw_pending_requests; a scrape that fails (one
	// can, with 10,000 connections arriving) is tried again, and the last
	// such error is told if the wait times out.
	var scrapeErr error
	pendingIs := func(want int) bool {
		v, err := scrape(ctx, metrics, metricPending)
		if err != nil {
			scrapeErr = err
			return false
		}
		return int(v[metricPending]) == want
	}
	err = pollUntil(ctx, rampTimeout, func() (bool, error) {
		if a := answered.Load(); a > 0 {
			mu.Lock()
			defer mu.Unlock()
			return false, fmt.Errorf("%d request(s) did not stay pending; the first: %w", a, firstErr)
		}
		return pendingIs(n), nil
	})
	if err != nil {
		return fail(fmt.Errorf("holding %d requests pending: %w (last scrape error: %v)", n, err, scrapeErr))
	}
	m.RampSeconds = time.Since(rampStart).Seconds()
	during, err := readMemory(ctx, metrics, gw.pid())
	if err != nil {
		return fail(err)
	}

	cancel()
	wg.Wait()
	drainStart := time.Now()
	err = pollUntil(ctx, drainTimeout, func() (bool, error) { return pendingIs(0), nil })
	m.DrainSeconds = time.Since(drainStart).Seconds()
	m.Drained = err == nil

	m.HeapBefore, m.HeapDuring = uint64(before.heap), uint64(during.heap)
	m.StackBefore, m.StackDuring = uint64(before.stack), uint64(during.stack)
	m.RSSBefore, m.RSSDuring = before.rss, during.rss
	m.HeapPerReq = (during.heap - before.heap) / float64(n)
	m.StackPerReq = (during.stack - before.stack) / float64(n)
	m.RSSPerReq = (float64(during.rss) - float64(before.rss)) / float64(n)
	m.GoroutinesPerReq = (during.goroutines - before.goroutines) / float64(n)
	if !m.Drained {
		return fail(fmt.Errorf("mqttgw_pending_requests after cancelling them all: %w (last scrape error: %v)", err, scrapeErr))
	}
	return m
}

// memorySample is mqttgw's memory at one moment.
type memorySample struct {
	heap, stack, goroutines float64
	rss                     uint64
}

func readMemory(ctx context.Context, metricsURL string, pid int) (memorySample, error) {
	v, err := scrape(ctx, metricsURL, metricHeapInuse, metricStackInuse, metricGoroutines)
	if err != nil {
		return memorySample{}, err
	}
	rss, err := processRSS(pid)
	if err != nil {
		return memorySample{}, err
	}
	return memorySample{heap: v[metricHeapInuse], stack: v[metricStackInuse], goroutines: v[metricGoroutines], rss: rss}, nil
}

// pollUntil calls cond every 50 ms until it is true, returns an error
// (which is final), or timeout passes.
func pollUntil(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %s: %w", timeout, context.Cause(ctx))
		case <-t.C:
		}
	}
}
