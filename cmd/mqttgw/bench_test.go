package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

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

// BenchmarkStreamReplies measures the replies per second one streaming
// client (Server-Sent Events) receives from a responder that sends b.N
// progress replies at QoS 0 as fast as it can, then a final one. Run it
// with
//
//	go test -run '^$' -bench StreamReplies -benchtime 100000x ./cmd/mqttgw
func BenchmarkStreamReplies(b *testing.B) {
	cfg := testConfig(b, "--log-level", "error", "--max-replies", "100000000")
	a, base := mustStart(b, cfg)
	progress := &paho.Publish{Payload: []byte("40%"), Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "progress", Value: "40%"}}}}
	gatewaytest.StartStreamer(b, "mqtt://"+a.broker.Addr(), "bench/stream", 0, func(req *paho.Publish, send func(*paho.Publish)) {
		for range b.N {
			p := *progress
			props := *progress.Properties
			p.Properties = &props
			send(&p)
		}
		send(&paho.Publish{Payload: []byte("done")})
	})
	req, _ := http.NewRequest(http.MethodPost, base+"/rpc/bench/stream?timeout=60s", nil)
	req.Header.Set("Accept", "application/x-ndjson")
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	lines := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines++
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if lines != b.N+2 { // the replies, the final one, the end
		b.Fatalf("%d lines, want %d", lines, b.N+2)
	}
	b.ReportMetric(float64(b.N+1)/elapsed.Seconds(), "replies/s")
}

// BenchmarkOpenStreams holds 1,000 streams open to a responder that never
// answers and reports the heap each costs. The clients are bare TCP
// connections that wrote their request and read the status line, so
// nearly all of it is the gateway's side: the request, its pending entry,
// the connection's buffers and goroutines. Run it with -benchtime 1x.
func BenchmarkOpenStreams(b *testing.B) {
	const n = 1000
	for range b.N {
		cfg := testConfig(b, "--log-level", "error")
		a, _ := mustStart(b, cfg)
		gatewaytest.StartResponder(b, "mqtt://"+a.broker.Addr(), "bench/silent", 0, func(*paho.Publish) *paho.Publish { return nil })
		request := []byte("POST /rpc/bench/silent?timeout=60s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n")
		heap0 := heapAlloc()
		conns := make([]net.Conn, 0, n)
		buf := make([]byte, 64)
		for range n {
			c, err := net.Dial("tcp", a.httpAddr)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			if _, err := c.Write(request); err != nil {
				b.Fatal(err)
			}
			if k, err := io.ReadAtLeast(c, buf, 15); err != nil || !bytes.HasPrefix(buf[:k], []byte("HTTP/1.1 200 ")) {
				b.Fatalf("status line %q %v", buf, err)
			}
		}
		if p := a.gw.Stats().Pending; p != n {
			b.Fatalf("%d pending, want %d", p, n)
		}
		perStream := float64(heapAlloc()-heap0) / n
		for _, c := range conns {
			c.Close()
		}
		gatewaytest.Eventually(b, 10*time.Second, "every stream freed", func() bool { return a.gw.Stats().Pending == 0 })
		b.ReportMetric(perStream, "heap-bytes/stream")
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
