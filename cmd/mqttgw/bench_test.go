package main

import (
	"bytes"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// BenchmarkRoundTrip measures a full HTTP → gateway → embedded broker →
// paho responder → gateway → HTTP round trip with 64 concurrent clients,
// the load the README's Performance figures were measured with. Run it with
//
//	go test -run '^$' -bench RoundTrip -benchtime 5s ./cmd/mqttgw
func BenchmarkRoundTrip(b *testing.B) {
	for _, qos := range []string{"0", "1"} {
		b.Run("qos"+qos, func(b *testing.B) {
			cfg := testConfig(b, "--log-level", "error")
			a, base := mustStart(b, cfg)
			gatewaytest.StartResponder(b, "mqtt://"+a.broker.Addr(), "bench/echo", qos[0]-'0', gatewaytest.Echo)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
			defer client.CloseIdleConnections()
			url := base + "/rpc/bench/echo?qos=" + qos
			payload := []byte(`{"query":"Vienna"}`)

			b.ReportAllocs()
			b.SetParallelism(64 / max(1, testingProcs()))
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(url, "application/json", bytes.NewReader(payload))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }
