package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func testLimits() *connLimits {
	return &connLimits{
		connectTimeout: 5 * time.Second, maxConnect: 1 << 10, maxPacket: 1 << 20,
		writeBuffer: 2 << 20, writeTimeout: time.Second, stats: &connStats{}, conns: &connSet{},
	}
}

// pipe returns a conn around one end of a connection and the other end.
func pipe(t *testing.T, lim *connLimits) (*conn, net.Conn) {
	a, b := net.Pipe()
	return wrapPair(t, lim, a, b)
}

// wrapPair wraps a in a conn, and closes both ends and the set when the
// test ends.
func wrapPair(t *testing.T, lim *connLimits, a, peer net.Conn) (*conn, net.Conn) {
	c := newConn(a, "test", lim)
	t.Cleanup(func() {
		c.Close()
		peer.Close()
		lim.conns.close()
	})
	return c, peer
}

// connectPacket is a minimal MQTT v5 CONNECT with keep-alive 0.
var connectPacket = []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 0, 0, 0}

func TestConnHandsOutOnlyWholePackets(t *testing.T) {
	c, peer := pipe(t, testLimits())
	go func() {
		// CONNECT, then a PUBLISH in three pieces.
		peer.Write(connectPacket)
		publish := append([]byte{0x30, 7, 0, 1, 't'}, "abcd"...)
		for _, part := range [][]byte{publish[:1], publish[1:4], publish[4:]} {
			time.Sleep(10 * time.Millisecond)
			peer.Write(part)
		}
	}()
	got := make([]byte, 64)
	n, err := io.ReadAtLeast(c, got, len(connectPacket))
	if err != nil || !bytes.Equal(got[:n], connectPacket) {
		t.Fatalf("first read %x, %v; want the CONNECT alone", got[:n], err)
	}
	n, err = c.Read(got)
	if err != nil || n != 9 {
		t.Fatalf("second read %d bytes (%x), %v; want the whole 9-byte PUBLISH at once", n, got[:n], err)
	}
}

// A header may claim any size: the buffer grows with what arrives.
func TestConnBufferFollowsArrivedBytes(t *testing.T) {
	c, peer := pipe(t, testLimits())
	go func() {
		peer.Write(connectPacket)
		peer.Write([]byte{0x30, 0xff, 0xff, 0x3f}) // claims 1 MiB - 1
		peer.Write(make([]byte, 100))
	}()
	buf := make([]byte, 64)
	if _, err := io.ReadAtLeast(c, buf, len(connectPacket)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Read(buf) // blocks: the PUBLISH is not all there
	}()
	time.Sleep(50 * time.Millisecond)
	peer.Close()
	<-done
	if got := cap(c.buf); got > 4*readChunk {
		t.Fatalf("buffer capacity %d after 104 bytes of a 1 MiB packet; want it to follow the bytes received", got)
	}
}

func TestConnRefusesOversizedConnect(t *testing.T) {
	lim := testLimits()
	c, peer := pipe(t, lim)
	go peer.Write([]byte{0x10, 0xff, 0xff, 0xff, 0x7f})
	_, err := c.Read(make([]byte, 64))
	if !errors.Is(err, errConnectTooLarge) {
		t.Fatalf("read: %v, want errConnectTooLarge", err)
	}
	if lim.stats.oversized.Load() != 1 {
		t.Fatal("oversized CONNECT not counted")
	}
}

// A later packet above the maximum goes to mochi as a bare header, which
// it refuses without allocating (it knows the same maximum).
func TestConnPassesOversizedHeaderOn(t *testing.T) {
	lim := testLimits()
	c, peer := pipe(t, lim)
	go func() {
		peer.Write(connectPacket)
		peer.Write([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})
	}()
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(c, buf, len(connectPacket)+5)
	if err != nil || !bytes.Equal(buf[len(connectPacket):n], []byte{0x30, 0xff, 0xff, 0xff, 0x7f}) {
		t.Fatalf("read %x, %v", buf[:n], err)
	}
	if lim.stats.oversized.Load() != 1 {
		t.Fatal("oversized packet not counted")
	}
}

