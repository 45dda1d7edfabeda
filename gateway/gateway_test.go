package gateway

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeTransport records publishes and lets the test play the broker.
type fakeTransport struct {
	mu        sync.Mutex
	h         Handler
	published chan *Message
	err       error // returned by Publish
}

func newFake() *fakeTransport { return &fakeTransport{published: make(chan *Message, 16)} }

func (f *fakeTransport) Connect(_ context.Context, _ []string, h Handler) error {
	f.mu.Lock()
	f.h = h
	f.mu.Unlock()
	h.ConnectionUp()
	return nil
}

func (f *fakeTransport) Publish(_ context.Context, m *Message) error {
	if m.Retain {
		return nil // a request record: these tests watch requests
	}
	if f.err != nil {
		return f.err
	}
	f.published <- m
	return nil
}

func (f *fakeTransport) Close(context.Context) error { return nil }

func newTestGateway(t *testing.T, f Transport) *Gateway {
	t.Helper()
	g, err := New(Config{InstanceID: "test", RememberFinished: 8}, f)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(context.Background()) })
	return g
}

type outcome struct {
	reply Reply
	err   error
}

// request runs g.Request in the background and returns the message it
// published and a channel with its outcome.
func request(t *testing.T, g *Gateway, f *fakeTransport, ctx context.Context, req Request) (*Message, <-chan outcome) {
	t.Helper()
	out := make(chan outcome, 1)
	go func() {
		r, err := g.Request(ctx, req)
		out <- outcome{r, err}
	}()
	select {
	case m := <-f.published:
		return m, out
	case o := <-out:
		t.Fatalf("request ended before publishing: %v", o.err)
	case <-time.After(5 * time.Second):
		t.Fatal("nothing published")
	}
	return nil, nil
}

func wait(t *testing.T, out <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-out:
		return o
	case <-time.After(5 * time.Second):
		t.Fatal("request did not end")
		return outcome{}
	}
}

func assertEmpty(t *testing.T, g *Gateway) {
	t.Helper()
	if n := g.Stats().Pending; n != 0 {
		t.Fatalf("pending map holds %d entries, want 0", n)
	}
}

func TestRequestPublishesWithResponseTopicAndCorrelation(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	req := Request{
		Topic: "svc/echo", Payload: []byte("hi"), ContentType: "text/plain", QoS: 2,
		UserProperties: []UserProperty{{"a", "1"}, {"a", "2"}},
	}
	m, out := request(t, g, f, ctx, req)

	if m.Topic != "svc/echo" || string(m.Payload) != "hi" || m.ContentType != "text/plain" || m.QoS != 2 {
		t.Errorf("published %+v", m)
	}
	if m.ResponseTopic != "mqttgw/reply/test" || g.ResponseTopic() != m.ResponseTopic {
		t.Errorf("response topic %q", m.ResponseTopic)
	}
	if len(m.CorrelationData) != 36 {
		t.Errorf("correlation data %q is not a uuid", m.CorrelationData)
	}
	if m.MessageExpiry != 2 { // 1.5s rounded up
		t.Errorf("message expiry %d, want 2", m.MessageExpiry)
	}
	if len(m.UserProperties) != 2 || m.UserProperties[1] != (UserProperty{"a", "2"}) {
		t.Errorf("user properties %v", m.UserProperties)
	}

	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: []byte("ho"), ContentType: "x/y",
		UserProperties: []UserProperty{{"k", "v"}}})
	o := wait(t, out)
	if o.err != nil || string(o.reply.Payload) != "ho" || o.reply.ContentType != "x/y" || o.reply.UserProperties[0].Value != "v" {
		t.Fatalf("got %+v, %v", o.reply, o.err)
	}
	assertEmpty(t, g)
}

func TestCorrelationDataIsUnique(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	seen := map[string]bool{}
	for range 100 {
		m, out := request(t, g, f, context.Background(), Request{Topic: "t"})
		if seen[string(m.CorrelationData)] {
			t.Fatalf("correlation data %q reused", m.CorrelationData)
		}
		seen[string(m.CorrelationData)] = true
		g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData})
		wait(t, out)
	}
}

