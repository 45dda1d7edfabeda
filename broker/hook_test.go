package broker

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// TestWillsFollowTheUsersFile checks the will that mochi publishes without
// an ACL check: allowed, it goes out; forbidden by a reload since the
// client connected, it reaches nobody. An inline subscription to "#"
// observes what mochi publishes, synchronously and without ACL.
func TestWillsFollowTheUsersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.yaml")
	write := func(publish string) {
		gatewaytest.WriteUsers(t, path, gatewaytest.User{Name: "w", Password: "pw", Publish: []string{publish}})
	}
	write("w/#")
	b, err := New(Config{TCPAddr: "127.0.0.1:0", UsersFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var (
		mu   sync.Mutex
		seen []string
	)
	err = b.srv.Subscribe("#", 99, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		if strings.HasPrefix(pk.TopicName, "$SYS/") {
			return // mochi's own statistics, every second, to inline "#" too
		}
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, pk.TopicName)
	})
	if err != nil {
		t.Fatal(err)
	}
	saw := func(topic string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(seen, topic)
	}

	// dropConnection connects with a will, calls meanwhile, then cuts the
	// connection so that mochi sends the will, and returns once mochi has
	// removed the client, which it does after sending the will.
	dropConnection := func(clientID, willTopic string, meanwhile func()) {
		t.Helper()
		conn, err := net.Dial("tcp", b.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = c.Connect(ctx, &paho.Connect{
			ClientID: clientID, KeepAlive: 30, CleanStart: true,
			Username: "w", UsernameFlag: true, Password: []byte("pw"), PasswordFlag: true,
			WillMessage: &paho.WillMessage{Topic: willTopic, QoS: 1, Retain: true, Payload: []byte("gone")},
		})
		if err != nil {
			t.Fatal(err)
		}
		meanwhile()
		conn.Close()
		<-c.Done()
		gatewaytest.Eventually(t, 5*time.Second, "client "+clientID+" removed", func() bool {
			_, ok := b.srv.Clients.Get(clientID)
			return !ok
		})
	}

	dropConnection("before", "w/before", func() {})
	if !saw("w/before") {
		t.Fatalf("allowed will not sent; saw %v", seen)
	}

	// Connect while the will is allowed, then forbid it.
	dropConnection("after", "w/after", func() {
		write("x/#")
		if err := b.ReloadUsers(); err != nil {
			t.Fatal(err)
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 {
		t.Fatalf("a forbidden will went out: saw %q", seen)
	}
	if n := len(b.srv.Topics.Messages("w/#")); n != 1 {
		t.Fatalf("%d retained messages, want only the allowed will", n)
	}
}
