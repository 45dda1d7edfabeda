package gateway_test

// Async requests and their records against real brokers: the embedded
// one (also across a restart with a data directory) and mosquitto with two
// replicas.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func submit(t *testing.T, g interface {
	Submit(context.Context, gateway.Request, time.Duration) (gateway.Record, error)
}, req gateway.Request, ttl time.Duration) gateway.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, err := g.Submit(ctx, req, ttl)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	return rec
}

// watchUntil waits for record id to reach want.
func watchUntil(t *testing.T, g interface {
	Watch(context.Context, string, string, gateway.State) (gateway.Record, error)
}, owner, id string, want gateway.State) gateway.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rec gateway.Record
	for seen := gateway.State(0); ; seen = rec.State {
		var err error
		if rec, err = g.Watch(ctx, owner, id, seen); err != nil {
			t.Fatalf("Watch: %v", err)
		}
		if rec.State == want {
			return rec
		}
		if rec.State.Final() || ctx.Err() != nil {
			t.Fatalf("record %s is %s (%s), want %s", id, rec.State, rec.Error, want)
		}
	}
}

// An async request nobody listens to waits, is published the moment a
// responder subscribes, and its reply is stored.
func TestAsyncWaitsForResponder(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	rec := submit(t, g, gateway.Request{Topic: "sleepy/1", Payload: []byte("wake"), QoS: 1, Owner: "k"}, time.Minute)
	if rec.State != gateway.StateWaiting || !rec.Async || len(rec.ID) != 36 {
		t.Fatalf("record %+v, want an async one waiting for a responder", rec)
	}
	if _, err := g.Lookup("other", rec.ID); !errors.Is(err, gateway.ErrRecordNotFound) {
		t.Fatalf("another owner's lookup: %v, want not found", err)
	}
	gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "sleepy/+", 1, gatewaytest.Echo)
	got := watchUntil(t, g, "k", rec.ID, gateway.StateAnswered)
	if string(got.Reply.Payload) != "wake" {
		t.Fatalf("reply %q, want the echo", got.Reply.Payload)
	}
}

// A canceled request's reply is dropped and counted; cancel twice is an
// error; the record says canceled.
func TestAsyncCancel(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	got := make(chan *paho.Publish, 1)
	gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "slow/1", 1, func(req *paho.Publish) *paho.Publish {
		got <- req
		return nil
	})
	rec := submit(t, g, gateway.Request{Topic: "slow/1", QoS: 1}, time.Minute)
	req := <-got
	if _, err := g.Cancel("", rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Cancel("", rec.ID); !errors.Is(err, gateway.ErrRecordFinal) {
		t.Fatalf("second cancel: %v, want ErrRecordFinal", err)
	}
	cm := gatewaytest.Dial(t, "mqtt://"+b.Addr(), gatewaytest.ClientOptions{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cm.Publish(ctx, &paho.Publish{Topic: req.Properties.ResponseTopic, QoS: 1, Payload: []byte("too late"),
		Properties: &paho.PublishProperties{CorrelationData: req.Properties.CorrelationData}}); err != nil {
		t.Fatal(err)
	}
	gatewaytest.Eventually(t, 5*time.Second, "the reply is counted as canceled", func() bool {
		return gatewaytest.Metric(t, g.Collectors(), "mqttgw_canceled_replies_total", "") == 1
	})
	if r, _ := g.Lookup("", rec.ID); r.State != gateway.StateCanceled || r.Reply != nil {
		t.Fatalf("record %+v, want canceled without a reply", r)
	}
}

// A request that nobody answers expires at its TTL, and its message
// carried that TTL as Message Expiry.
func TestAsyncExpires(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	expiry := make(chan uint32, 1)
	gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "mute/1", 1, func(req *paho.Publish) *paho.Publish {
		expiry <- *req.Properties.MessageExpiry
		return nil
	})
	start := time.Now()
	rec := submit(t, g, gateway.Request{Topic: "mute/1", QoS: 1}, 2*time.Second)
	if e := <-expiry; e != 2 {
		t.Fatalf("Message Expiry %d, want the 2s TTL", e)
	}
	watchUntil(t, g, "", rec.ID, gateway.StateExpired)
	if d := time.Since(start); d < 2*time.Second || d > 4*time.Second {
		t.Fatalf("expired after %s, want 2s", d)
	}
}

// Async requests with one idempotency key publish once; another request
// with the key is refused.
func TestAsyncIdempotencyKey(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	r := gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "idem/1", 1, gatewaytest.Echo)
	req := gateway.Request{Topic: "idem/1", Payload: []byte("x"), QoS: 1, IdempotencyKey: "k1", Fingerprint: "fp1"}
	first := submit(t, g, req, time.Minute)
	again := submit(t, g, req, time.Minute)
	if again.ID != first.ID {
		t.Fatalf("repeat got record %s, want the first one %s", again.ID, first.ID)
	}
	watchUntil(t, g, "", first.ID, gateway.StateAnswered)
	other := req
	other.Fingerprint = "fp2"
	if _, err := g.Submit(context.Background(), other, time.Minute); !errors.Is(err, gateway.ErrIdempotencyMismatch) {
		t.Fatalf("another request with the key: %v, want ErrIdempotencyMismatch", err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := r.Handled(); n != 1 {
		t.Fatalf("the responder got %d requests, want 1", n)
	}
}

// Records, and requests waiting for a responder, survive a restart of
// the embedded broker with a data directory.
func TestAsyncSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := func() (*broker.Broker, *gateway.Gateway) {
		b, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0", DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		g, err := gateway.New(gateway.Config{SoleGateway: true}, b.Transport())
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return b, g
	}
	b, g := start()
	rec := submit(t, g, gateway.Request{Topic: "later/1", Payload: []byte("kept"), QoS: 1}, time.Minute)
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.Close()

	b, g = start()
	t.Cleanup(func() { g.Close(context.Background()); b.Close() })
	if r, err := g.Lookup("", rec.ID); err != nil || r.State != gateway.StateWaiting || string(r.Request.Payload) != "kept" {
		t.Fatalf("after the restart: %+v %v, want the request still waiting", r, err)
	}
	gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "later/1", 1, gatewaytest.Echo)
	if got := watchUntil(t, g, "", rec.ID, gateway.StateAnswered); string(got.Reply.Payload) != "kept" {
		t.Fatalf("reply %q", got.Reply.Payload)
	}
}