func TestLateDuplicateAndUnknownReplies(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)

	// Late: the request timed out before the reply came; the reply is
	// kept in the request's record.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	m, out := request(t, g, f, ctx, Request{Topic: "slow"})
	o := wait(t, out)
	var te *TimeoutError
	if !errors.As(o.err, &te) || !te.Kept || te.ID != string(m.CorrelationData) {
		t.Fatalf("got %#v, want a TimeoutError keeping record %s", o.err, m.CorrelationData)
	}
	assertEmpty(t, g)
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: []byte("late")})
	if rec, err := g.Lookup("", te.ID); err != nil || rec.State != StateAnswered || string(rec.Reply.Payload) != "late" {
		t.Fatalf("record %+v, %v; want the late reply answered", rec, err)
	}
	if _, err := g.Lookup("someone-else", te.ID); !errors.Is(err, ErrRecordNotFound) {
		t.Fatalf("another owner's lookup: %v, want ErrRecordNotFound", err)
	}

	// Duplicate: the first reply wins, the second is dropped.
	m, out = request(t, g, f, context.Background(), Request{Topic: "dup"})
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: []byte("first")})
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: []byte("second")})
	if o := wait(t, out); string(o.reply.Payload) != "first" {
		t.Fatalf("got %q, want the first reply", o.reply.Payload)
	}

	// Unknown: nobody ever asked.
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: []byte("nobody-asked")})
	g.HandleReply(&Message{Topic: g.ResponseTopic()})

	st := g.Stats()
	if st.Late != 0 || st.Duplicates != 1 || st.Unknown != 2 || st.Pending != 0 {
		t.Fatalf("stats %+v, want 0 late (the late reply was kept), 1 duplicate, 2 unknown, 0 pending", st)
	}
}

func TestRecentIDsAreBounded(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f) // remembers 8
	var first []byte
	for i := range 20 {
		m, out := request(t, g, f, context.Background(), Request{Topic: "t"})
		if i == 0 {
			first = m.CorrelationData
		}
		g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData})
		wait(t, out)
	}
	if n := len(g.pending.recentKind); n != 8 {
		t.Fatalf("remembers %d ids, want 8", n)
	}
	// Forgotten long ago: counted as unknown, not duplicate.
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: first})
	if st := g.Stats(); st.Unknown != 1 || st.Duplicates != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCancelBeforeReply(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	m, out := request(t, g, f, ctx, Request{Topic: "t"})
	cancel()
	o := wait(t, out)
	if !errors.Is(o.err, context.Canceled) || errors.Is(o.err, ErrTimeout) {
		t.Fatalf("got %v, want context.Canceled", o.err)
	}
	assertEmpty(t, g)
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData})
	if st := g.Stats(); st.Late != 1 {
		t.Fatalf("stats %+v, want the reply counted late", st)
	}
}

