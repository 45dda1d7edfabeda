// Package gateway is the request/response core of mqttgw: it publishes a
// request as an MQTT v5 PUBLISH carrying a Response Topic and Correlation
// Data, and waits for the matching reply. It knows nothing of HTTP or of the
// broker behind the Transport.
package gateway

import (
	"context"
	"math"
	"time"
)

// UserProperty is one MQTT v5 user property. Order and duplicates are
// significant [MQTT-3.3.2-18], so properties travel as a slice, not a map.
type UserProperty struct {
	Key, Value string
}

// Request is what a caller asks the gateway to publish.
type Request struct {
	Topic          string
	Payload        []byte
	ContentType    string
	UserProperties []UserProperty
	QoS            byte
	// WaitForResponder is how long to wait for a subscriber when nobody
	// is subscribed to Topic, instead of failing with ErrNoResponders at
	// once; it comes out of the request's deadline. Zero: no wait.
	WaitForResponder time.Duration
	// Owner is the API key making the request; only it may read the
	// request's record. "" without auth.
	Owner string
	// IdempotencyKey, when set, makes a repeat of the request within the
	// result TTL get the first one's outcome instead of being published
	// again; Fingerprint (a hash of everything the request says) tells a
	// repeat from a different request with the same key.
	IdempotencyKey, Fingerprint string
	// Deadline, when set, is when the caller gives up waiting, as a
	// deadline of the context would say; the earlier of the two
	// applies. Request waits for it with a plain timer, which costs less
	// than a context of its own.
	Deadline time.Time
}

// Publication is a message published without waiting for a reply: no
// Response Topic, no Correlation Data.
type Publication struct {
	Topic          string
	Payload        []byte
	ContentType    string
	UserProperties []UserProperty
	QoS            byte
	Retain         bool
	// TTL becomes the Message Expiry Interval, rounded up to seconds;
	// zero: the message does not expire.
	TTL time.Duration
}

// Reply is the responder's answer to a Request.
type Reply struct {
	Payload        []byte
	ContentType    string
	UserProperties []UserProperty
}

// Message is an MQTT v5 PUBLISH as the gateway and its transports see it.
type Message struct {
	Topic           string
	Payload         []byte
	QoS             byte
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	// MessageExpiry is the Message Expiry Interval in seconds; 0 means none.
	MessageExpiry  uint32
	UserProperties []UserProperty
	Retain         bool
}

// Transport carries messages between a Gateway and an MQTT broker. The
// gateway calls Connect once, then Publish concurrently from many
// goroutines, then Close once.
type Transport interface {
	// Connect subscribes to filters and delivers every message published
	// there to h, now and after every reconnect. A "$share/" filter is
	// shared by the replicas on one broker; a transport that serves one
	// gateway alone may subscribe to its plain form. It reports
	// h.ConnectionUp once the subscriptions are acknowledged and
	// h.ConnectionDown when the connection is lost. It returns once the
	// first connection attempt is under way; ctx bounds only that start.
	Connect(ctx context.Context, filters []string, h Handler) error
	// Publish sends m. It returns ErrNoResponders when the broker says (or
	// the transport knows) that nobody is subscribed to m.Topic; a
	// message with a ResponseTopic, which expects a reply, is then not
	// sent at all if the transport knows beforehand;
	// ErrNotConnected while there is no connection, and a *PublishError
	// when the broker refuses the message. It must be safe for concurrent use.
	Publish(ctx context.Context, m *Message) error
	// Close disconnects and waits for the transport's goroutines to end.
	Close(ctx context.Context) error
}

// SubscriberWaiter is a Transport that can tell when a subscription
// appears, so that a request waiting for a responder is published at
// once rather than retried.
type SubscriberWaiter interface {
	// WaitForSubscriber returns once a subscription matches topic, or
	// with ctx's error when ctx ends first.
	WaitForSubscriber(ctx context.Context, topic string) error
	// Subscribed returns a channel closed at the next new subscription.
	Subscribed() <-chan struct{}
}

// ReachCounter is a Transport that knows how many subscribers a message
// reaches (the embedded broker), so that a request taking many replies
// can end once each has answered.
type ReachCounter interface {
	// PublishReach is Publish, and returns the number of subscriptions
	// the message went to, a shared-subscription group counting once.
	PublishReach(ctx context.Context, m *Message) (int, error)
}

// ImmediatePublisher is a Transport whose Publish never waits on the
// network (the embedded broker): it returns once the broker has the
// message. A request's publish then can't still be in flight when its
// reply comes, and needs no context of its own to end it.
type ImmediatePublisher interface {
	PublishesImmediately()
}

// Handler receives what a Transport reads from the broker. Its methods may
// be called from the transport's read loop, so they must never block.
type Handler interface {
	HandleReply(m *Message)
	ConnectionUp()
	ConnectionDown(err error)
}

// expirySeconds is the Message Expiry Interval for a deadline: the time left,
// rounded up so a responder never sees a request as expired before the
// requester has given up on it.
func expirySeconds(deadline time.Time, now time.Time) uint32 {
	left := deadline.Sub(now)
	if left <= 0 {
		return 1
	}
	return uint32(min((left+time.Second-1)/time.Second, math.MaxUint32))
}
