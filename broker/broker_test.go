package broker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/goleak"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// mqttURL is the URL of b's plain MQTT listener.
func mqttURL(b *broker.Broker) string { return "mqtt://" + b.Addr() }

func TestRoundTripCarriesProperties(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	var seen atomic.Pointer[paho.Publish]
	gatewaytest.StartResponder(t, mqttURL(b), "svc/echo", 2, func(req *paho.Publish) *paho.Publish {
		seen.Store(req)
		return gatewaytest.Echo(req)
	})

	for qos := range byte(3) {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			props := []gateway.UserProperty{{Key: "b", Value: "2"}, {Key: "a", Value: "1"}, {Key: "b", Value: "3"}}
			reply, err := g.Request(ctx, gateway.Request{
				Topic: "svc/echo", Payload: []byte("ping"), ContentType: "text/plain", QoS: qos, UserProperties: props,
			})
			if err != nil {
				t.Fatal(err)
			}
			if string(reply.Payload) != "ping" || reply.ContentType != "text/plain" {
				t.Fatalf("reply %q %q", reply.Payload, reply.ContentType)
			}
			if fmt.Sprint(reply.UserProperties) != fmt.Sprint(props) {
				t.Fatalf("user properties %v, want %v in order", reply.UserProperties, props)
			}
			req := seen.Load()
			if req.QoS != qos {
				t.Errorf("responder got QoS %d, want %d", req.QoS, qos)
			}
			if req.Properties.ResponseTopic != g.ResponseTopic() || len(req.Properties.CorrelationData) != 36 {
				t.Errorf("responder got response topic %q, correlation %q", req.Properties.ResponseTopic, req.Properties.CorrelationData)
			}
			// mochi would stamp 86400 on a publish without expiry.
			if e := req.Properties.MessageExpiry; e == nil || *e < 4 || *e > 5 {
				t.Errorf("message expiry %v, want the 5s deadline", e)
			}
		})
	}
	if st := g.Stats(); st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNoRespondersIsImmediate(t *testing.T) {
	_, g := brokertest.Start(t, broker.Config{})
	start := time.Now()
	_, err := g.Request(context.Background(), gateway.Request{Topic: "nobody/home", QoS: 1})
	if !errors.Is(err, gateway.ErrNoResponders) {
		t.Fatalf("got %v, want ErrNoResponders", err)
	}
	// Checked before waiting: far below any timeout. (A generous bound so
	// a loaded CI machine can't make it flaky; the timeout is 10s.)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %s", d)
	}
	if g.Stats().Pending != 0 {
		t.Fatal("pending entry left behind")
	}
}

func TestWildcardAndSharedSubscribersCount(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	gatewaytest.StartResponder(t, mqttURL(b), "$share/workers/jobs/+/run", 1, gatewaytest.Echo)
	gatewaytest.StartResponder(t, mqttURL(b), "sensors/#", 1, gatewaytest.Echo)
	for _, topic := range []string{"jobs/7/run", "sensors/a/b"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := g.Request(ctx, gateway.Request{Topic: topic, Payload: []byte("x"), QoS: 1})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
	}
}

// TestConcurrentOutOfOrder sends 1,000 requests at once to a responder that
// answers in random order; each must get its own reply.
func TestConcurrentOutOfOrder(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	resp := gatewaytest.StartResponder(t, mqttURL(b), "svc/shuffle", 1, func(req *paho.Publish) *paho.Publish {
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		return gatewaytest.Echo(req)
	})
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			want := fmt.Sprintf("request-%d", i)
			reply, err := g.Request(ctx, gateway.Request{Topic: "svc/shuffle", Payload: []byte(want), QoS: 1})
			switch {
			case err != nil:
				errs <- err
			case string(reply.Payload) != want:
				errs <- fmt.Errorf("request %q got reply %q", want, reply.Payload)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := resp.Handled(); got != n {
		t.Errorf("responder handled %d requests, want %d", got, n)
	}
	if st := g.Stats(); st.Pending != 0 || st.Duplicates != 0 || st.Unknown != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRepliesArePrivate checks that no network client can read the
// gateway's replies, whatever filter it subscribes with.
func TestRepliesArePrivate(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{})
	gatewaytest.StartResponder(t, mqttURL(b), "svc/secret", 1, func(req *paho.Publish) *paho.Publish {
		return &paho.Publish{QoS: 1, Payload: []byte("the reply")}
	})

	var leaked atomic.Int64
	var sawRequest atomic.Bool
	spy := gatewaytest.Dial(t, mqttURL(b), gatewaytest.ClientOptions{}, func(p *paho.Publish) {
		if strings.HasPrefix(p.Topic, gateway.DefaultResponsePrefix) {
			leaked.Add(1)
		}
		if p.Topic == "svc/secret" {
			sawRequest.Store(true)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for filter, refused := range map[string]bool{
		"#":                        false, // allowed, but gets nothing under the prefix
		"+/reply/#":                false,
		"$share/g/#":               false,
		"mqttgw/reply/#":           true,
		g.ResponseTopic():          true,
		"$share/g/mqttgw/reply/+":  true,
		"$share/spy/" + "mqttgw/#": false,
		"mqttgw/+/" + "anything/#": false,
	} {
		sa, err := spy.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
		if err != nil && !refused {
			t.Fatalf("subscribe %q: %v", filter, err)
		}
		if err == nil && (sa.Reasons[0] >= 0x80) != refused {
			t.Errorf("subscribe %q: reason 0x%02x, want refused=%v", filter, sa.Reasons[0], refused)
		}
	}
	for range 20 {
		if _, err := g.Request(ctx, gateway.Request{Topic: "svc/secret", QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// The spy sees the requests ("#" works), so it would have seen the
	// replies had they reached it.
	gatewaytest.Eventually(t, 5*time.Second, "the spy sees the requests", sawRequest.Load)
	if n := leaked.Load(); n != 0 {
		t.Fatalf("a network client read %d replies", n)
	}
}

func TestWebSocketListener(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0"})
	if b.WSAddr() == "" || strings.HasSuffix(b.WSAddr(), ":0") {
		t.Fatalf("WSAddr %q is not a bound address", b.WSAddr())
	}
	gatewaytest.StartResponder(t, "ws://"+b.WSAddr()+"/mqtt", "svc/ws", 1, gatewaytest.Echo)
	reply, err := g.Request(context.Background(), gateway.Request{Topic: "svc/ws", Payload: []byte("over websocket"), QoS: 1})
	if err != nil || string(reply.Payload) != "over websocket" {
		t.Fatalf("got %q, %v", reply.Payload, err)
	}
}

func TestBindErrorsAreReturned(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, cfg := range []broker.Config{
		{TCPAddr: ln.Addr().String()},
		{TCPAddr: "127.0.0.1:0", WSAddr: ln.Addr().String()},
	} {
		b, err := broker.New(cfg)
		if err == nil {
			b.Close()
			t.Fatalf("New(%+v) succeeded on a port in use", cfg)
		}
	}
}