// Two replicas on mosquitto: the one that took a request goes away, and
// the other captures the reply and serves the record.
func TestAsyncOtherReplicaCapturesReply(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	a := startGateway(t, m.URL(), "replica-a", gateway.BrokerConfig{})
	bg := startGateway(t, m.URL(), "replica-b", gateway.BrokerConfig{})
	a.waitReady(t)
	bg.waitReady(t)
	got := make(chan *paho.Publish, 1)
	gatewaytest.StartResponder(t, m.URL(), "fleet/+", 1, func(req *paho.Publish) *paho.Publish {
		got <- req
		return nil
	})
	rec := submit(t, a, gateway.Request{Topic: "fleet/7", Payload: []byte("ping"), QoS: 1, Owner: "k"}, time.Minute)
	req := <-got
	gatewaytest.Eventually(t, 5*time.Second, "replica b knows the record", func() bool {
		r, err := bg.Lookup("k", rec.ID)
		return err == nil && r.State == gateway.StatePublished
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	cm := gatewaytest.Dial(t, m.URL(), gatewaytest.ClientOptions{}, nil)
	if _, err := cm.Publish(ctx, &paho.Publish{Topic: req.Properties.ResponseTopic, QoS: 1, Payload: []byte("pong"),
		Properties: &paho.PublishProperties{CorrelationData: req.Properties.CorrelationData}}); err != nil {
		t.Fatal(err)
	}
	if r := watchUntil(t, bg, "k", rec.ID, gateway.StateAnswered); string(r.Reply.Payload) != "pong" {
		t.Fatalf("reply %q", r.Reply.Payload)
	}
	if !strings.HasSuffix(req.Properties.ResponseTopic, "/async") {
		t.Fatalf("response topic %q, want the replicas' shared one", req.Properties.ResponseTopic)
	}
}

// Network clients may reply one level under the response prefix but not
// write deeper, where the records are: a forged record would be another
// API key's reply.
func TestRecordsCannotBeForged(t *testing.T) {
	t.Parallel()
	b, g := brokertest.Start(t, broker.Config{})
	rec := submit(t, g, gateway.Request{Topic: "nobody/here", QoS: 1}, time.Minute)
	cm := gatewaytest.Dial(t, "mqtt://"+b.Addr(), gatewaytest.ClientOptions{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, topic := range []string{g.ResponsePrefix() + "/records/" + rec.ID, g.ResponsePrefix() + "/x/y"} {
		pr, err := cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte{1}})
		if pr == nil || pr.ReasonCode != 0x87 {
			t.Fatalf("publish to %s: %+v %v, want 0x87 not authorized", topic, pr, err)
		}
	}
	if r, err := g.Lookup("", rec.ID); err != nil || r.State != gateway.StateWaiting {
		t.Fatalf("record after the forgery: %+v %v", r, err)
	}
}

// recordGauge reads mqttgw_request_records for state.
func recordGauge(t testing.TB, g *gateway.Gateway, state string) int {
	t.Helper()
	return int(gatewaytest.Metric(t, g.Collectors(), "mqttgw_request_records", "state="+state))
}
