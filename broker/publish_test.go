package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// A publication reaches subscribers with its properties and no Response
// Topic or Correlation Data; with nobody subscribed it is still taken, and
// retained for later ones with its expiry counted down.
func TestPublication(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Nobody subscribed: taken all the same, and retained.
	err := g.Publish(ctx, gateway.Publication{Topic: "lamps/1/state", Payload: []byte("on"), ContentType: "text/plain",
		UserProperties: []gateway.UserProperty{{Key: "by", Value: "ops"}}, QoS: 1, Retain: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var got []*paho.Publish
	cm := gatewaytest.Dial(t, "mqtt://"+b.Addr(), gatewaytest.ClientOptions{}, func(p *paho.Publish) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, p)
	})
	if code := gatewaytest.Subscribe(t, cm, "lamps/#", 1); code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}
	if err := g.Publish(ctx, gateway.Publication{Topic: "lamps/2/state", Payload: []byte("off"), QoS: 0}); err != nil {
		t.Fatal(err)
	}
	gatewaytest.Eventually(t, 5*time.Second, "the retained and the live publication", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	// mochi sends the retained message after the SUBACK, from the
	// subscriber's own goroutine: the live one may overtake it.
	retained, live := got[0], got[1]
	if retained.Topic != "lamps/1/state" {
		retained, live = live, retained
	}
	if retained.Topic != "lamps/1/state" || string(retained.Payload) != "on" || !retained.Retain ||
		retained.Properties.ContentType != "text/plain" || retained.Properties.User.Get("by") != "ops" ||
		retained.Properties.MessageExpiry == nil || *retained.Properties.MessageExpiry > 3600 || *retained.Properties.MessageExpiry < 3590 {
		t.Fatalf("retained publication %+v, properties %+v", retained, retained.Properties)
	}
	if live.Topic != "lamps/2/state" || string(live.Payload) != "off" || live.Retain {
		t.Fatalf("live publication %+v", live)
	}
	for _, p := range got {
		if p.Properties.ResponseTopic != "" || p.Properties.CorrelationData != nil {
			t.Fatalf("a publication carries a response topic or correlation data: %+v", p.Properties)
		}
	}
}
