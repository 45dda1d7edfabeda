package broker

import (
	"context"
	"errors"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway"
)

// connectSession connects a client with a persistent session (Clean
// Start 0, an hour's Session Expiry) and returns it with the messages it
// receives.
func connectSession(t *testing.T, addr, id string) (*paho.Client, <-chan *paho.Publish, bool) {
	t.Helper()
	return connectSessionFor(t, addr, id, 3600)
}

// connectSessionFor is connectSession with a Session Expiry of expiry
// seconds.
func connectSessionFor(t *testing.T, addr, id string, expiry uint32) (*paho.Client, <-chan *paho.Publish, bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 16)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: id, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) { got <- pr.Packet; return true, nil },
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ack)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return c, got, ack.SessionPresent
}

func startStored(t *testing.T, dir, addr string) *Broker {
	t.Helper()
	b, err := New(Config{TCPAddr: addr, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	return b
}

// With a data directory, an offline session's queued messages survive a
// restart: each one, with its own packet id, its Message Expiry counted
// down, and an expired one never delivered.
func TestDataDirKeepsQueuedMessages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := startStored(t, dir, "127.0.0.1:0")
	addr := b.Addr()
	c, _, _ := connectSession(t, addr, "sleeper")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "cmd/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the broker notices the disconnect

	tr := b.Transport()
	for _, m := range []gateway.Message{
		{Topic: "cmd/a", Payload: []byte("a"), QoS: 1, MessageExpiry: 60},
		{Topic: "cmd/b", Payload: []byte("b"), QoS: 1, MessageExpiry: 60},
		{Topic: "cmd/c", Payload: []byte("c"), QoS: 1},
		{Topic: "cmd/gone", Payload: []byte("gone"), QoS: 1, MessageExpiry: 1},
	} {
		if err := tr.Publish(ctx, &m); err != nil {
			t.Fatalf("publish %s: %v", m.Topic, err)
		}
	}
	b.Close()
	time.Sleep(2100 * time.Millisecond) // cmd/gone expires meanwhile

	b = startStored(t, dir, addr)
	defer b.Close()
	_, got, present := connectSession(t, addr, "sleeper")
	if !present {
		t.Fatal("the session was not restored")
	}
	var topics []string
	timeout := time.After(2 * time.Second)
	for len(topics) < 4 {
		select {
		case p := <-got:
			topics = append(topics, p.Topic)
			switch {
			case p.Topic == "cmd/c":
				if p.Properties.MessageExpiry != nil {
					t.Errorf("cmd/c gained a Message Expiry of %d", *p.Properties.MessageExpiry)
				}
			case p.Properties.MessageExpiry == nil:
				t.Errorf("%s lost its Message Expiry", p.Topic)
			case *p.Properties.MessageExpiry > 58:
				t.Errorf("%s: Message Expiry %d, want 60 counted down", p.Topic, *p.Properties.MessageExpiry)
			}
		case <-timeout:
			sort.Strings(topics)
			if len(topics) != 3 || topics[0] != "cmd/a" || topics[1] != "cmd/b" || topics[2] != "cmd/c" {
				t.Fatalf("after the restart the session got %v, want cmd/a, cmd/b and cmd/c", topics)
			}
			return
		}
	}
	t.Fatalf("after the restart the session got %v, with the expired one", topics)
}

// An expired session's subscriptions stop counting: a request to its
// topic is refused as having no responder, not published to nobody.
func TestExpiredSessionIsNoSubscriber(t *testing.T) {
	t.Parallel()
	b, err := New(Config{TCPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, _, _ := connectSessionFor(t, b.Addr(), "brief", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "brief/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	_ = c.Disconnect(&paho.Disconnect{})
	tr := b.Transport()
	request := &gateway.Message{Topic: "brief/cmd", QoS: 1, ResponseTopic: "mqttgw/reply/x", CorrelationData: []byte("1")}
	if err := tr.Publish(ctx, request); err != nil {
		t.Fatalf("while the session lives: %v", err)
	}
	deadline := time.Now().Add(6 * time.Second)
	for {
		err := tr.Publish(ctx, request)
		if errors.Is(err, gateway.ErrNoResponders) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the session expired 1s after it ended, but its subscription still counts: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
