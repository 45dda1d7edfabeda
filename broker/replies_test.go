package broker_test

// Responders that misbehave, seen from the gateway on the broker's
// in-process transport. Only what needs the broker is tested here: what it
// relays of a reply and what it cuts off. How the gateway matches replies
// (late, duplicate, unknown, too large) is the gateway package's business,
// and what becomes of a reply in HTTP the api package's.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// replyWait bounds every wait in this file.
const replyWait = 10 * time.Second

// rawClient is a plain paho client that hands the messages it receives to
// the test. Unlike gatewaytest.Dial's it never reconnects, so the test
// sees when the broker drops it, and a malformed publish is not sent again.
type rawClient struct {
	c    *paho.Client
	msgs chan *paho.Publish
	// disconnect receives the broker's DISCONNECT, if it sends one.
	disconnect chan *paho.Disconnect
}

var rawClientIDs atomic.Int64

// connectRaw connects a rawClient to the broker's plain MQTT listener and
// subscribes it to filter. The test's cleanup disconnects it.
func connectRaw(t *testing.T, b *broker.Broker, filter string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", b.Addr(), replyWait)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{msgs: make(chan *paho.Publish, 16), disconnect: make(chan *paho.Disconnect, 1)}
	id := fmt.Sprintf("raw-%d", rawClientIDs.Add(1))
	rc.c = paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				select {
				case rc.msgs <- pr.Packet:
				default: // the test reads every message it provokes; never block paho
				}
				return true, nil
			},
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case rc.disconnect <- d:
			default:
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	ca, err := rc.c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		// Disconnect closes the connection and waits for paho's
		// goroutines, also when the broker has already dropped it.
		_ = rc.c.Disconnect(&paho.Disconnect{})
		<-rc.c.Done()
	})
	if ca.ReasonCode != 0 {
		t.Fatalf("CONNACK reason 0x%02x", ca.ReasonCode)
	}
	sa, err := rc.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe %q: %v %+v", filter, err, sa)
	}
	return rc
}

// next returns the next message the client received.
func (rc *rawClient) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case p := <-rc.msgs:
		if p.Properties == nil {
			p.Properties = &paho.PublishProperties{}
		}
		return p
	case <-time.After(replyWait):
		t.Fatalf("no message within %s", replyWait)
		return nil
	}
}

// request returns the next request the client received.
func (rc *rawClient) request(t *testing.T) *paho.Publish {
	t.Helper()
	p := rc.next(t)
	if p.Properties.ResponseTopic == "" || len(p.Properties.CorrelationData) == 0 {
		t.Fatalf("request without response topic or correlation data: %+v", p)
	}
	return p
}

// publish sends p at QoS 1 and returns the broker's answer, or an error
// once the connection is gone: paho keeps waiting for the PUBACK of a
// publish whose connection dropped, until its context ends.
func (rc *rawClient) publish(p *paho.Publish) (*paho.PublishResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	go func() {
		select {
		case <-rc.c.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	p.QoS = 1
	return rc.c.Publish(ctx, p)
}

// mustPublish sends p and fails unless the broker acknowledges it.
func (rc *rawClient) mustPublish(t *testing.T, p *paho.Publish) {
	t.Helper()
	pr, err := rc.publish(p)
	if err != nil || pr.ReasonCode >= 0x80 {
		t.Fatalf("publish: %v %+v", err, pr)
	}
}

// connected reports whether the broker has not dropped the client.
func (rc *rawClient) connected() bool {
	select {
	case <-rc.c.Done():
		return false
	default:
		return true
	}
}

// dropped waits until the broker has closed the client's connection.
func (rc *rawClient) dropped(t *testing.T) {
	t.Helper()
	select {
	case <-rc.c.Done():
	case <-time.After(replyWait):
		t.Fatal("the client is still connected")
	}
}

// replyTo addresses a reply to req with the given correlation data.
func replyTo(req *paho.Publish, corr []byte, payload []byte, props ...paho.UserProperty) *paho.Publish {
	return &paho.Publish{
		Topic:      req.Properties.ResponseTopic,
		Payload:    payload,
		Properties: &paho.PublishProperties{CorrelationData: corr, User: props},
	}
}

// outcome is how a request ended.
type outcome struct {
	reply gateway.Reply
	err   error
}

// requestAsync sends a request on topic in the background.
func requestAsync(g *gateway.Gateway, topic string, timeout time.Duration) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		r, err := g.Request(ctx, gateway.Request{Topic: topic, Payload: []byte("q"), QoS: 1})
		ch <- outcome{r, err}
	}()
	return ch
}

