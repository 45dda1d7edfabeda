package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// requestFunc does one request/response round trip for worker w (0 ≤ w <
// concurrency) and says whether it succeeded. Calls for one w never
// overlap, so a worker may keep state in its slot.
type requestFunc func(ctx context.Context, w int) error

// loadSpec is the shape of one closed-loop measurement.
type loadSpec struct {
	concurrency int
	warmup      time.Duration // run, but not measured
	duration    time.Duration // the measured window
	maxRequests int64         // a bound on requests started, warmup included
	// grace bounds how long requests still in flight when the window ends
	// may take to finish; after it they are cancelled.
	grace time.Duration
}

// loadResult is what one measurement saw.
type loadResult struct {
	// latencies of the requests that succeeded and completed inside the
	// measured window, sorted ascending.
	latencies []time.Duration
	window    time.Duration
	errors    int64 // failed requests, warmup included
	firstErr  error
}

// maxErrors stops a point early: by then it has failed, and hammering on
// only fills the logs of the processes under test.
const maxErrors = 1000

// errCapped fails a point that reached --max-requests before its window
// ended: its throughput would be meaningless.
var errCapped = errors.New("reached --max-requests before the window ended: lower --duration or raise --max-requests")

// runLoad runs spec.concurrency closed-loop workers, each calling do
// back to back, for warmup plus duration. A request counts, and its
// latency is kept, when it succeeds and completes inside the window
// [start+warmup, start+warmup+duration): throughput is then completions
// per second of steady state, with no ramp-up or drain at either edge.
// probe is called right at the start and at the end of the window, for
// the CPU and allocation readings that the throughput divides.
func runLoad(ctx context.Context, spec loadSpec, do requestFunc, probe func(start bool)) (loadResult, error) {
	begin := time.Now()
	t0 := begin.Add(spec.warmup)
	t1 := t0.Add(spec.duration)
	ctx, cancel := context.WithDeadline(ctx, t1.Add(spec.grace))
	defer cancel()

	var (
		started  atomic.Int64
		errCount atomic.Int64
		capped   atomic.Bool
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	perWorker := make([][]time.Duration, spec.concurrency)
	// Room for 16,384 latencies per worker, and 1M (8 MB) in all, up
	// front: appending then rarely grows a slice while measuring. A
	// worker that completes more grows its own.
	hint := int(min(spec.maxRequests, 1<<20) / int64(spec.concurrency))
	hint = min(hint, 1<<14)
	for w := range spec.concurrency {
		wg.Go(func() {
			lat := make([]time.Duration, 0, hint)
			defer func() { perWorker[w] = lat }()
			for ctx.Err() == nil {
				s := time.Now()
				if !s.Before(t1) {
					return
				}
				if started.Add(1) > spec.maxRequests {
					capped.Store(true)
					return
				}
				err := do(ctx, w)
				e := time.Now()
				if err != nil && ctx.Err() != nil && errCount.Load() < maxErrors {
					// Cut off by the caller's context (SIGINT,
					// --deadline) or the grace running out: not the
					// system's failure. The point says why it stopped.
					return
				}
				if err != nil {
					if errCount.Add(1) == 1 {
						mu.Lock()
						firstErr = err
						mu.Unlock()
					}
					if errCount.Load() >= maxErrors {
						cancel()
					}
					continue
				}
				if !e.Before(t0) && e.Before(t1) {
					lat = append(lat, e.Sub(s))
				}
			}
		})
	}

	// The probes run here, on the caller's goroutine, at the window's edges.
	for i, edge := range []time.Time{t0, t1} {
		select {
		case <-time.After(time.Until(edge)):
			probe(i == 0)
		case <-ctx.Done():
		}
	}
	wg.Wait()

	res := loadResult{window: spec.duration, errors: errCount.Load(), firstErr: firstErr}
	n := 0
	for _, l := range perWorker {
		n += len(l)
	}
	res.latencies = make([]time.Duration, 0, n)
	for _, l := range perWorker {
		res.latencies = append(res.latencies, l...)
	}
	slices.Sort(res.latencies)
	switch {
	case capped.Load():
		return res, errCapped
	case time.Now().Before(t1):
		// Cut short: the caller's context (SIGINT, --deadline) or
		// maxErrors.
		if res.errors == 0 {
			return res, fmt.Errorf("stopped before the window ended: %w", context.Cause(ctx))
		}
	}
	return res, nil
}

// percentile is the nearest-rank q-quantile (0 < q ≤ 1) of sorted: the
// smallest latency that at least q of all requests did not exceed. It is
// exact: every latency of the window is kept.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// ceil(q·n), less a hair so that 0.99·100 = 99.00000000000001 is
	// rank 99, not 100.
	rank := int(math.Ceil(q*float64(len(sorted)) - 1e-9))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}
