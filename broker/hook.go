package broker

import (
	"bytes"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/grantfile"
)

// accessHook is the broker's only auth hook: mochi ORs the answers of its
// auth hooks, so any second one (an AllowHook, say) would allow everything.
//
// It always keeps the gateways' response topics unreadable to network
// clients, so that no client can read the replies meant for other
// requests. The gateway itself reads them through an inline subscription,
// which mochi never checks.
//
// Without a users file every client may connect, publish and subscribe.
// With one, clients must log in as a listed user, and publish to, subscribe
// with and receive from only what that user's filters allow.
type accessHook struct {
	mqtt.HookBase
	prefix string
	// srv tells which user owns a client id; set once before Serve.
	srv *mqtt.Server
	// dropSlow drops deliveries to clients whose write buffer is
	// congested (see conn); stats counts them.
	dropSlow bool
	stats    *connStats
	// sizes tells how large the message being delivered is, so that a
	// client is judged congested by it rather than by the largest packet.
	sizes *publishSizes
	// users is the users file; nil means anonymous access. Checks read
	// its content once each, so a ReloadUsers applies to every later
	// check, including those of clients already connected.
	users *grantfile.File[*userTable]
}

func (h *accessHook) ID() string { return "mqttgw-access" }

func (h *accessHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnWill}, []byte{b})
}

// OnConnectAuthenticate allows anonymous clients when there is no users
// file. With one, it refuses (CONNACK 0x86) clients without a username,
// unknown users, wrong passwords, wills the user may not publish, and a
// client id whose session belongs to another user.
func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	t := h.table()
	if t == nil {
		return true
	}
	name := pk.Connect.Username
	var password []byte
	if pk.Connect.PasswordFlag {
		password = pk.Connect.Password
	}
	u := t.lookup(name)
	if !pk.Connect.UsernameFlag || len(name) == 0 {
		h.refuse(cl, "no username")
		return false
	}
	if !u.checkPassword(password) { // also for u == nil: see checkPassword
		h.refuse(cl, "unknown user or wrong password")
		return false
	}
	// mochi never checks a will against the ACL: without this, a client
	// could publish anywhere, the response prefix included, by
	// disconnecting. (OnWill checks again when the will goes out.)
	if pk.Connect.WillFlag && !u.canPublish(pk.Connect.WillTopic) {
		h.refuse(cl, "will topic not allowed", "will_topic", pk.Connect.WillTopic)
		return false
	}
	// Connecting with a live session's client id takes the session over,
	// and mochi resends the session's unacknowledged messages without an
	// ACL check: another user must not get them, nor kick its owner off.
	if h.srv != nil {
		if old, ok := h.srv.Clients.Get(cl.ID); ok && !bytes.Equal(old.Properties.Username, name) {
			h.refuse(cl, "client id in use by another user")
			return false
		}
	}
	return true
}

// refuse logs why a CONNECT was refused; never the password.
func (h *accessHook) refuse(cl *mqtt.Client, why string, attrs ...any) {
	if h.Log == nil {
		return
	}
	h.Log.Info("mqtt connect refused", append([]any{"reason", why, "username", string(cl.Properties.Username), "client", cl.ID, "remote", cl.Net.Remote}, attrs...)...)
}

// OnACLCheck is called with a topic name on PUBLISH (write), with a filter
// on SUBSCRIBE, and with a topic name on every delivery to a network
// client. Refusing delivery is what protects the replies: a filter such as
// "#", "+/reply/#" or "$share/g/#" is accepted, but never receives
// anything under the prefix. Filters that name the prefix outright are
// refused at SUBSCRIBE so that the client learns it at once.
//
// With a users file, a write needs a publish filter matching the topic;
// a filter needs a subscribe filter covering it (see filterCovers), and a
// delivery a subscribe filter matching the topic. A client whose user is
// no longer listed (after ReloadUsers) may do nothing.
func (h *accessHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true // the gateway's own client: no user, checked by nobody
	}
	t := h.table()
	if write {
		if h.gatewaysOnly(topic) {
			return false
		}
		if t == nil {
			return true // responders publish their replies there
		}
		// An empty topic name (a publish by topic alias alone) matches
		// no filter: mochi checks it before resolving the alias.
		u := t.lookup(cl.Properties.Username)
		return u != nil && u.canPublish(topic)
	}
	filter := gateway.StripShare(topic)
	if gateway.Under(filter, h.prefix) {
		return false
	}
	// mochi asks here before it queues a delivery, and before it takes
	// the client's lock for a packet id: refusing is the one way to drop
	// a message that leaves mochi's session state consistent. A SUBSCRIBE
	// asks here too and is refused while the client is congested.
	if c, ok := cl.Net.Conn.(*conn); ok && c.congested(h.sizes.get(topic)) {
		if h.dropSlow {
			h.stats.droppedDeliveries.Add(1)
		} else if !cl.Closed() {
			h.stats.slowDisconnects.Add(1)
			// Never blocks: conn's Write only queues.
			_ = h.srv.DisconnectClient(cl, packets.ErrQuotaExceeded)
		}
		return false
	}
	if t == nil {
		return true
	}
	u := t.lookup(cl.Properties.Username)
	return u != nil && u.canRead(filter)
}

// gatewaysOnly reports whether topic lies more than one level under the
// prefix, where the gateways keep their request records: responders
// publish their replies one level under it, and a forged record would
// be another API key's reply.
func (h *accessHook) gatewaysOnly(topic string) bool {
	rest, ok := strings.CutPrefix(topic, h.prefix+"/")
	return ok && strings.Contains(rest, "/")
}

// OnWill empties the will of a client whose user may not publish to its
// topic, because mochi publishes wills without an ACL check. CONNECT
// refuses such wills already; this catches wills that a ReloadUsers has
// made forbidden since. mochi can't be told to drop a will, but one with
// an empty topic matches no subscriber and is not retained.
func (h *accessHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	t := h.table()
	if t == nil || cl.Net.Inline {
		return will, nil
	}
	if u := t.lookup(cl.Properties.Username); u != nil && u.canPublish(will.TopicName) {
		return will, nil
	}
	if h.Log != nil {
		h.Log.Info("mqtt will dropped: topic not allowed", "username", string(cl.Properties.Username), "client", cl.ID, "will_topic", will.TopicName)
	}
	return mqtt.Will{Flag: will.Flag}, nil
}

// table is the users file in force, or nil without one.
func (h *accessHook) table() *userTable {
	if h.users == nil {
		return nil
	}
	return h.users.Current()
}
