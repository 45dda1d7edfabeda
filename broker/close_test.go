package broker_test

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// TestCloseWhileClientsChurn closes the broker while clients connect and
// disconnect. mochi's own Close can deadlock then (it takes a read lock
// twice, and a client added or removed in between blocks the second for
// ever; guard.go has the details) and races with connections being
// accepted; the broker must do neither.
func TestCloseWhileClientsChurn(t *testing.T) {
	connect := new(bytes.Buffer)
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30},
	}
	if err := pk.ConnectEncode(connect); err != nil {
		t.Fatal(err)
	}
	rounds := 30
	if testing.Short() {
		rounds = 5
	}
	for round := range rounds {
		b, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		var (
			stop     atomic.Bool
			accepted atomic.Int64
			wg       sync.WaitGroup
			mu       sync.Mutex
			open     = map[net.Conn]bool{} // Lock should be held.
		)
		for range 8 {
			wg.Go(func() {
				ack := make([]byte, 4)
				for !stop.Load() {
					c, err := net.Dial("tcp", b.Addr())
					if err != nil {
						return // the broker is closed
					}
					mu.Lock()
					if stop.Load() { // missed by the closing below
						mu.Unlock()
						c.Close()
						return
					}
					open[c] = true
					mu.Unlock()
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write(connect.Bytes()); err == nil {
						if _, err := c.Read(ack); err == nil {
							accepted.Add(1)
						}
					}
					mu.Lock()
					delete(open, c)
					mu.Unlock()
					c.Close()
				}
			})
		}
		// Close amid the churn, not before it starts.
		gatewaytest.Eventually(t, 5*time.Second, fmt.Sprintf("round %d: 20 connections accepted", round), func() bool {
			return accepted.Load() >= 20
		})
		closed := make(chan struct{})
		go func() {
			b.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close hung", round)
		}
		stop.Store(true)
		// mochi neither serves nor closes a connection it accepts while
		// closing: end the clients waiting for an answer on one.
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}
