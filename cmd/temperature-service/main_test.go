package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/goleak"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const requestTopic = "service/temperature/query"

func TestAnswersQueries(t *testing.T) {
	// The service needs only the broker; the gateway that comes with it
	// stays idle.
	b, _ := brokertest.Start(t, broker.Config{Logger: slog.New(slog.DiscardHandler)})
	stop := startService(t, b)
	req := newRequester(t, b.Addr())

	t.Run("Vienna", func(t *testing.T) {
		got := req.request(t, "query:Vienna")
		assertReply(t, got, "Temperature in Vienna: 22.5°C", "")
	})
	t.Run("Berlin", func(t *testing.T) {
		got := req.request(t, "query:Berlin")
		assertReply(t, got, "Temperature in Berlin: 18.3°C", "")
	})
	t.Run("unknown city is random from 10 to 30", func(t *testing.T) {
		got := req.request(t, "query:Graz")
		assertContentType(t, got)
		num, ok := strings.CutPrefix(string(got.Payload), "Temperature in Graz: ")
		num, ok2 := strings.CutSuffix(num, "°C")
		if !ok || !ok2 {
			t.Fatalf("payload %q, want Temperature in Graz: <t>°C", got.Payload)
		}
		if v, err := strconv.ParseFloat(num, 64); err != nil || v < 10 || v > 30 || strings.Count(num, ".") != 1 || len(num)-strings.Index(num, ".") != 2 {
			t.Errorf("temperature %q, want 10.0 to 30.0 with one decimal", num)
		}
	})
	t.Run("bad payload is 400", func(t *testing.T) {
		got := req.request(t, "temperature please")
		assertContentType(t, got)
		if s := got.Properties.User.Get("http-status"); s != "400" {
			t.Errorf("http-status %q, want 400", s)
		}
		if !strings.Contains(string(got.Payload), "query:<City>") {
			t.Errorf("payload %q should explain the query:<City> format", got.Payload)
		}
	})

	if err := stop(); err != nil {
		t.Fatalf("run returned %v, want nil", err)
	}
}

func TestFlags(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"--help"}, &out, io.Discard); err != nil {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(out.String(), "-broker") {
		t.Errorf("--help printed %q, want the flags", out.String())
	}
	for _, args := range [][]string{
		{"--qos", "3"},
		{"--broker", "not a url"},
		{"--nope"},
		{"extra"},
	} {
		if err := run(t.Context(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run %q: nil error, want one", args)
		}
	}
}

func assertReply(t *testing.T, got *paho.Publish, payload, status string) {
	t.Helper()
	if string(got.Payload) != payload {
		t.Errorf("payload %q, want %q", got.Payload, payload)
	}
	assertContentType(t, got)
	if s := got.Properties.User.Get("http-status"); s != status {
		t.Errorf("http-status %q, want %q", s, status)
	}
}

func assertContentType(t *testing.T, got *paho.Publish) {
	t.Helper()
	if got.Properties.ContentType != "text/plain" {
		t.Errorf("content type %q, want text/plain", got.Properties.ContentType)
	}
}

// startService runs the service against b until it has subscribed, and
// returns a stop that cancels it and yields run's result. The test's
// cleanup stops it too, for tests that fail first.
func startService(t *testing.T, b *broker.Broker) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &gatewaytest.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--broker", "mqtt://" + b.Addr()}, io.Discard, logs)
	}()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = fmt.Errorf("run did not return within 15s of cancel")
			}
		})
		return runErr
	}
	// Registered after the broker's cleanup, so it runs before it.
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stopping service: %v", err)
		}
		if t.Failed() {
			t.Logf("service log:\n%s", logs.String())
		}
	})

	// The service logs "subscribed" once its SUBACK is in, and the broker
	// records a subscription before it sends the SUBACK.
	gatewaytest.Eventually(t, 10*time.Second, fmt.Sprintf("service subscribed to %q", requestTopic), func() bool {
		select {
		case err := <-done:
			done <- err // for stop
			t.Fatalf("run returned before subscribing: %v", err)
		default:
		}
		return strings.Contains(logs.String(), "msg=subscribed")
	})
	return stop
}

// requester is the test's own MQTT v5 client: it asks the service
// directly, with a Response Topic and Correlation Data, as any MQTT v5
// requester would.
type requester struct {
	cm        *autopaho.ConnectionManager
	respTopic string
	replies   chan *paho.Publish
}

func newRequester(t *testing.T, addr string) *requester {
	t.Helper()
	// Not under mqttgw/reply: the broker keeps that for the gateway.
	r := &requester{
		respTopic: "test/replies/" + rand.Text(),
		replies:   make(chan *paho.Publish, 16),
	}
	r.cm = gatewaytest.Dial(t, "mqtt://"+addr, gatewaytest.ClientOptions{}, func(p *paho.Publish) {
		// Never block paho's reader; a test that overflows this buffer
		// has failed anyway.
		select {
		case r.replies <- p:
		default:
		}
	})
	if rc := gatewaytest.Subscribe(t, r.cm, r.respTopic, 1); rc >= 0x80 {
		t.Fatalf("subscribe %q refused: reason 0x%02x", r.respTopic, rc)
	}
	return r
}

// request publishes payload with a Response Topic and fresh Correlation
// Data, and returns the reply carrying that Correlation Data.
func (r *requester) request(t *testing.T, payload string) *paho.Publish {
	t.Helper()
	corr := []byte(rand.Text())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := r.cm.Publish(ctx, &paho.Publish{
		Topic:   requestTopic,
		QoS:     1,
		Payload: []byte(payload),
		Properties: &paho.PublishProperties{
			ResponseTopic:   r.respTopic,
			CorrelationData: corr,
			ContentType:     "text/plain",
		},
	}); err != nil {
		t.Fatalf("publish %q: %v", payload, err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case p := <-r.replies:
			if p.Properties == nil {
				t.Fatalf("reply %q without properties", p.Payload)
			}
			if !bytes.Equal(p.Properties.CorrelationData, corr) {
				t.Logf("skipping reply with correlation data %q, want %q", p.Properties.CorrelationData, corr)
				continue
			}
			if p.Topic != r.respTopic {
				t.Errorf("reply on %q, want %q", p.Topic, r.respTopic)
			}
			return p
		case <-deadline:
			t.Fatalf("no reply to %q within 5s", payload)
		}
	}
}
