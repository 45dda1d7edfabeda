package api

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/gateway"
)

// inprocEcho answers every request on its topics from inside the
// process, through the broker's in-process transport: a responder that
// costs no network and no client library. HandleReply must not block,
// so requests go to a few workers that publish the echoes.
type inprocEcho struct {
	t    gateway.Transport
	reqs chan *gateway.Message
}

func (e *inprocEcho) HandleReply(m *gateway.Message) {
	e.reqs <- m
}
func (e *inprocEcho) ConnectionUp()        {}
func (e *inprocEcho) ConnectionDown(error) {}

func (e *inprocEcho) serve(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-e.reqs:
			_ = e.t.Publish(ctx, &gateway.Message{Topic: m.ResponseTopic, Payload: m.Payload, QoS: m.QoS,
				ContentType: m.ContentType, CorrelationData: m.CorrelationData})
		}
	}
}

// discardWriter is the cheapest http.ResponseWriter that still keeps
// what the handler wrote, for checking.
type discardWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (w *discardWriter) Header() http.Header              { return w.h }
func (w *discardWriter) SetReadDeadline(time.Time) error  { return nil }
func (w *discardWriter) SetWriteDeadline(time.Time) error { return nil }
func (w *discardWriter) WriteHeader(status int)           { w.status = status }
func (w *discardWriter) Write(b []byte) (int, error)      { return w.body.Write(b) }

// BenchmarkGatewayPath measures the gateway's own path: an HTTP request
// handed to the API's handler, published on the embedded broker, echoed
// by an in-process responder, and the reply written back, with no
// network client or responder cost. Every reply is checked against its
// request. It guards the per-request cost (ns/op, allocs/op) of what the
// gateway itself does; CI runs it briefly. Run it with
//
//	go test -run '^$' -bench GatewayPath -benchmem ./api
func BenchmarkGatewayPath(b *testing.B) {
	for _, qos := range []byte{0, 1} {
		b.Run(fmt.Sprintf("qos%d", qos), func(b *testing.B) {
			br, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0"})
			if err != nil {
				b.Fatal(err)
			}
			if err := br.Start(); err != nil {
				b.Fatal(err)
			}
			defer br.Close()
			g, err := gateway.New(gateway.Config{SoleGateway: true, LocalRecords: true}, br.Transport())
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := g.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer g.Close(context.Background())
			echo := &inprocEcho{t: br.Transport(), reqs: make(chan *gateway.Message, 1024)}
			if err := echo.t.Connect(ctx, []string{"bench/+"}, echo); err != nil {
				b.Fatal(err)
			}
			for range 2 {
				go echo.serve(ctx)
			}
			h := NewServer(nil, g, testCfg)
			target := "/rpc/bench/echo?qos=" + strconv.Itoa(int(qos))

			b.ReportAllocs()
			// Enough requests in flight that the cost measured is the
			// CPU's, not the wait for each round trip.
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var n int
				for pb.Next() {
					n++
					body := strconv.Itoa(n)
					req, _ := http.NewRequest(http.MethodPost, target, bytes.NewReader([]byte(body)))
					req.ContentLength = int64(len(body))
					w := &discardWriter{h: http.Header{}}
					h.ServeHTTP(w, req)
					if w.status != http.StatusOK || w.body.String() != body {
						b.Errorf("reply %d %q to %q", w.status, w.body.String(), body)
						return
					}
				}
			})
		})
	}
}