// wait returns the outcome of a request sent with requestAsync.
func wait(t *testing.T, ch <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(2 * replyWait):
		t.Fatal("the request did not end")
		return outcome{}
	}
}

// Correlation data near the request's, and more of it than MQTT can carry,
// reaches the gateway as replies to no request, and the request still
// gets its own reply.
func TestRepliesWithWrongCorrelationData(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	rc := connectRaw(t, b, "svc/corr")
	res := requestAsync(g, "svc/corr", replyWait)
	req := rc.request(t)
	id := req.Properties.CorrelationData
	oneBitOff := bytes.Clone(id)
	oneBitOff[len(oneBitOff)-1] ^= 1
	// MQTT binary data carries a 16-bit length [MQTT-1.5.6], so 1 MiB
	// can't be sent: paho.golang cuts it to 65,535 bytes, the most any
	// broker can relay. It starts with the real id but isn't it.
	long := append(bytes.Clone(id), bytes.Repeat([]byte{'z'}, 1<<20)...)
	before := g.Stats()
	for _, corr := range [][]byte{oneBitOff, append(bytes.Clone(id), 'x'), long} {
		rc.mustPublish(t, replyTo(req, corr, []byte("junk")))
	}
	rc.mustPublish(t, replyTo(req, id, []byte("right")))
	if o := wait(t, res); o.err != nil || string(o.reply.Payload) != "right" {
		t.Fatalf("got %q, %v; want the right reply", o.reply.Payload, o.err)
	}
	gatewaytest.Eventually(t, replyWait, "3 unknown replies counted", func() bool { return g.Stats().Unknown == before.Unknown+3 })
	if s := g.Stats(); s.Late != before.Late || s.Duplicates != before.Duplicates || s.Pending != 0 {
		t.Fatalf("stats %+v, before %+v", s, before)
	}
	// What the broker relays is indeed cut to 65,535 bytes: send it to
	// the client's own subscription to see.
	rc.mustPublish(t, &paho.Publish{Topic: "svc/corr", Properties: &paho.PublishProperties{CorrelationData: long}})
	if got := rc.next(t).Properties.CorrelationData; !bytes.Equal(got, long[:65535]) {
		t.Fatalf("the broker relayed %d bytes of correlation data, want the first 65535", len(got))
	}
	if !rc.connected() {
		t.Fatal("the broker dropped the responder")
	}
}

// User properties that are valid MQTT strings reach the gateway as sent,
// in order, whatever they would do to an HTTP header: keeping those out of
// the headers is the HTTP side's job, and the responder stays connected.
func TestReplyPropertiesAreRelayedAsSent(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	rc := connectRaw(t, b, "svc/props")
	res := requestAsync(g, "svc/props", replyWait)
	req := rc.request(t)
	props := []paho.UserProperty{
		{Key: "ok1", Value: "1"},
		{Key: "crlf", Value: "a\r\nInjected: yes"},
		{Key: "x\r\nInjected", Value: "yes"},
		{Key: "lf", Value: "a\nInjected: yes"},
		{Key: "cr", Value: "a\rInjected: yes"},
		{Key: "split", Value: "a\r\n\r\n<html>"},
		{Key: "ctl", Value: "a\x01b"},
		{Key: "del", Value: "a\x7fb"},
		{Key: "tab", Value: "a\tb"},
		{Key: "ключ", Value: "значение"},
		{Key: "ok2", Value: "2"},
	}
	rc.mustPublish(t, replyTo(req, req.Properties.CorrelationData, []byte("right"), props...))
	o := wait(t, res)
	if o.err != nil || string(o.reply.Payload) != "right" {
		t.Fatalf("got %q, %v", o.reply.Payload, o.err)
	}
	want := make([]gateway.UserProperty, len(props))
	for i, p := range props {
		want[i] = gateway.UserProperty{Key: p.Key, Value: p.Value}
	}
	if !slices.Equal(o.reply.UserProperties, want) {
		t.Fatalf("user properties %q, want %q", o.reply.UserProperties, want)
	}
	if !rc.connected() {
		t.Fatal("the broker dropped a responder for CR/LF in a user property")
	}
}

