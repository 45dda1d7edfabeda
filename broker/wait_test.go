package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// A request that waits for a responder is published on the subscription
// itself, not on a poll.
func TestWaitForResponder(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	type result struct {
		reply gateway.Reply
		err   error
		at    time.Time
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		r, err := g.Request(ctx, gateway.Request{Topic: "late/svc", Payload: []byte("hi"), QoS: 1, WaitForResponder: 10 * time.Second})
		done <- result{r, err, time.Now()}
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("the request ended before any responder: %v", r.err)
	default:
	}
	subscribed := time.Now()
	gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "late/+", 1, gatewaytest.Echo)
	r := <-done
	if r.err != nil || string(r.reply.Payload) != "hi" {
		t.Fatalf("got %q, %v", r.reply.Payload, r.err)
	}
	if d := r.at.Sub(subscribed); d > time.Second {
		t.Fatalf("answered %s after the responder subscribed", d)
	}
	if n := g.Stats().Pending; n != 0 {
		t.Fatalf("%d pending", n)
	}
}

func TestWaitForResponderInVain(t *testing.T) {
	_, g := brokertest.Start(t, broker.Config{})
	start := time.Now()
	_, err := g.Request(context.Background(), gateway.Request{Topic: "nobody/home", QoS: 1, WaitForResponder: 500 * time.Millisecond})
	if !errors.Is(err, gateway.ErrNoResponders) || !strings.Contains(err.Error(), "within the 500ms waited") {
		t.Fatalf("got %v, want no responders naming the wait", err)
	}
	if d := time.Since(start); d < 500*time.Millisecond || d > 3*time.Second {
		t.Fatalf("gave up after %s", d)
	}
	// A request that gives up on its own deadline first ends with it.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := g.Request(ctx, gateway.Request{Topic: "nobody/home", WaitForResponder: 5 * time.Second}); !errors.Is(err, gateway.ErrNoResponders) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("got %v", err)
	}
	if n := g.Stats().Pending; n != 0 {
		t.Fatalf("%d pending", n)
	}
}
