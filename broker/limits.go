package broker

import (
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// limitsHook announces and enforces the broker's limits that mochi has
// no setting for. It answers no auth or ACL question, so it can sit next
// to accessHook (mochi ORs those answers).
type limitsHook struct {
	mqtt.HookBase
	// maxKeepAlive is the longest keep-alive, in seconds, a client may
	// have; one that asks for none or a longer one gets this one.
	maxKeepAlive uint16
	// maxPacket is announced in CONNACK as the Maximum Packet Size.
	maxPacket uint32
	// subscribed is told of every new subscription, for requests waiting
	// for a responder.
	subscribed *signal
	// srv finds the session a connecting client takes over.
	srv *mqtt.Server
	// subscriptions counts changes to the topic index, so that counts of
	// a topic's subscribers taken at one count stay valid until the next.
	subscriptions *atomic.Uint64
	// sizes learns the size of each publish on its way to subscribers.
	sizes *publishSizes
}

func (h *limitsHook) ID() string { return "mqttgw-limits" }

func (h *limitsHook) Provides(b byte) bool {
	// Asked for every packet sent: a switch, not a slice search.
	switch b {
	case mqtt.OnConnect, mqtt.OnPacketEncode, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnClientExpired, mqtt.OnSessionEstablish, mqtt.OnPublish:
		return true
	}
	return false
}

// OnQosPublish counts a QoS 1 or 2 delivery against its client's memory
// until it is acknowledged: mochi bounds what it keeps per client by
// count (8192 messages), not by bytes. Inbound QoS flows pass here with
// their acknowledgement, which is no PUBLISH, and are not counted.
func (h *limitsHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if c, ok := cl.Net.Conn.(*conn); ok && pk.FixedHeader.Type == packets.Publish {
		c.holdUnacked(pk.PacketID, publishSize(pk))
	}
}

// OnQosComplete releases an acknowledged delivery.
func (h *limitsHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if c, ok := cl.Net.Conn.(*conn); ok {
		c.releaseUnacked(pk.PacketID)
	}
}

// OnQosDropped releases a delivery mochi gave up on.
func (h *limitsHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if c, ok := cl.Net.Conn.(*conn); ok {
		c.releaseUnacked(pk.PacketID)
	}
}

// publishSize is about what a PUBLISH costs in memory.
func publishSize(pk packets.Packet) int {
	n := 64 + len(pk.TopicName) + len(pk.Payload) + len(pk.Properties.ContentType) +
		len(pk.Properties.ResponseTopic) + len(pk.Properties.CorrelationData)
	for _, u := range pk.Properties.User {
		n += len(u.Key) + len(u.Val)
	}
	return n
}

// OnConnect sets a server keep-alive [MQTT-3.2.2-21] on a client that asked
// for none (which mochi takes as "never time out") or for more than the
// maximum. mochi applies it as a read deadline of 1.5 times its value, and
// announces it in CONNACK as Server Keep Alive; MQTT 3.1.1 has no way to
// tell the client, which must then ping at least that often anyway.
func (h *limitsHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if ka := cl.State.Keepalive; ka == 0 || ka > h.maxKeepAlive {
		cl.State.Keepalive = h.maxKeepAlive
		cl.State.ServerKeepalive = true
	}
	return nil
}

// OnPacketEncode announces the Maximum Packet Size in CONNACK
// [MQTT-3.2.2.3.6], which mochi enforces but doesn't announce: clients
// that know it refuse oversized publishes themselves instead of being
// disconnected for them.
func (h *limitsHook) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		pk.Properties.MaximumPacketSize = h.maxPacket
	}
	return pk
}

// OnSessionEstablish drops the expired messages of the session a client
// is about to resume, just before mochi resends them. mochi's own sweep
// runs once a second and keeps a message until the second after its
// expiry (Expiry < now, in whole seconds), and resending clamps the
// Message Expiry to 1: a device waking up to two seconds after a
// request's TTL would get it. Here a message goes once its expiry second
// has begun, never later than its TTL.
func (h *limitsHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if h.srv == nil {
		return
	}
	if old, ok := h.srv.Clients.Get(cl.ID); ok && old != cl {
		// Expiry < now+1 is Expiry <= now; 0 disables the maximum age,
		// which mochi's sweep applies.
		old.ClearExpiredInflights(time.Now().Unix()+1, 0)
	}
}

// OnPublish notes the size of a publish before mochi delivers it (see
// publishSizes).
func (h *limitsHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.sizes != nil {
		// The encoded packet: publishSize plus each property's framing.
		h.sizes.set(pk.TopicName, publishSize(pk)+8*len(pk.Properties.User)+32)
	}
	return pk, nil
}

// OnSubscribed wakes the requests waiting for a responder; each checks
// whether the new subscription is one for its topic.
func (h *limitsHook) OnSubscribed(*mqtt.Client, packets.Packet, []byte) {
	h.subscriptions.Add(1)
	h.subscribed.notify()
}

// OnUnsubscribed is told of every subscription removed: by UNSUBSCRIBE,
// by a clean session's end, and by OnClientExpired.
func (h *limitsHook) OnUnsubscribed(*mqtt.Client, packets.Packet) {
	h.subscriptions.Add(1)
}

// OnClientExpired removes the subscriptions of a session that expired.
// mochi forgets the client but leaves its subscriptions in the topic
// index, where they go on counting as subscribers for ever: a request
// would be published to nobody and end in 504 rather than 503, and an
// async request would count as delivered.
func (h *limitsHook) OnClientExpired(cl *mqtt.Client) {
	if h.srv != nil {
		h.srv.UnsubscribeClient(cl)
	}
	h.subscriptions.Add(1)
}

// signal wakes every goroutine waiting on it, each time notify is called.
type signal struct {
	mu sync.Mutex
	ch chan struct{} // closed by notify; nil until someone waits. Lock should be held.
}

// wait returns a channel that notify closes.
func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// publishSizes holds the size of the latest publish on each topic, from
// OnPublish (which mochi calls before it delivers a publish) to
// OnACLCheck (which it calls for each delivery, with the topic only).
// Judging congestion by the largest possible packet instead would drop
// deliveries to a client with a few MiB queued whenever --max-reply is
// large: 64 requests of 64 KiB in flight to one responder were enough.
// Two publishes of different sizes on one topic at once may let the
// smaller one's size stand for the larger: that client, close to full
// anyway, is then disconnected as slow rather than dropped from.
type publishSizes struct {
	m sync.Map // topic → int
	n atomic.Int64
}

// maxSizes bounds the topics remembered; past it, they start over.
const maxSizes = 4096

func (p *publishSizes) set(topic string, size int) {
	if v, ok := p.m.Load(topic); ok && v.(int) == size {
		return // as it mostly is: requests on a topic are alike; a Swap allocates
	}
	if old, loaded := p.m.Swap(topic, size); !loaded || old == nil {
		if p.n.Add(1) > maxSizes {
			p.m.Clear()
			p.n.Store(0)
		}
	}
}

// get is the size noted for topic, 0 when unknown.
func (p *publishSizes) get(topic string) int {
	if p == nil {
		return 0
	}
	if v, ok := p.m.Load(topic); ok {
		return v.(int)
	}
	return 0
}
