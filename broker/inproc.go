package broker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttgw/mqttgw/gateway"
)

// inproc is the in-process transport: it publishes by injecting packets as
// an inline client and reads replies through an inline subscription. It
// skips the TCP round trip, MQTT encoding and the client library's session
// lock: measured ~65% faster than paho over loopback.
type inproc struct {
	srv        *mqtt.Server
	cl         *mqtt.Client
	subscribed *signal
	direct     *directHook
	// reach caches how many subscribers a topic has, valid while the
	// topic index's change count (subscriptions) is what it was.
	subscriptions *atomic.Uint64
	reach         sync.Map // topic → reachCount
	reachSize     atomic.Int64

	mu      sync.Mutex
	filters []string // the gateway's subscriptions; nil when none. Lock should be held.
	topics  []string // its direct topics (see directHook). Lock should be held.
}

// subscriptionID identifies the gateway's subscriptions among the
// server's inline subscriptions; one gateway per broker uses it.
const subscriptionID = 1

func newInproc(srv *mqtt.Server, subscribed *signal, direct *directHook, subscriptions *atomic.Uint64) *inproc {
	cl := srv.NewClient(nil, mqtt.LocalListener, "mqttgw-gateway", true)
	cl.Properties.ProtocolVersion = 5
	return &inproc{srv: srv, cl: cl, subscribed: subscribed, direct: direct, subscriptions: subscriptions}
}

type reachCount struct {
	generation uint64
	n          int
}

// maxReachCache bounds the cached counts; a gateway sending to more
// topics than this starts over.
const maxReachCache = 4096

// reached is how many subscriptions a publish on topic goes to: each
// client once, however many of its subscriptions match (mochi delivers
// one copy), each shared group once, and each inline one. mochi's topic
// index copies every matching subscription to answer, and InjectPacket
// asks it again to deliver: the count is cached until the index changes,
// so that a request asks once.
func (t *inproc) reached(topic string) int {
	gen := t.subscriptions.Load()
	if v, ok := t.reach.Load(topic); ok {
		if c := v.(reachCount); c.generation == gen {
			return c.n
		}
	}
	subs := t.srv.Topics.Subscribers(topic)
	n := len(subs.Subscriptions) + len(subs.Shared) + len(subs.InlineSubscriptions)
	if t.reachSize.Add(1) > maxReachCache {
		t.reach.Clear()
		t.reachSize.Store(0)
	}
	t.reach.Store(topic, reachCount{generation: gen, n: n})
	return n
}

var _ gateway.SubscriberWaiter = (*inproc)(nil)

