package gateway

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestReplyLargerThanMaxReplyFailsTheRequest(t *testing.T) {
	f := newFake()
	g, err := New(Config{InstanceID: "test", MaxReply: 1000}, f)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(context.Background()) })

	// At the bound, counting payload, content type and properties: taken.
	m, out := request(t, g, f, context.Background(), Request{Topic: "svc"})
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: bytes.Repeat([]byte("x"), 990),
		ContentType: "text/x", UserProperties: []UserProperty{{Key: "k", Value: "vwx"}}})
	if o := wait(t, out); o.err != nil || len(o.reply.Payload) != 990 {
		t.Fatalf("reply at the bound: %d bytes, %v", len(o.reply.Payload), o.err)
	}

	// One byte over: refused, counted, the entry removed.
	m, out = request(t, g, f, context.Background(), Request{Topic: "svc"})
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: bytes.Repeat([]byte("x"), 990),
		ContentType: "text/x", UserProperties: []UserProperty{{Key: "k", Value: "vwxy"}}})
	o := wait(t, out)
	if !errors.Is(o.err, ErrReplyTooLarge) || !strings.Contains(o.err.Error(), "1001 bytes; at most 1000") {
		t.Fatalf("oversized reply: %v, want ErrReplyTooLarge naming both sizes", o.err)
	}
	if s := g.Stats(); s.Oversized != 1 || s.Pending != 0 {
		t.Fatalf("stats %+v, want 1 oversized and nothing pending", s)
	}
	// A second oversized reply to the same request is a duplicate, not
	// another refusal.
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: make([]byte, 5000)})
	if s := g.Stats(); s.Oversized != 1 || s.Duplicates != 1 {
		t.Fatalf("stats %+v, want 1 oversized and 1 duplicate", s)
	}
}

func TestRequestWhoseClientIsGoneIsNotPublished(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := g.Request(ctx, Request{Topic: "svc"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Request with a cancelled context: %v, want context.Canceled", err)
	}
	select {
	case m := <-f.published:
		t.Fatalf("published %q for a client that was gone", m.Topic)
	default:
	}
	assertEmpty(t, g)
}

func TestDialRefusesCredentialsInTheURL(t *testing.T) {
	u, _ := url.Parse("mqtt://user:s3cret@broker:1883")
	_, err := Dial(BrokerConfig{URL: u, ClientID: "x"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Dial with a password in the URL: %v; want an error that does not show it", err)
	}
}

// noResponders fails its first publishes with ErrNoResponders, as a
// broker's PUBACK 0x10 does until a responder subscribes.
type noResponders struct {
	*fakeTransport
	mu       sync.Mutex
	refuse   int // publishes left to refuse
	attempts int
	expiries []uint32
}

func (f *noResponders) Publish(ctx context.Context, m *Message) error {
	f.mu.Lock()
	f.attempts++
	f.expiries = append(f.expiries, m.MessageExpiry)
	refuse := f.refuse > 0
	f.refuse--
	f.mu.Unlock()
	if refuse {
		return ErrNoResponders
	}
	return f.fakeTransport.Publish(ctx, m)
}

func TestWaitForResponderRetries(t *testing.T) {
	f := &noResponders{fakeTransport: newFake(), refuse: 3}
	g := newTestGateway(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, out := request(t, g, f.fakeTransport, ctx, Request{Topic: "svc", WaitForResponder: 5 * time.Second})
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: []byte("late but there")})
	if o := wait(t, out); o.err != nil || string(o.reply.Payload) != "late but there" {
		t.Fatalf("got %q, %v", o.reply.Payload, o.err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attempts != 4 {
		t.Fatalf("%d publishes, want 3 refused and 1 taken", f.attempts)
	}
	// Each attempt's Message Expiry is the time left then.
	if f.expiries[0] != 10 || f.expiries[3] > 10 {
		t.Fatalf("message expiries %v", f.expiries)
	}
	assertEmpty(t, g)
}

func TestWaitForResponderGivesUp(t *testing.T) {
	f := &noResponders{fakeTransport: newFake(), refuse: 1 << 30}
	g := newTestGateway(t, f)
	start := time.Now()
	_, err := g.Request(context.Background(), Request{Topic: "svc", WaitForResponder: 300 * time.Millisecond})
	if !errors.Is(err, ErrNoResponders) || !strings.Contains(err.Error(), "within the 300ms waited") {
		t.Fatalf("got %v, want no responders naming the wait", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Fatalf("gave up after %s, want about 300ms", d)
	}
	assertEmpty(t, g)

	// Without a wait, at once.
	f.mu.Lock()
	f.attempts = 0
	f.mu.Unlock()
	if _, err := g.Request(context.Background(), Request{Topic: "svc"}); !errors.Is(err, ErrNoResponders) || strings.Contains(err.Error(), "waited") {
		t.Fatalf("got %v", err)
	}
	if f.attempts != 1 {
		t.Fatalf("%d publishes without a wait, want 1", f.attempts)
	}
}

func TestPublicationIsTakenWithoutSubscribers(t *testing.T) {
	f := &noResponders{fakeTransport: newFake(), refuse: 1}
	g := newTestGateway(t, f)
	// PUBACK 0x10 is a success: the broker took it, nobody listens now.
	if err := g.Publish(context.Background(), Publication{Topic: "lamps/1", TTL: 1500 * time.Millisecond}); err != nil {
		t.Fatalf("Publish with nobody subscribed: %v", err)
	}
	if f.expiries[0] != 2 {
		t.Fatalf("Message Expiry %d for a TTL of 1.5s, want it rounded up to 2", f.expiries[0])
	}
	if err := g.Publish(context.Background(), Publication{Topic: "lamps/#"}); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("Publish to a filter: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Publish(ctx, Publication{Topic: "lamps/1"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish for a client that is gone: %v", err)
	}
	if f.attempts != 1 {
		t.Fatalf("%d publishes, want 1", f.attempts)
	}
}