func TestConnWriteNeverBlocks(t *testing.T) {
	for name, mk := range map[string]func(*testing.T, *connLimits) (*conn, net.Conn){"tcp": tcpPair, "pipe": pipe} {
		t.Run(name, func(t *testing.T) {
			lim := testLimits()
			lim.writeBuffer = 64 << 10
			c, _ := mk(t, lim) // nobody reads the other end
			start := time.Now()
			var err error
			// Over TCP the socket buffers take some megabytes first.
			for i := 0; i < 100_000 && err == nil; i++ {
				_, err = c.Write(make([]byte, 4<<10))
			}
			if !errors.Is(err, errWriteBufferFull) {
				t.Fatalf("writes to a peer that never reads: %v, want errWriteBufferFull", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("writes took %s; they must never block", d)
			}
			if lim.stats.slowDisconnects.Load() != 1 {
				t.Fatal("disconnect not counted")
			}
		})
	}
}

func TestConnWriteTimeout(t *testing.T) {
	lim := testLimits()
	lim.writeTimeout = 100 * time.Millisecond
	c, _ := pipe(t, lim)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	gatewaytest.Eventually(t, 5*time.Second, "the writer gives up on a peer that takes nothing, and counts it", func() bool {
		return lim.stats.writeTimeouts.Load() == 1
	})
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write after the timeout succeeded")
	}
}

