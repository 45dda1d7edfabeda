package gateway

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
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
	g.HandleReply(&Message{CorrelationData: m.CorrelationData, Payload: bytes.Repeat([]byte("x"), 990),
		ContentType: "text/x", UserProperties: []UserProperty{{Key: "k", Value: "vwx"}}})
	if o := wait(t, out); o.err != nil || len(o.reply.Payload) != 990 {
		t.Fatalf("reply at the bound: %d bytes, %v", len(o.reply.Payload), o.err)
	}

	// One byte over: refused, counted, the entry removed.
	m, out = request(t, g, f, context.Background(), Request{Topic: "svc"})
	g.HandleReply(&Message{CorrelationData: m.CorrelationData, Payload: bytes.Repeat([]byte("x"), 990),
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
	g.HandleReply(&Message{CorrelationData: m.CorrelationData, Payload: make([]byte, 5000)})
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
