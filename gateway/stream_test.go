package gateway_test

// Requests that take many replies, against the embedded broker (which
// counts the subscribers a request reached) and mosquitto (which doesn't).

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// recorder is a StreamSink that keeps what it gets; failAt makes Reply
// fail from that event on, as a client that hung up does.
type recorder struct {
	mu        sync.Mutex
	published int
	events    []gateway.Event
	failAt    int
}

func (r *recorder) Published(reached int) error { r.published = reached; return nil }
func (r *recorder) Keepalive() error            { return nil }
func (r *recorder) Reply(ev gateway.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failAt > 0 && ev.Seq >= r.failAt {
		return errors.New("client gone")
	}
	r.events = append(r.events, ev)
	return nil
}

func (r *recorder) payloads() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events {
		out = append(out, fmt.Sprintf("%s/%v", ev.Reply.Payload, ev.Final))
	}
	return out
}

// progress sends "accepted" and "40%" as progress, then "done".
func progress(req *paho.Publish, send func(*paho.Publish)) {
	for _, step := range []string{"accepted", "40%"} {
		send(&paho.Publish{QoS: 1, Payload: []byte(step), Properties: &paho.PublishProperties{
			User: paho.UserProperties{{Key: gateway.ProgressProperty, Value: step}}}})
		time.Sleep(50 * time.Millisecond)
	}
	send(&paho.Publish{QoS: 1, Payload: []byte("done"), Properties: &paho.PublishProperties{
		User: paho.UserProperties{{Key: "http-status", Value: "201"}}}})
}

func stream(t *testing.T, g interface {
	Stream(context.Context, gateway.Request, gateway.Collect, gateway.StreamSink) (gateway.StreamEnd, error)
}, topic string, timeout time.Duration, c gateway.Collect, sink gateway.StreamSink) gateway.StreamEnd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	end, err := g.Stream(ctx, gateway.Request{Topic: topic, QoS: 1}, c, sink)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	return end
}

// Progress replies, then the final one: on the embedded broker the
// stream ends as its one subscriber is done; on mosquitto, at the first
// final reply.
func TestStreamProgress(t *testing.T) {
	t.Parallel()
	want := "[accepted/false 40%/false done/true]"
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		b, g := brokertest.Start(t, broker.Config{})
		gatewaytest.StartStreamer(t, "mqtt://"+b.Addr(), "job/1", 1, progress)
		var rec recorder
		end := stream(t, g, "job/1", 5*time.Second, gateway.Collect{MaxReplies: 10}, &rec)
		if end.Reason != gateway.EndComplete || end.Reached != 1 || end.Replies != 3 || fmt.Sprint(rec.payloads()) != want {
			t.Fatalf("end %+v, events %v; want complete after %s", end, rec.payloads(), want)
		}
	})
	t.Run("mosquitto", func(t *testing.T) {
		t.Parallel()
		m := gatewaytest.StartMosquitto(t)
		g := startGateway(t, m.URL(), "stream", gateway.BrokerConfig{})
		g.waitReady(t)
		gatewaytest.StartStreamer(t, m.URL(), "job/1", 1, progress)
		var rec recorder
		end := stream(t, g, "job/1", 5*time.Second, gateway.Collect{MaxReplies: 10}, &rec)
		if end.Reason != gateway.EndFinal || end.Reached != -1 || fmt.Sprint(rec.payloads()) != want {
			t.Fatalf("end %+v, events %v; want final after %s", end, rec.payloads(), want)
		}
	})
}

// A plain request of a responder that sends progress gets the final
// reply.
func TestRequestSkipsProgress(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	gatewaytest.StartStreamer(t, "mqtt://"+b.Addr(), "job/2", 1, progress)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := g.Request(ctx, gateway.Request{Topic: "job/2", QoS: 1})
	if err != nil || string(reply.Payload) != "done" || len(reply.UserProperties) != 1 || reply.UserProperties[0].Value != "201" {
		t.Fatalf("got %q %v %v, want the final reply", reply.Payload, reply.UserProperties, err)
	}
}

