package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Series of mqttgw's /metrics that the bench reads.
const (
	metricMallocs    = "go_memstats_mallocs_total"
	metricHeapInuse  = "go_memstats_heap_inuse_bytes"
	metricStackInuse = "go_memstats_stack_inuse_bytes"
	metricGoroutines = "go_goroutines"
	metricPending    = "mqttgw_pending_requests"
)

// metricsTransport and metricsClient scrape mqttgw's /metrics. They have
// their own connection, so that a scrape never waits behind the load
// generator's.
var (
	metricsTransport = &http.Transport{}
	metricsClient    = &http.Client{Timeout: 5 * time.Second, Transport: metricsTransport}
)

// scrape reads the unlabelled series names from the Prometheus text
// exposition at url and returns their values; a name it lacks is an
// error, so a renamed metric is noticed rather than read as 0.
func scrape(ctx context.Context, url string, names ...string) (map[string]float64, error) {
	sc, done, err := metricLines(ctx, url)
	if err != nil {
		return nil, err
	}
	defer done()
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	got := make(map[string]float64, len(names))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// "name value" or "name value timestamp"; labelled series
		// ("name{...} value") never match a wanted bare name.
		name, rest, ok := strings.Cut(line, " ")
		if !ok || !want[name] {
			continue
		}
		v, _, _ := strings.Cut(rest, " ")
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", url, line, err)
		}
		got[name] = f
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	for _, n := range names {
		if _, ok := got[n]; !ok {
			return nil, fmt.Errorf("%s has no series %s", url, n)
		}
	}
	return got, nil
}

// trouble are the parts of mqttgw's counter names that count lost or
// refused messages: when a point fails, the ones that are not 0 say
// where its requests went.
var trouble = []string{"dropped", "late_replies", "unknown_replies", "duplicate_replies", "oversized", "slow_disconnects", "reconnects", "store_full"}

// troubleCounters returns the series of mqttgw's /metrics whose name
// contains one of trouble and whose value is not 0, as "name value".
func troubleCounters(ctx context.Context, url string) ([]string, error) {
	sc, done, err := metricLines(ctx, url)
	if err != nil {
		return nil, err
	}
	defer done()
	var out []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, "mqttgw_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || line[i+1:] == "0" {
			continue
		}
		for _, t := range trouble {
			if strings.Contains(line[:i], t) {
				out = append(out, line)
				break
			}
		}
	}
	return out, sc.Err()
}

// metricLines GETs the Prometheus text exposition at url and returns a
// scanner over its lines, and what closes the response.
func metricLines(ctx context.Context, url string) (*bufio.Scanner, func(), error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := metricsClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return sc, func() { resp.Body.Close() }, nil
}