func TestShutdownWhileWaiting(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	_, out1 := request(t, g, f, context.Background(), Request{Topic: "a"})
	_, out2 := request(t, g, f, context.Background(), Request{Topic: "b"})
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, out := range []<-chan outcome{out1, out2} {
		if o := wait(t, out); !errors.Is(o.err, ErrClosed) {
			t.Fatalf("got %v, want ErrClosed", o.err)
		}
	}
	assertEmpty(t, g)
	if _, err := g.Request(context.Background(), Request{Topic: "c"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
	if !errors.Is(g.Ready(), ErrClosed) {
		t.Fatalf("Ready after Close: %v", g.Ready())
	}
}

func TestConnectionDownFailsWaitersAtOnce(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	_, out := request(t, g, f, context.Background(), Request{Topic: "a"})
	g.ConnectionDown(errors.New("broker went away"))
	if o := wait(t, out); !errors.Is(o.err, ErrNotConnected) {
		t.Fatalf("got %v, want ErrNotConnected", o.err)
	}
	assertEmpty(t, g)
	if _, err := g.Request(context.Background(), Request{Topic: "a"}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("while down: %v, want ErrNotConnected", err)
	}
	g.ConnectionUp()
	if err := g.Ready(); err != nil {
		t.Fatalf("Ready after reconnect: %v", err)
	}
}

func TestPublishErrorsRemoveTheEntry(t *testing.T) {
	for _, perr := range []error{ErrNoResponders, &PublishError{ReasonCode: 0x87}, context.DeadlineExceeded} {
		f := newFake()
		f.err = perr
		g := newTestGateway(t, f)
		_, err := g.Request(context.Background(), Request{Topic: "t"})
		if perr == context.DeadlineExceeded {
			perr = ErrTimeout
		}
		if !errors.Is(err, perr) {
			t.Fatalf("got %v, want %v", err, perr)
		}
		assertEmpty(t, g)
	}
}

func TestInvalidRequests(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	for _, tt := range []struct {
		req   Request
		field string
	}{
		{Request{Topic: "a/#"}, "topic"},
		{Request{Topic: "mqttgw/reply/other"}, "topic"},
		{Request{Topic: "a", QoS: 3}, "qos"},
		{Request{Topic: "a", ContentType: "text/\x01"}, "content type"},
		{Request{Topic: "a", UserProperties: []UserProperty{{"k\xff", "v"}}}, "user property"},
		{Request{Topic: "a", UserProperties: []UserProperty{{"k", "\uFFFF"}}}, "user property"},
	} {
		_, err := g.Request(context.Background(), tt.req)
		var inv *InvalidError
		if !errors.As(err, &inv) || string(inv.Field) != tt.field || !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%+v: got %v, want invalid %s", tt.req, err, tt.field)
		}
	}
	if len(f.published) != 0 {
		t.Fatal("an invalid request was published")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{ResponsePrefix: "a/+"},
		{ResponsePrefix: "$SYS/x"},
		{ResponsePrefix: "x/"},
		{InstanceID: "a/b"},
		{InstanceID: "a#"},
		{InstanceID: "\x00"},
	} {
		if _, err := New(cfg, newFake()); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	g, err := New(Config{}, newFake())
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(g.Ready(), ErrNotConnected) {
		t.Fatal("ready before Start")
	}
}

func TestExpirySeconds(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct {
		left time.Duration
		want uint32
	}{{-time.Second, 1}, {time.Millisecond, 1}, {time.Second, 1}, {time.Second + 1, 2}, {60 * time.Second, 60}} {
		if got := expirySeconds(now.Add(tt.left), now); got != tt.want {
			t.Errorf("expirySeconds(%s) = %d, want %d", tt.left, got, tt.want)
		}
	}
}

// A synchronous request with an idempotency key: a repeat while it waits
// is refused, its late reply is kept after the timeout, and a repeat then
// gets that reply without publishing again.
func TestIdempotentRequestKeepsItsLateReply(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	req := Request{Topic: "pay", Owner: "k", IdempotencyKey: "order-1", Fingerprint: "fp"}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	m, out := request(t, g, f, ctx, req)
	if _, err := g.Request(context.Background(), req); !errors.Is(err, ErrIdempotencyInFlight) {
		t.Fatalf("repeat in flight: %v, want ErrIdempotencyInFlight", err)
	}
	var te *TimeoutError
	if o := wait(t, out); !errors.As(o.err, &te) || !te.Kept || te.ID != string(m.CorrelationData) {
		t.Fatalf("first call: %v, want a timeout keeping its record", o.err)
	}
	time.Sleep(200 * time.Millisecond) // well past the call's deadline
	if _, err := g.Request(context.Background(), req); !errors.As(err, &te) || te.ID != string(m.CorrelationData) {
		t.Fatalf("repeat after the timeout: %v, want the first one's 504", err)
	}
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: []byte("late")})
	reply, err := g.Request(context.Background(), req)
	if err != nil || string(reply.Payload) != "late" {
		t.Fatalf("repeat after the late reply: %q %v", reply.Payload, err)
	}
	other := req
	other.Fingerprint = "other"
	if _, err := g.Request(context.Background(), other); !errors.Is(err, ErrIdempotencyMismatch) {
		t.Fatalf("another request with the key: %v", err)
	}
	select {
	case m := <-f.published:
		t.Fatalf("a repeat was published: %+v", m)
	default:
	}
	if st := g.Stats(); st.Late+st.Unknown+st.Duplicates != 0 {
		t.Fatalf("the late reply was counted as lost: %+v", st)
	}
}

// A request with an idempotency key that never reached the broker frees
// its key: the retry is published.
func TestIdempotencyKeyFreedWhenNotPublished(t *testing.T) {
	f := newFake()
	f.err = ErrNoResponders
	g := newTestGateway(t, f)
	req := Request{Topic: "pay", IdempotencyKey: "order-2", Fingerprint: "fp"}
	if _, err := g.Request(context.Background(), req); !errors.Is(err, ErrNoResponders) {
		t.Fatalf("got %v", err)
	}
	f.err = nil
	_, out := request(t, g, f, context.Background(), req)
	g.Close(context.Background())
	wait(t, out)
}

