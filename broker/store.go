package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
)

// addStore makes the broker's state persistent in dir through mochi's
// bbolt storage hook. bbolt over mochi's other stores: it is pure Go (no
// cgo, one static binary), one file, and it fsyncs every write before
// mochi goes on, so a request acknowledged with 202 survives a kill -9.
// The price is write amplification: each write rewrites the B+tree pages
// on its path (a few KiB) and waits for an fsync, which bounds the rate
// of QoS>0 messages to persistent sessions by the disk's fsync rate. Only
// persistent state is written: clean sessions and QoS 0 are not.
func (b *Broker) addStore(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("broker: data dir: %w", err)
	}
	// bbolt holds an exclusive lock on the file: a second broker on the
	// same directory fails here (after bbolt's 250ms lock timeout)
	// instead of corrupting it.
	err := b.srv.AddHook(new(boltStore), &bolt.Options{Path: filepath.Join(dir, "broker.db")})
	if err != nil {
		_ = b.srv.Close()
		return fmt.Errorf("broker: data dir %s: %w", dir, err)
	}
	return nil
}

// boltStore is mochi's bbolt hook with its queued messages' packet ids
// put back. Its OnQosPublish stores a message under a key ending in the
// packet id but leaves storage.Message.PacketID zero, so that every
// restored message of a session would get id 0 and overwrite the others
// in the session's inflight map: all but one would be lost, and that one
// resent with an id MQTT forbids [MQTT-2.2.1-3]. (mochi's restore of
// queued messages has had such bugs before: mochi-mqtt/server#406.)
type boltStore struct{ bolt.Hook }

// StoredInflightMessages is the hook's, with the packet ids from the keys.
func (h *boltStore) StoredInflightMessages() ([]storage.Message, error) {
	v, err := h.Hook.StoredInflightMessages()
	for i := range v {
		if v[i].PacketID != 0 {
			continue
		}
		if at := strings.LastIndexByte(v[i].ID, ':'); at >= 0 {
			if id, perr := strconv.ParseUint(v[i].ID[at+1:], 10, 16); perr == nil {
				v[i].PacketID = uint16(id)
			}
		}
	}
	return v, err
}

// restoreExpiry gives the messages mochi loaded from its store their
// expiry back. mochi's storage.Message keeps Created and the Message
// Expiry Interval but neither the Expiry time it derives from them nor
// the protocol version its expiry sweeps check, so a restored message
// would never expire (nor have its Message Expiry counted down) but only
// be dropped at MaxMessageExpiry. This runs after Serve has loaded the
// store, before any client can connect.
func restoreExpiry(srv *mqtt.Server) {
	restore := func(pk *packets.Packet, version byte) bool {
		if pk.Expiry != 0 || pk.Properties.MessageExpiryInterval == 0 {
			return false
		}
		pk.Expiry = pk.Created + int64(pk.Properties.MessageExpiryInterval)
		if pk.ProtocolVersion == 0 {
			pk.ProtocolVersion = version
		}
		return true
	}
	for _, pk := range srv.Topics.Retained.GetAll() {
		// Only MQTT v5 has a Message Expiry Interval.
		if restore(&pk, 5) {
			srv.Topics.Retained.Add(pk.TopicName, pk)
		}
	}
	for _, cl := range srv.Clients.GetAll() {
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if restore(&pk, 5) {
				cl.State.Inflight.Set(pk)
			}
		}
	}
}
