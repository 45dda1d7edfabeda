package gateway_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// BenchmarkOutstandingAsync holds 100,000 async requests that a
// subscribed responder never answers, on the embedded broker, and
// reports the memory each one costs (the 32-byte payload is not kept
// once published), how late the last one expired after its TTL, and
// checks that every record is forgotten and the goroutines are back
// where they were. "local" keeps the records in the gateway, as mqttgw
// does on its embedded broker without --data-dir; "retained" also keeps
// each as a retained message in the broker, as with --data-dir (here
// without the disk) and on external brokers. Run it with -benchtime=1x.
func BenchmarkOutstandingAsync(b *testing.B) {
	for _, local := range []bool{true, false} {
		name := map[bool]string{true: "local", false: "retained"}[local]
		b.Run(name, func(b *testing.B) {
			for range b.N {
				outstanding(b, local)
			}
		})
	}
}

func outstanding(b *testing.B, local bool) {
	const n, ttl = 100_000, 20 * time.Second
	payload := make([]byte, 32)
	before := runtime.NumGoroutine()
	br, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(); err != nil {
		b.Fatal(err)
	}
	g, err := gateway.New(gateway.Config{SoleGateway: true, LocalRecords: local, ResultTTL: time.Second, MaxRecords: n}, br.Transport())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := g.Start(ctx); err != nil {
		b.Fatal(err)
	}
	stop := func() {
		g.Close(ctx)
		br.Close()
	}
	defer stop()
	// QoS 0: the broker keeps nothing per delivery, so what is measured
	// is the records.
	responder := gatewaytest.Dial(b, "mqtt://"+br.Addr(), gatewaytest.ClientOptions{}, nil)
	gatewaytest.Subscribe(b, responder, "meters/+", 0)
	heap0 := heapInUse()
	start := time.Now()
	for i := range n {
		if _, err := g.Submit(ctx, gateway.Request{Topic: fmt.Sprintf("meters/%d", i%1000), Payload: payload, QoS: 1}, ttl); err != nil {
			b.Fatalf("request %d: %v", i, err)
		}
	}
	submitted := time.Since(start)
	perRecord := float64(heapInUse()-heap0) / n
	if counts := statesOf(b, g); counts["published"] != n {
		b.Fatalf("records by state %v, want %d published", counts, n)
	}
	// Each expires at its TTL and is forgotten a result TTL later; wait
	// for the last one submitted to expire, then for all to go.
	deadline := start.Add(submitted + ttl)
	for statesOf(b, g)["published"] != 0 {
		if time.Since(deadline) > 5*time.Second {
			b.Fatalf("records by state %v, 5s after the last TTL", statesOf(b, g))
		}
		time.Sleep(10 * time.Millisecond)
	}
	late := time.Since(deadline)
	for len(statesOf(b, g)) != 0 {
		if time.Since(deadline) > 10*time.Second {
			b.Fatalf("records by state %v, long after their result TTL", statesOf(b, g))
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = responder.Disconnect(ctx)
	stop()
	gatewaytest.Eventually(b, 10*time.Second, "goroutines back to the baseline", func() bool {
		return runtime.NumGoroutine() <= before
	})
	b.ReportMetric(perRecord, "heap-bytes/record")
	b.ReportMetric(float64(submitted.Nanoseconds())/n, "ns/submit")
	b.ReportMetric(float64(late.Milliseconds()), "ms-expired-after-ttl")
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// statesOf reads mqttgw_request_records by state, leaving out zeros.
func statesOf(b *testing.B, g *gateway.Gateway) map[string]int {
	b.Helper()
	out := map[string]int{}
	for _, st := range gateway.States {
		if v := recordGauge(b, g, st.String()); v > 0 {
			out[st.String()] = v
		}
	}
	return out
}