// flakyListener fails its first Accepts as a process out of descriptors.
type flakyListener struct {
	net.Listener
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

func TestListenerRetriesAcceptErrors(t *testing.T) {
	stats := &connStats{}
	l := newTCPListener("t", "127.0.0.1:0", nil, time.Second, stats)
	if err := l.Init(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	l.ln = &flakyListener{Listener: l.ln, fails: 5}
	accepted := make(chan net.Conn, 1)
	go l.Serve(func(_ string, c net.Conn) error {
		accepted <- c
		return nil
	})
	defer l.Close(func(string) {})
	c, err := net.Dial("tcp", l.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted after EMFILE")
	}
	if stats.acceptErrors.Load() != 5 || l.Err() != nil {
		t.Fatalf("accept errors %d, Err %v; want 5 retried and none fatal", stats.acceptErrors.Load(), l.Err())
	}
}

// A listener whose socket is gone stops, and the broker is not ready.
func TestDeadListenerMakesBrokerUnready(t *testing.T) {
	b, err := New(Config{TCPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Ready(); err != nil {
		t.Fatalf("fresh broker not ready: %v", err)
	}
	b.tcp.ln.Close() // as if the socket failed for good
	gatewaytest.Eventually(t, 5*time.Second, "broker unready with a dead listener", func() bool { return b.Ready() != nil })
	if err := b.Ready(); !bytes.Contains([]byte(err.Error()), []byte("mqtt listener tcp")) {
		t.Fatalf("Ready: %v; want it to name the listener", err)
	}
}

var _ listeners.Listener = (*tcpListener)(nil)

// FuzzConnFraming: whatever a peer sends, conn hands on a prefix of it,
// unchanged and in order, and never more than it received.
func FuzzConnFraming(f *testing.F) {
	f.Add(append(append([]byte{}, connectPacket...), 0x30, 7, 0, 1, 't', 'a', 'b', 'c', 'd'))
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0x7f})
	f.Add(append(append([]byte{}, connectPacket...), 0x30, 0xff, 0xff, 0xff, 0xff, 0x01))
	f.Add([]byte{0x30, 2, 0, 0, 0xc0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		lim := testLimits()
		lim.maxConnect, lim.maxPacket = 64, 256
		a, b := net.Pipe()
		c := newConn(a, "fuzz", lim)
		defer lim.conns.close()
		defer c.Close()
		go func() {
			// In odd pieces, as a network would.
			for rest := in; len(rest) > 0; {
				n := min(len(rest), 1+len(rest)%7)
				if _, err := b.Write(rest[:n]); err != nil {
					break
				}
				rest = rest[n:]
			}
			b.Close()
		}()
		var out []byte
		buf := make([]byte, 13)
		for {
			n, err := c.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
		}
		if !bytes.HasPrefix(in, out) {
			t.Fatalf("read %x from %x: not a prefix", out, in)
		}
	})
}

// A client is congested for a delivery that its write queue can't take:
// a small message still fits where the largest packet would not.
func TestConnCongestionFollowsTheMessage(t *testing.T) {
	lim := testLimits()  // 1 MiB packets, 2 MiB buffer
	c, _ := pipe(t, lim) // nobody reads the other end
	c.mu.Lock()
	c.pending = 1536 << 10 // what the writer could not send yet
	c.mu.Unlock()
	if !c.congested(0) {
		t.Error("with the size unknown, the largest packet must be reserved")
	}
	if c.congested(64 << 10) {
		t.Error("a 64 KiB message fits in the 512 KiB left, but the client counts as congested")
	}
	if !c.congested(600 << 10) {
		t.Error("a 600 KiB message does not fit in the 512 KiB left")
	}
	if !c.congested(8 << 20) {
		t.Error("a size above the largest packet must count as the largest")
	}
	var sizes publishSizes
	if sizes.get("a/b") != 0 {
		t.Fatal("an unknown topic has a size")
	}
	sizes.set("a/b", 100)
	sizes.set("a/b", 200)
	if got := sizes.get("a/b"); got != 200 {
		t.Fatalf("size %d, want the latest, 200", got)
	}
	for i := range maxSizes + 1 {
		sizes.set(fmt.Sprint(i), 1)
	}
	if n := sizes.n.Load(); n > maxSizes {
		t.Fatalf("%d topics remembered, above %d", n, maxSizes)
	}
}

// tcpPair is pipe over a loopback TCP connection, whose socket buffers
// take some megabytes before the queue fills.
func tcpPair(t *testing.T, lim *connLimits) (*conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return wrapPair(t, lim, a, peer)
}

// TestConnKeepsOrder writes packets of mixed sizes to a peer that reads
// slowly, so that the writer now drains the queue and now waits for more:
// the peer must get every byte in order.
func TestConnKeepsOrder(t *testing.T) {
	for name, mk := range map[string]func(*testing.T, *connLimits) (*conn, net.Conn){"tcp": tcpPair, "pipe": pipe} {
		t.Run(name, func(t *testing.T) {
			lim := testLimits()
			lim.writeBuffer = 256 << 20
			lim.writeTimeout = 10 * time.Second
			c, peer := mk(t, lim)
			var want bytes.Buffer
			var packets [][]byte
			for i := range 3000 {
				p := bytes.Repeat([]byte{byte(i)}, 1+(i*7919)%(24<<10))
				packets = append(packets, p)
				want.Write(p)
			}
			go func() {
				for i, p := range packets {
					if _, err := c.Write(p); err != nil {
						t.Error(err)
						return
					}
					if i%500 == 0 {
						time.Sleep(time.Millisecond) // let the writer drain: idle again
					}
				}
			}()
			var got bytes.Buffer
			buf := make([]byte, 7<<10)
			_ = peer.SetReadDeadline(time.Now().Add(30 * time.Second))
			total := want.Len()
			for got.Len() < total {
				n, err := peer.Read(buf)
				if err != nil {
					t.Fatalf("after %d of %d bytes: %v", got.Len(), total, err)
				}
				got.Write(buf[:n])
				if got.Len()%(1<<20) < n {
					time.Sleep(2 * time.Millisecond) // a slow reader now and then
				}
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatal("the peer got the bytes out of order")
			}
		})
	}
}
