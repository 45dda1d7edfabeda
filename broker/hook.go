package broker

import (
	"bytes"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// accessHook lets every client connect and publish, but keeps the
// gateways' response topics unreadable to network clients, so that no
// client can read the replies meant for other requests. The gateway itself
// reads them through an inline subscription, which mochi never checks.
type accessHook struct {
	mqtt.HookBase
	prefix string
}

func (h *accessHook) ID() string { return "mqttgw-access" }

func (h *accessHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

// OnConnectAuthenticate allows anonymous clients.
func (h *accessHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck is called with a filter on SUBSCRIBE and with a topic name
// on every delivery. Refusing delivery is what protects the replies: a
// filter such as "#", "+/reply/#" or "$share/g/#" is accepted, but never
// receives anything under the prefix. Filters that name the prefix
// outright are refused at SUBSCRIBE so that the client learns it at once.
func (h *accessHook) OnACLCheck(_ *mqtt.Client, topic string, write bool) bool {
	if write {
		return true // responders publish their replies there
	}
	return !reserved(stripShare(topic), h.prefix)
}

// stripShare removes a "$share/<group>/" prefix from a filter [MQTT-4.8.2].
func stripShare(filter string) string {
	rest, ok := strings.CutPrefix(filter, "$share/")
	if !ok {
		return filter
	}
	if _, f, ok := strings.Cut(rest, "/"); ok {
		return f
	}
	return filter
}

// reserved reports whether topic is prefix or lies under it.
func reserved(topic, prefix string) bool {
	return topic == prefix || (strings.HasPrefix(topic, prefix) && topic[len(prefix)] == '/')
}
