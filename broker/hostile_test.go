package broker_test

// Attacks on the embedded broker's listeners, as a client without
// credentials would make them, over real sockets on every listener kind.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/packets"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// endpoint is one listener of a broker under test.
type endpoint struct {
	kind   string // tcp, tls, ws, wss
	addr   string
	client *tls.Config // for tls and wss
}

// dial connects to the listener and completes its TLS and WebSocket
// handshakes; rcvbuf, if positive, shrinks the socket's receive buffer so
// that a client that doesn't read fills up quickly.
func (e endpoint) dial(t *testing.T, rcvbuf int) net.Conn {
	t.Helper()
	dialTCP := func(ctx context.Context, _, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil && rcvbuf > 0 {
			_ = c.(*net.TCPConn).SetReadBuffer(rcvbuf)
		}
		return c, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var c net.Conn
	switch e.kind {
	case "tcp", "tls":
		raw, err := dialTCP(ctx, "tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c = raw
		if e.kind == "tls" {
			tc := tls.Client(raw, e.client)
			if err := tc.HandshakeContext(ctx); err != nil {
				t.Fatal(err)
			}
			c = tc
		}
	case "ws", "wss":
		scheme := "ws"
		if e.kind == "wss" {
			scheme = "wss"
		}
		hc := &http.Client{Transport: &http.Transport{DialContext: dialTCP, TLSClientConfig: e.client}}
		ws, _, err := websocket.Dial(ctx, scheme+"://"+e.addr+"/", &websocket.DialOptions{Subprotocols: []string{"mqtt"}, HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		// Not the dial context: the connection outlives it.
		c = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// hostileBrokers starts two brokers with cfg's limits, one with plain TCP
// and WebSocket listeners and one with TLS and secure WebSocket ones (and
// TCP for responders), each with a gateway; it returns the four endpoints.
func hostileBrokers(t *testing.T, cfg broker.Config) ([]endpoint, []*broker.Broker, []*gateway.Gateway) {
	t.Helper()
	pki := gatewaytest.NewPKI(t)
	serverTLS, clientTLS := pki.ServerTLS(t), pki.ClientTLS(t, false)
	plain := cfg
	plain.TCPAddr, plain.WSAddr = "127.0.0.1:0", "127.0.0.1:0"
	b1, g1 := brokertest.Start(t, plain)
	secure := cfg
	// Its TCP listener is for responders.
	secure.TCPAddr, secure.TLSAddr, secure.WSAddr, secure.TLS = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", serverTLS
	b2, g2 := brokertest.Start(t, secure)
	return []endpoint{
		{kind: "tcp", addr: b1.Addr()},
		{kind: "ws", addr: b1.WSAddr()},
		{kind: "tls", addr: b2.TLSAddr(), client: clientTLS},
		{kind: "wss", addr: b2.WSAddr(), client: clientTLS},
	}, []*broker.Broker{b1, b2}, []*gateway.Gateway{g1, g2}
}

// closedWithin fails unless the server closes c within d.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(d + 5*time.Second))
	_, err := io.Copy(io.Discard, c)
	if took := time.Since(start); took > d || isTimeout(err) {
		t.Fatalf("connection still open after %s (%v); want it closed within %s", took.Round(time.Millisecond), err, d)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// connect sends a CONNECT with keepAlive and returns the CONNACK.
func connect(t *testing.T, c net.Conn, keepAlive uint16) *packets.Connack {
	t.Helper()
	cp := packets.NewControlPacket(packets.CONNECT)
	cp.Content = &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, KeepAlive: keepAlive, CleanStart: true, Properties: &packets.Properties{}}
	if _, err := cp.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	ack, err := packets.ReadPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	ca, ok := ack.Content.(*packets.Connack)
	if !ok || ca.ReasonCode != 0 {
		t.Fatalf("want a successful CONNACK, got %v", ack)
	}
	return ca
}

func TestConnectionsWithoutConnectAreClosed(t *testing.T) {
	const connectTimeout = 300 * time.Millisecond
	eps, _, _ := hostileBrokers(t, broker.Config{ConnectTimeout: connectTimeout})
	bound := connectTimeout + time.Second
	for _, ep := range eps {
		t.Run(ep.kind, func(t *testing.T) {
			t.Parallel()
			// The listener's own handshake done, then silence.
			closedWithin(t, ep.dial(t, 0), bound)
			// A CONNECT begun and never finished.
			c := ep.dial(t, 0)
			c.Write(connectPacketStart)
			closedWithin(t, c, bound)
			if ep.kind != "tcp" {
				// Not even the TLS or WebSocket handshake.
				raw, err := net.Dial("tcp", ep.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer raw.Close()
				closedWithin(t, raw, bound)
			}
		})
	}
}

// connectPacketStart is the first bytes of a CONNECT that never ends.
var connectPacketStart = []byte{0x10, 13, 0, 4, 'M', 'Q'}

func TestServerKeepAlive(t *testing.T) {
	eps, _, _ := hostileBrokers(t, broker.Config{MaxKeepAlive: time.Second, MaxPacketSize: 200 << 10, WriteBuffer: 1 << 20})
	for _, ep := range eps {
		t.Run(ep.kind, func(t *testing.T) {
			t.Parallel()
			for _, asked := range []uint16{0, 3600} {
				c := ep.dial(t, 0)
				ack := connect(t, c, asked)
				if ka := ack.Properties.ServerKeepAlive; ka == nil || *ka != 1 {
					t.Fatalf("keep-alive %d: CONNACK Server Keep Alive %v, want 1", asked, ka)
				}
				if mps := ack.Properties.MaximumPacketSize; mps == nil || *mps != 200<<10 {
					t.Fatalf("CONNACK Maximum Packet Size %v, want %d", mps, 200<<10)
				}
				// 1.5 keep-alives of silence [MQTT-3.1.2-22].
				closedWithin(t, c, 2500*time.Millisecond)
			}
			// A client that pings in time stays.
			c := ep.dial(t, 0)
			connect(t, c, 1)
			for range 4 {
				time.Sleep(600 * time.Millisecond)
				if _, err := packets.NewControlPacket(packets.PINGREQ).WriteTo(c); err != nil {
					t.Fatalf("pinging client was disconnected: %v", err)
				}
				if p, err := packets.ReadPacket(c); err != nil || p.Type != packets.PINGRESP {
					t.Fatalf("want PINGRESP, got %v, %v", p, err)
				}
			}
		})
	}
}

// Eight 5-byte packets used to take 1.6 GB: mochi allocated what a fixed
// header claims before the packet arrived.
func TestOversizedFixedHeaders(t *testing.T) {
	eps, brokers, _ := hostileBrokers(t, broker.Config{ConnectTimeout: 2 * time.Second})
	heapBefore := heapInUse()
	var conns []net.Conn
	for _, ep := range eps {
		for range 16 {
			// A CONNECT claiming 256 MiB.
			c := ep.dial(t, 0)
			c.Write([]byte{0x10, 0xff, 0xff, 0xff, 0x7f})
			conns = append(conns, c)
			// A PUBLISH claiming 256 MiB after a good CONNECT, and one
			// claiming 1 MiB whose bytes trickle.
			c = ep.dial(t, 0)
			connect(t, c, 30)
			c.Write([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})
			conns = append(conns, c)
			c = ep.dial(t, 0)
			connect(t, c, 30)
			c.Write(append([]byte{0x30, 0x80, 0x80, 0x40}, make([]byte, 100)...))
		}
	}
	if grew := heapInUse() - heapBefore; grew > 32<<20 {
		t.Fatalf("heap grew by %d MiB for %d connections that sent a few bytes each", grew>>20, len(conns))
	}
	for _, c := range conns {
		closedWithin(t, c, 3*time.Second)
	}
	if got := metric(t, brokers[0], "mqttgw_embedded_broker_oversized_packets_total", "") + metric(t, brokers[1], "mqttgw_embedded_broker_oversized_packets_total", ""); got != float64(len(conns)) {
		t.Fatalf("oversized packets counted: %v, want %d", got, len(conns))
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// metric reads one series of the broker's metrics; label is
// "name=value" or "".
func metric(t *testing.T, b *broker.Broker, name, label string) float64 {
	t.Helper()
	return gatewaytest.Metric(t, b.Collectors(), name, label)
}

// spy subscribes to "#" at QoS 1 on ep and never reads again.
func spy(t *testing.T, ep endpoint) net.Conn {
	t.Helper()
	c := ep.dial(t, 4096)
	connect(t, c, 60)
	sp := packets.NewControlPacket(packets.SUBSCRIBE)
	sp.Content = &packets.Subscribe{PacketID: 1, Subscriptions: []packets.SubOptions{{Topic: "#", QoS: 1}}, Properties: &packets.Properties{}}
	if _, err := sp.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if p, err := packets.ReadPacket(c); err != nil || p.Type != packets.SUBACK {
		t.Fatalf("want SUBACK, got %v, %v", p, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c
}

// A subscriber that stops reading used to hold every request it matched
// far past its timeout (mochi writes under the client's lock, which each
// QoS 1 delivery to it takes too), and to grow memory without bound.
func TestSubscriberThatDoesNotRead(t *testing.T) {
	for _, policy := range []broker.SlowPolicy{broker.SlowDrop, broker.SlowDisconnect} {
		for _, kind := range []string{"tcp", "ws", "tls", "wss"} {
			t.Run(fmt.Sprintf("%s/%s", policy, kind), func(t *testing.T) {
				// Room for 8 requests in flight to the responder, far less
				// than the 20 MB the spy is sent.
				const writeBuffer = 4 << 20
				eps, brokers, gws := hostileBrokers(t, broker.Config{
					MaxPacketSize: 128 << 10, WriteBuffer: writeBuffer, SlowSubscribers: policy,
				})
				b, g := brokers[0], gws[0]
				var ep endpoint
				for _, e := range eps {
					if e.kind == kind {
						ep = e
					}
				}
				if kind == "tls" || kind == "wss" {
					b, g = brokers[1], gws[1]
				}
				gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "svc/echo", 1, gatewaytest.Echo)
				spy(t, ep)

				heapBefore := heapInUse()
				payload := bytes.Repeat([]byte("p"), 100<<10)
				var wg sync.WaitGroup
				var mu sync.Mutex
				var slowest time.Duration
				var failures []error
				for w := range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range 25 {
							ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
							start := time.Now()
							_, err := g.Request(ctx, gateway.Request{Topic: "svc/echo", Payload: payload, QoS: 1})
							took := time.Since(start)
							cancel()
							mu.Lock()
							slowest = max(slowest, took)
							if err != nil {
								failures = append(failures, fmt.Errorf("worker %d request %d: %w", w, i, err))
							}
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				if slowest > 2500*time.Millisecond {
					t.Fatalf("slowest request took %s with a 2s timeout", slowest)
				}
				if len(failures) > 0 {
					t.Fatalf("%d of 200 requests failed while a subscriber did not read, e.g. %v", len(failures), failures[0])
				}
				// 200 × 100 KiB went out; the spy may hold only its buffer.
				if grew := heapInUse() - heapBefore; grew > 4*writeBuffer {
					t.Fatalf("heap grew by %d KiB; the write buffer is %d KiB", grew>>10, writeBuffer>>10)
				}
				switch policy {
				case broker.SlowDrop:
					if n := metric(t, b, "mqttgw_embedded_broker_deliveries_dropped_total", "reason=slow_subscriber"); n == 0 {
						t.Fatal("no delivery counted as dropped")
					}
				case broker.SlowDisconnect:
					// At least the spy. On a machine busy with other work
					// the responder, which gets 100 KiB requests as fast as
					// the gateway can publish them, may fall behind for a
					// moment too; it reconnects, and every request above
					// has still been answered.
					if n := metric(t, b, "mqttgw_embedded_broker_slow_disconnects_total", "reason=buffer_full"); n < 1 {
						t.Fatalf("%v slow clients disconnected, want the spy", n)
					}
				}
			})
		}
	}
}

func TestSubscriberThatTakesNothingIsDisconnected(t *testing.T) {
	b, g := brokertest.Start(t, broker.Config{WriteTimeout: 300 * time.Millisecond, MaxPacketSize: 128 << 10, WriteBuffer: 16 << 20})
	gatewaytest.StartResponder(t, "mqtt://"+b.Addr(), "svc/echo", 1, gatewaytest.Echo)
	spy(t, endpoint{kind: "tcp", addr: b.Addr()})
	payload := make([]byte, 100<<10)
	// More than the kernel's socket buffers take, less than the spy's
	// share of memory: the writer blocks.
	for range 150 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := g.Request(ctx, gateway.Request{Topic: "svc/echo", Payload: payload, QoS: 1}); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	gatewaytest.Eventually(t, 5*time.Second, "the spy disconnected for its write timeout", func() bool {
		return metric(t, b, "mqttgw_embedded_broker_slow_disconnects_total", "reason=write_timeout") == 1
	})
	// The broker let go of it: only the responder is left. (The spy
	// itself would see the close only after draining megabytes of
	// kernel buffers through its tiny window.)
	gatewaytest.Eventually(t, 5*time.Second, "only the responder connected", func() bool {
		return metric(t, b, "mqttgw_embedded_broker_clients_connected", "") == 1
	})
}

// The WSS listener's TLS errors used to be plain-text lines in a JSON log.
func TestWebSocketListenerLogsInTheBrokersFormat(t *testing.T) {
	serverTLS := gatewaytest.NewPKI(t).ServerTLS(t)
	var logs gatewaytest.Buffer
	b, _ := brokertest.Start(t, broker.Config{WSAddr: "127.0.0.1:0", TLS: serverTLS, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	c, err := net.Dial("tcp", b.WSAddr())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // plain HTTP to a TLS port
	io.Copy(io.Discard, c)
	c.Close()
	gatewaytest.Eventually(t, 5*time.Second, "a TLS handshake error logged", func() bool { return strings.Contains(logs.String(), "TLS handshake error") })
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("log line is not JSON: %s", line)
		}
	}
}
