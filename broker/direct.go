package broker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// directHook hands every publish on one of the gateway's own reply
// topics straight to the gateway, as mochi takes it in, and tells mochi
// to publish it no further (CodeSuccessIgnore: the sender still gets its
// PUBACK). A reply then costs no lookup in mochi's topic index, which
// allocates a copy of every matching subscription map per publish: half
// of the broker's work per request. It is safe because nobody else can
// read those topics: network clients are refused everything under the
// response prefix (accessHook), and the gateway is their only inline
// subscriber. mochi checks the publish against the ACL before calling
// OnPublish, so a forbidden reply never gets here.
type directHook struct {
	mqtt.HookBase
	mu     sync.Mutex // serializes changes to topics
	topics atomic.Pointer[map[string]func(packets.Packet)]
}

func (h *directHook) ID() string { return "mqttgw-direct" }

func (h *directHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish takes publishes on a direct topic.
func (h *directHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if m := h.topics.Load(); m != nil {
		if deliver, ok := (*m)[pk.TopicName]; ok {
			deliver(pk)
			return pk, packets.CodeSuccessIgnore
		}
	}
	return pk, nil
}

// set makes topic direct, delivering to deliver; nil removes it.
func (h *directHook) set(topic string, deliver func(packets.Packet)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	next := make(map[string]func(packets.Packet))
	if old := h.topics.Load(); old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	if deliver == nil {
		delete(next, topic)
	} else {
		next[topic] = deliver
	}
	h.topics.Store(&next)
}