// WaitForSubscriber returns as soon as a subscription matches topic.
func (t *inproc) WaitForSubscriber(ctx context.Context, topic string) error {
	for {
		// Take the channel before looking, so that a subscription made
		// in between still wakes us.
		changed := t.subscribed.wait()
		if t.hasSubscribers(topic) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Subscribed returns a channel closed at the next subscription.
func (t *inproc) Subscribed() <-chan struct{} { return t.subscribed.wait() }

// hasSubscribers asks mochi's subscription index: mochi never answers
// 0x10 (no matching subscribers) itself.
func (t *inproc) hasSubscribers(topic string) bool {
	return t.reached(topic) > 0
}

// Connect takes a filter without wildcards to be one of the gateway's
// own reply topics, private to it: publishes there are handed to h as
// mochi takes them in, and reach no subscription. Other filters are
// inline subscriptions.
func (t *inproc) Connect(_ context.Context, filters []string, h gateway.Handler) error {
	deliver := func(pk packets.Packet) { h.HandleReply(fromPacket(pk)) }
	handler := func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) { deliver(pk) }
	var plain, topics []string
	undo := func() {
		for _, f := range plain {
			_ = t.srv.Unsubscribe(f, subscriptionID)
		}
		for _, topic := range topics {
			t.direct.set(topic, nil)
		}
	}
	for _, f := range filters {
		// One gateway serves the embedded broker: a shared subscription
		// would only cost mochi's share selection on every reply.
		f = gateway.StripShare(f)
		if !strings.ContainsAny(f, "+#") {
			// A reply topic: delivered as it comes in (directHook).
			t.direct.set(f, deliver)
			topics = append(topics, f)
			continue
		}
		// mochi hands an inline subscription the retained messages
		// under it (the stored request records) before Subscribe returns.
		if err := t.srv.Subscribe(f, subscriptionID, handler); err != nil {
			undo()
			return err
		}
		plain = append(plain, f)
	}
	t.mu.Lock()
	t.filters, t.topics = plain, topics
	t.mu.Unlock()
	// In-process, the subscriptions are in place as soon as Subscribe
	// returns, and the connection can't drop.
	h.ConnectionUp()
	return nil
}

var _ gateway.ReachCounter = (*inproc)(nil)

// PublishesImmediately marks inproc as a gateway.ImmediatePublisher:
// InjectPacket hands the message to mochi and returns.
func (t *inproc) PublishesImmediately() {}

var _ gateway.ImmediatePublisher = (*inproc)(nil)

func (t *inproc) Publish(ctx context.Context, m *gateway.Message) error {
	_, err := t.PublishReach(ctx, m)
	return err
}

// PublishReach publishes m and returns how many subscriptions it went to
// (see reached). A subscriber the broker then doesn't deliver to (an
// ACL, a congested client) is counted all the same.
func (t *inproc) PublishReach(_ context.Context, m *gateway.Message) (int, error) {
	reached := t.reached(m.Topic)
	// A request nobody can answer is not published; a publication is
	// (it may be retained, and is no one's business if not).
	noSubscribers := reached == 0
	if noSubscribers && m.ResponseTopic != "" {
		return 0, gateway.ErrNoResponders
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		Properties: packets.Properties{
			ContentType:           m.ContentType,
			ResponseTopic:         m.ResponseTopic,
			CorrelationData:       m.CorrelationData,
			MessageExpiryInterval: m.MessageExpiry,
			User:                  toUser(m.UserProperties),
		},
	}
	if m.QoS > 0 {
		// Inline publishes are never acknowledged, but mochi's validation
		// still wants a packet id on QoS > 0 [MQTT-2.2.1-3].
		pk.PacketID = 1
	}
	err := t.srv.InjectPacket(t.cl, pk)
	var code packets.Code
	if errors.As(err, &code) {
		return 0, &gateway.PublishError{ReasonCode: code.Code, Reason: code.Reason}
	}
	if err == nil && noSubscribers {
		// As a broker's PUBACK 0x10 says: taken, but nobody listens.
		return 0, gateway.ErrNoResponders
	}
	return reached, err
}

func (t *inproc) Close(context.Context) error {
	t.mu.Lock()
	filters, topics := t.filters, t.topics
	t.filters, t.topics = nil, nil
	t.mu.Unlock()
	for _, topic := range topics {
		t.direct.set(topic, nil)
	}
	var errs []error
	for _, f := range filters {
		errs = append(errs, t.srv.Unsubscribe(f, subscriptionID))
	}
	return errors.Join(errs...)
}

func toUser(props []gateway.UserProperty) []packets.UserProperty {
	if len(props) == 0 {
		return nil
	}
	out := make([]packets.UserProperty, len(props))
	for i, p := range props {
		out[i] = packets.UserProperty{Key: p.Key, Val: p.Value}
	}
	return out
}

func fromPacket(pk packets.Packet) *gateway.Message {
	m := &gateway.Message{
		Topic:           pk.TopicName,
		Payload:         pk.Payload,
		QoS:             pk.FixedHeader.Qos,
		ContentType:     pk.Properties.ContentType,
		ResponseTopic:   pk.Properties.ResponseTopic,
		CorrelationData: pk.Properties.CorrelationData,
		MessageExpiry:   pk.Properties.MessageExpiryInterval,
	}
	if n := len(pk.Properties.User); n > 0 {
		m.UserProperties = make([]gateway.UserProperty, n)
		for i, p := range pk.Properties.User {
			m.UserProperties[i] = gateway.UserProperty{Key: p.Key, Value: p.Val}
		}
	}
	return m
}