// Five responders, not shared, and a shared group of two: the embedded
// broker counts six subscribers, and the gather ends as soon as each has
// answered, long before its window.
func TestGatherEndsWhenAllAnswered(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	url := "mqtt://" + b.Addr()
	for range 5 {
		gatewaytest.StartResponder(t, url, "meters/floor-3", 1, gatewaytest.Echo)
	}
	for range 2 {
		gatewaytest.StartResponder(t, url, "$share/readers/meters/floor-3", 1, gatewaytest.Echo)
	}
	var rec recorder
	start := time.Now()
	end := stream(t, g, "meters/floor-3", 5*time.Second, gateway.Collect{Window: true, MaxReplies: 100}, &rec)
	if end.Reason != gateway.EndComplete || end.Reached != 6 || end.Replies != 6 || rec.published != 6 {
		t.Fatalf("end %+v, published %d; want complete with 6 of 6", end, rec.published)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s: it should end when all have answered", d)
	}
}

// The same gather on mosquitto runs to the end of its window.
func TestGatherOnMosquittoRunsItsWindow(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "gather", gateway.BrokerConfig{})
	g.waitReady(t)
	for range 3 {
		gatewaytest.StartResponder(t, m.URL(), "meters/floor-4", 1, gatewaytest.Echo)
	}
	var rec recorder
	start := time.Now()
	end := stream(t, g, "meters/floor-4", time.Second, gateway.Collect{Window: true, MaxReplies: 100}, &rec)
	if end.Reason != gateway.EndWindow || end.Replies != 3 || end.Reached != -1 {
		t.Fatalf("end %+v", end)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("ended after %s, before its window", d)
	}
}

// At max-replies the stream ends, and says so; the replies after it are
// counted as late. A sink that fails (the client hung up) ends it too,
// and leaves nothing pending.
func TestStreamLimits(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	five := func(req *paho.Publish, send func(*paho.Publish)) {
		for i := range 5 {
			send(&paho.Publish{QoS: 1, Payload: fmt.Appendf(nil, "%d", i), Properties: &paho.PublishProperties{
				User: paho.UserProperties{{Key: gateway.ProgressProperty, Value: "x"}}}})
		}
	}
	gatewaytest.StartStreamer(t, "mqtt://"+b.Addr(), "chatty/1", 1, five)
	var rec recorder
	end := stream(t, g, "chatty/1", 5*time.Second, gateway.Collect{MaxReplies: 3}, &rec)
	if end.Reason != gateway.EndMaxReplies || end.Replies != 3 {
		t.Fatalf("end %+v", end)
	}
	gatewaytest.Eventually(t, 5*time.Second, "the two replies beyond the limit counted late", func() bool {
		return g.Stats().Late == 2
	})

	gone := recorder{failAt: 2}
	end = stream(t, g, "chatty/1", 5*time.Second, gateway.Collect{MaxReplies: 10}, &gone)
	if end.Reason != gateway.EndClientGone || end.Replies != 2 {
		t.Fatalf("end %+v", end)
	}
	gatewaytest.Eventually(t, 5*time.Second, "the replies after the client left counted late", func() bool {
		return g.Stats().Late == 2+3
	})
	if n := g.Stats().Pending; n != 0 {
		t.Fatalf("%d pending after the streams ended", n)
	}
	if _, err := g.Stream(context.Background(), gateway.Request{Topic: "chatty/1"}, gateway.Collect{}, &rec); !errors.Is(err, gateway.ErrInvalidRequest) {
		t.Fatalf("MaxReplies 0: %v", err)
	}
	if _, err := g.Stream(context.Background(), gateway.Request{Topic: "nobody/1"}, gateway.Collect{MaxReplies: 1}, &rec); !errors.Is(err, gateway.ErrNoResponders) {
		t.Fatalf("nobody subscribed: %v", err)
	}
}
