package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// mqttClient is one paho.golang connection of the bench: the native
// requester's or a responder's. paho directly rather than autopaho: a
// benchmark wants no reconnects, only an error when the link drops.
type mqttClient struct {
	*paho.Client
}

// dialMQTT connects to broker (mqtt://host:port or host:port) as a fresh
// MQTT v5 session with a random client id starting with prefix; onPublish
// sees every PUBLISH received, onError every connection error.
func dialMQTT(ctx context.Context, broker, prefix string, onPublish func(paho.PublishReceived) (bool, error), onError func(error)) (*mqttClient, error) {
	addr := broker
	if u, err := url.Parse(broker); err == nil && u.Host != "" {
		addr = u.Host
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	id := prefix + "-" + rand.Text()[:10]
	c := paho.NewClient(paho.ClientConfig{
		Conn:              conn,
		ClientID:          id,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){onPublish},
		OnClientError:     onError,
		OnServerDisconnect: func(d *paho.Disconnect) {
			onError(fmt.Errorf("broker disconnected %s: reason 0x%02x", id, d.ReasonCode))
		},
	})
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("mqtt connect %s: %w", addr, err)
	}
	if ca.ReasonCode >= 0x80 {
		conn.Close()
		return nil, fmt.Errorf("mqtt connect %s: reason 0x%02x", addr, ca.ReasonCode)
	}
	return &mqttClient{c}, nil
}

// subscribe subscribes to filter at qos and waits for the SUBACK.
func (c *mqttClient) subscribe(ctx context.Context, filter string, qos byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		return fmt.Errorf("subscribe %q refused: %v", filter, sa.Reasons)
	}
	return nil
}

// close disconnects and waits, a few seconds at most, for paho's
// goroutines to end.
func (c *mqttClient) close() {
	_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
	}
}