// stackTransport is fakeTransport that also notes the stack each Publish
// ran on; immediate makes it an ImmediatePublisher, as the embedded
// broker is.
type stackTransport struct {
	*fakeTransport
	stacks chan string
}

func (s *stackTransport) Publish(ctx context.Context, m *Message) error {
	if m.Retain {
		return nil // a request record, which the record writer publishes
	}
	buf := make([]byte, 16<<10)
	s.stacks <- string(buf[:runtime.Stack(buf, false)])
	return s.fakeTransport.Publish(ctx, m)
}

type immediateTransport struct{ *stackTransport }

func (immediateTransport) PublishesImmediately() {}

// TestPublishersRunThePublish: on a transport that publishes at once, a
// request is published by one of the gateway's publishers, not on the
// caller's goroutine, with the same outcome, a failed publish's
// included; one that waits for a responder, and any on a transport that
// may wait, publish on the caller's.
func TestPublishersRunThePublish(t *testing.T) {
	onPublisher := func(stack string) bool {
		return strings.Contains(stack, "(*publishers).run") && !strings.Contains(stack, "(*Gateway).request(")
	}
	ctx := context.Background()

	st := &stackTransport{fakeTransport: newFake(), stacks: make(chan string, 4)}
	g := newTestGateway(t, immediateTransport{st})
	m, out := request(t, g, st.fakeTransport, ctx, Request{Topic: "a"})
	if s := <-st.stacks; !onPublisher(s) {
		t.Errorf("not published by a publisher:\n%s", s)
	}
	g.HandleReply(&Message{Topic: g.ResponseTopic(), CorrelationData: m.CorrelationData, Payload: []byte("re")})
	if o := wait(t, out); o.err != nil || string(o.reply.Payload) != "re" {
		t.Errorf("got %q, %v", o.reply.Payload, o.err)
	}
	_, out = request(t, g, st.fakeTransport, ctx, Request{Topic: "b", WaitForResponder: time.Second, Deadline: time.Now().Add(50 * time.Millisecond)})
	if s := <-st.stacks; onPublisher(s) {
		t.Errorf("a request that may wait for a responder was published by a publisher:\n%s", s)
	}
	wait(t, out)
	st.err = ErrNoResponders
	if _, err := g.Request(ctx, Request{Topic: "c"}); !errors.Is(err, ErrNoResponders) {
		t.Errorf("failed publish: %v, want ErrNoResponders", err)
	}
	if s := <-st.stacks; !onPublisher(s) {
		t.Errorf("not published by a publisher:\n%s", s)
	}
	assertEmpty(t, g)

	other := &stackTransport{fakeTransport: newFake(), stacks: make(chan string, 4)}
	g2 := newTestGateway(t, other)
	_, out = request(t, g2, other.fakeTransport, ctx, Request{Topic: "d", Deadline: time.Now().Add(50 * time.Millisecond)})
	if s := <-other.stacks; onPublisher(s) {
		t.Errorf("a transport that may wait had its request published by a publisher:\n%s", s)
	}
	wait(t, out)
}

// TestRequestDeadline: a request's own deadline ends its wait as a
// context's does, the earlier of the two applying, and the timeout says
// how long it waited.
func TestRequestDeadline(t *testing.T) {
	f := newFake()
	g := newTestGateway(t, f)
	for _, c := range []struct {
		name        string
		ctxTimeout  time.Duration // 0: none
		reqDeadline time.Duration
		want        string
	}{
		{"request's", 0, 200 * time.Millisecond, "within 200ms"},
		{"context's earlier", 100 * time.Millisecond, 10 * time.Second, "within 100ms"},
		{"request's earlier", 10 * time.Second, 150 * time.Millisecond, "within 150ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			if c.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.ctxTimeout)
				defer cancel()
			}
			_, out := request(t, g, f, ctx, Request{Topic: "t", Deadline: time.Now().Add(c.reqDeadline)})
			o := wait(t, out)
			var te *TimeoutError
			if !errors.As(o.err, &te) || !strings.Contains(o.err.Error(), c.want) {
				t.Fatalf("got %v, want a timeout %s", o.err, c.want)
			}
			assertEmpty(t, g)
		})
	}
}