// NUL and invalid UTF-8 are malformed MQTT strings [MQTT-1.5.4-1]
// [MQTT-1.5.4-2]. paho.golang sends them as given; mochi's decoder refuses
// the PUBLISH and closes the responder's connection, without a DISCONNECT.
// The reply never reaches the gateway, so the request ends at its own
// timeout, and nothing else is disturbed.
func TestMalformedReplyDropsOnlyTheResponder(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	before := g.Stats()
	t.Run("replies", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			prop paho.UserProperty
		}{
			{"NUL in value", paho.UserProperty{Key: "nul", Value: "a\x00b"}},
			{"NUL in key", paho.UserProperty{Key: "n\x00l", Value: "v"}},
			{"invalid UTF-8 in value", paho.UserProperty{Key: "utf8", Value: "a\xffb"}},
			{"invalid UTF-8 in key", paho.UserProperty{Key: "\xc3(", Value: "v"}},
			{"surrogate in value", paho.UserProperty{Key: "utf8", Value: "\xed\xa0\x80"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				topic := "svc/malformed/" + strings.ReplaceAll(tt.name, " ", "-")
				rc := connectRaw(t, b, topic)
				res := requestAsync(g, topic, time.Second)
				req := rc.request(t)
				_, err := rc.publish(replyTo(req, req.Properties.CorrelationData, []byte("right"), paho.UserProperty{Key: "ok", Value: "1"}, tt.prop))
				if err == nil {
					t.Fatal("the broker acknowledged a malformed PUBLISH")
				}
				rc.dropped(t)
				select {
				case d := <-rc.disconnect:
					t.Fatalf("unexpected DISCONNECT %+v: update the comment above", d)
				default:
				}
				if o := wait(t, res); !errors.Is(o.err, gateway.ErrTimeout) {
					t.Fatalf("got %q, %v; want ErrTimeout", o.reply.Payload, o.err)
				}
			})
		}
	})
	// The subtests ran in parallel: only now is nothing more to come.
	if s := g.Stats(); s.Unknown != before.Unknown || s.Late != before.Late || s.Pending != 0 {
		t.Fatalf("stats %+v, before %+v: something of the malformed replies arrived", s, before)
	}
	if err := g.Ready(); err != nil {
		t.Fatalf("gateway not ready: %v", err)
	}
	gatewaytest.StartResponder(t, mqttURL(b), "svc/echo", 1, gatewaytest.Echo)
	if r, err := g.Request(context.Background(), gateway.Request{Topic: "svc/echo", Payload: []byte("alive"), QoS: 1}); err != nil || string(r.Payload) != "alive" {
		t.Fatalf("after the malformed replies: %q, %v", r.Payload, err)
	}
}

// A reply as large as the gateway takes gets through a broker whose
// largest packet leaves room for it, as mqttgw sizes it from --max-reply;
// a larger packet never gets in: the broker drops the responder, counts
// the packet, and the request ends at its timeout.
func TestReplyAboveMaxPacketSize(t *testing.T) {
	const maxPacket = gateway.DefaultMaxReply + 64<<10
	b, g := brokertest.Start(t, broker.Config{MaxPacketSize: maxPacket})
	rc := connectRaw(t, b, "svc/huge")

	res := requestAsync(g, "svc/huge", replyWait)
	req := rc.request(t)
	huge := make([]byte, gateway.DefaultMaxReply)
	for i := range huge {
		huge[i] = byte(i * 7 / 3)
	}
	rc.mustPublish(t, replyTo(req, req.Properties.CorrelationData, huge))
	if o := wait(t, res); o.err != nil || !bytes.Equal(o.reply.Payload, huge) {
		t.Fatalf("reply of %d bytes: got %d bytes, %v; want it whole", len(huge), len(o.reply.Payload), o.err)
	}

	res = requestAsync(g, "svc/huge", time.Second)
	req = rc.request(t)
	if _, err := rc.publish(replyTo(req, req.Properties.CorrelationData, make([]byte, 2*gateway.DefaultMaxReply))); err == nil {
		t.Fatal("the broker acknowledged a PUBLISH above its maximum packet size")
	}
	rc.dropped(t)
	if o := wait(t, res); !errors.Is(o.err, gateway.ErrTimeout) {
		t.Fatalf("got %d bytes, %v; want ErrTimeout", len(o.reply.Payload), o.err)
	}
	if n := metric(t, b, "mqttgw_embedded_broker_oversized_packets_total", ""); n != 1 {
		t.Fatalf("%v oversized packets counted, want 1", n)
	}
	if err := g.Ready(); err != nil {
		t.Fatalf("gateway not ready: %v", err)
	}
}
