package broker

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// mochi v2.7.9 trusts its peers in three ways that an unauthenticated
// client can turn against the whole process; conn, which every listener
// wraps around its connections before mochi sees them, takes that trust
// away:
//
//   - mochi allocates the size a packet's fixed header claims before the
//     packet arrives (Client.ReadPacket): five bytes can claim 256 MiB. conn
//     hands mochi only packets that have arrived whole, buffering them as
//     their bytes come in, so memory follows the bytes actually received.
//     A header claiming more than the Maximum Packet Size is passed on at
//     once: mochi refuses it itself (ErrPacketTooLarge) without allocating.
//   - mochi sets no deadline before CONNECT and none at all with keep-alive
//     0. conn starts with a read deadline for the CONNECT; the limits hook
//     enforces a server keep-alive after it.
//   - mochi writes to a client while holding that client's lock, which
//     every QoS > 0 delivery to it also takes (Client.NextPacketID): one
//     subscriber that stops reading blocks every publish it matches, the
//     gateway's own included, for as long as its TCP send buffer stays
//     full. conn's Write never blocks: it queues up to a byte bound, and a
//     goroutine of its own writes to the network.
type conn struct {
	net.Conn
	lim      *connLimits
	listener string

	// Read side; only mochi's reading goroutine touches it.
	buf       []byte // bytes received; buf[off:ready] are whole packets not yet handed out
	off       int
	ready     int
	connected bool // the first packet (CONNECT) has been framed
	raw       bool // framing given up: the connection is ending, pass bytes through

	mu      sync.Mutex
	wake    chan struct{} // cap 1: the writer has work or must stop
	queue   []byte        // bytes mochi wrote and the writer has not taken; Lock should be held.
	pending int           // bytes queued or being written; Lock should be held.
	closing bool          // Close was called; Lock should be held.
	flushBy time.Time     // set by Close: the writer's last deadline; Lock should be held.
	werr    error         // why writes fail from now on; Lock should be held.
	// unacked is the size of each QoS 1 and 2 delivery mochi keeps until
	// the client acknowledges it, by packet id; unackedBytes their sum.
	// Lock should be held.
	unacked      map[uint16]int
	unackedBytes int
}

// connLimits are the bounds every listener applies to its connections.
type connLimits struct {
	connectTimeout time.Duration // for the CONNECT packet to arrive whole
	maxConnect     int           // largest CONNECT packet in bytes
	maxPacket      int           // largest packet after CONNECT in bytes
	writeBuffer    int           // bytes queued for a client at most
	writeTimeout   time.Duration // a client that takes no bytes this long is disconnected
	stats          *connStats
	conns          *connSet
}

// readChunk is how much a read asks the network for at once.
const readChunk = 16 << 10

var (
	errConnectTooLarge = errors.New("mqtt: CONNECT packet larger than allowed")
	errWriteBufferFull = errors.New("mqtt: client does not read fast enough: write buffer full")
)

// newConn wraps c, accepted on listener, or returns nil once the set is
// closed.
func newConn(c net.Conn, listener string, lim *connLimits) *conn {
	mc := &conn{Conn: c, lim: lim, listener: listener, wake: make(chan struct{}, 1)}
	if !lim.conns.add(mc) {
		return nil
	}
	_ = c.SetReadDeadline(time.Now().Add(lim.connectTimeout))
	go mc.writeLoop()
	return mc
}

// Read hands out whole packets only (see conn).
func (c *conn) Read(p []byte) (int, error) {
	for c.off == c.ready {
		if c.raw && len(c.buf) > c.off {
			c.ready = len(c.buf)
			break
		}
		if err := c.fill(); err != nil {
			if c.off < c.ready {
				break
			}
			return 0, err
		}
	}
	n := copy(p, c.buf[c.off:c.ready])
	c.off += n
	return n, nil
}

// fill reads more bytes from the network and frames what has arrived.
func (c *conn) fill() error {
	// Keep only the unhanded tail; let a buffer grown for a large packet go.
	if c.off > 0 {
		n := copy(c.buf, c.buf[c.off:])
		c.buf, c.ready, c.off = c.buf[:n], c.ready-c.off, 0
	}
	if len(c.buf) == 0 && cap(c.buf) > 4*readChunk {
		c.buf = nil
	}
	if cap(c.buf)-len(c.buf) < readChunk {
		// Growth follows what has arrived, never what a header claims.
		grown := make([]byte, len(c.buf), 2*len(c.buf)+readChunk)
		copy(grown, c.buf)
		c.buf = grown
	}
	n, err := c.Conn.Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+n]
	if ferr := c.frame(); ferr != nil {
		return ferr
	}
	return err
}

// frame advances ready over every packet that has arrived whole.
func (c *conn) frame() error {
	for !c.raw {
		rest := c.buf[c.ready:]
		if len(rest) < 2 {
			return nil
		}
		remaining, hdr, ok := decodeLength(rest[1:])
		if !ok {
			// A malformed length: mochi reports it and ends the connection.
			c.raw = true
			return nil
		}
		if hdr == 0 {
			return nil // the length itself has not arrived yet
		}
		size := 1 + hdr + remaining
		if !c.connected {
			if rest[0]>>4 == connectType && size > c.lim.maxConnect {
				c.lim.stats.oversized.Add(1)
				return errConnectTooLarge
			}
			// Anything but CONNECT first is mochi's to refuse.
			c.connected = true
		}
		if size > c.lim.maxPacket {
			// mochi refuses it from the header alone.
			c.lim.stats.oversized.Add(1)
			c.raw = true
			return nil
		}
		if len(rest) < size {
			return nil
		}
		c.ready += size
	}
	return nil
}

const connectType = 1 // MQTT control packet type of CONNECT

// decodeLength decodes an MQTT Variable Byte Integer [MQTT-1.5.5]: the
// value and its length in bytes, 0 if it is not all there yet, ok false if
// it is malformed.
func decodeLength(b []byte) (value, n int, ok bool) {
	mult := 1
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, true
		}
		value += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return value, i + 1, true
		}
		mult <<= 7
	}
	return 0, 0, false
}

// SetDeadline is how mochi applies the keep-alive; it only bounds reads
// here, because the writer bounds writes itself.
func (c *conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline must not lift the deadline Close sets to end reads.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// SetWriteDeadline is ignored: writes never block (see Write).
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

// Write queues p for the writer. It never blocks: when the queue would
// exceed the write buffer, the client is disconnected.
func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.werr != nil {
		err := c.werr
		c.mu.Unlock()
		return 0, err
	}
	if c.pending+len(p) > c.lim.writeBuffer {
		c.werr = errWriteBufferFull
		c.closing = true
		c.mu.Unlock()
		c.lim.stats.slowDisconnects.Add(1)
		// Nothing queued is worth sending to a client being dropped.
		_ = c.Conn.Close()
		c.signal()
		return 0, errWriteBufferFull
	}
	c.queue = append(c.queue, p...)
	c.pending += len(p)
	c.mu.Unlock()
	c.signal()
	return len(p), nil
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// congested reports whether the client has used up its share of memory:
// its write queue could not take a packet of size bytes (the largest
// packet when size is 0: unknown), or mochi keeps a write buffer's worth
// of deliveries for it until it acknowledges them (a client that reads
// but never sends PUBACK costs as much as one that doesn't read). A
// client thus holds at most about twice the write buffer.
func (c *conn) congested(size int) bool {
	if size <= 0 || size > c.lim.maxPacket {
		size = c.lim.maxPacket
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending+size > c.lim.writeBuffer || c.unackedBytes >= c.lim.writeBuffer
}

// holdUnacked records a delivery mochi keeps until it is acknowledged.
func (c *conn) holdUnacked(id uint16, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unacked == nil {
		c.unacked = make(map[uint16]int)
	}
	c.unackedBytes += size - c.unacked[id] // a resend replaces its entry
	c.unacked[id] = size
}

// releaseUnacked forgets an acknowledged or dropped delivery.
func (c *conn) releaseUnacked(id uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unackedBytes -= c.unacked[id]
	delete(c.unacked, id)
}

// flushTimeout bounds how long Close waits to send what is queued, e.g.
// the CONNACK or DISCONNECT that says why the connection ends.
const flushTimeout = time.Second

// writeLoop writes what Write queued, in chunks so that the write
// timeout measures progress rather than the size of a burst.
func (c *conn) writeLoop() {
	defer c.lim.conns.remove(c)
	defer c.Conn.Close()
	var out []byte
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && !c.closing {
			c.mu.Unlock()
			<-c.wake
			c.mu.Lock()
		}
		if c.werr != nil || len(c.queue) == 0 {
			c.mu.Unlock()
			return
		}
		out, c.queue = c.queue, out[:0]
		closing := c.closing
		c.mu.Unlock()

		err := c.writeAll(out)
		c.mu.Lock()
		c.pending -= len(out)
		if err != nil && c.werr == nil {
			c.werr = err
		}
		c.mu.Unlock()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !closing {
				c.lim.stats.writeTimeouts.Add(1)
			}
			return
		}
		if cap(out) > 4*readChunk {
			out = nil // don't keep a burst's buffer for the connection's life
		}
	}
}

func (c *conn) writeAll(b []byte) error {
	const chunk = 64 << 10
	for len(b) > 0 {
		n := min(len(b), chunk)
		c.mu.Lock()
		// Under the lock, so that Close's shorter deadline can't be
		// overwritten by a longer one.
		deadline := time.Now().Add(c.lim.writeTimeout)
		if !c.flushBy.IsZero() && c.flushBy.Before(deadline) {
			deadline = c.flushBy
		}
		_ = c.Conn.SetWriteDeadline(deadline)
		c.mu.Unlock()
		w, err := c.Conn.Write(b[:n])
		if err != nil {
			return err
		}
		b = b[w:]
	}
	return nil
}

// Close ends reads at once and lets the writer send what is queued, within
// flushTimeout, before it closes the network connection.
func (c *conn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	c.flushBy = time.Now().Add(flushTimeout)
	_ = c.Conn.SetWriteDeadline(c.flushBy)
	c.mu.Unlock()
	_ = c.Conn.SetReadDeadline(time.Now())
	c.signal()
	return nil
}

// connSet is every open conn, so that closing a listener can end even
// those that never sent a CONNECT (mochi knows only clients that did, but
// waits for all of them), and the broker's Close can wait for the writers.
type connSet struct {
	mu     sync.Mutex
	conns  map[*conn]struct{} // Lock should be held.
	closed bool               // Lock should be held.
	wg     sync.WaitGroup
}

func (s *connSet) add(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *connSet) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// closeListener closes the conns accepted on listener.
func (s *connSet) closeListener(listener string) {
	s.mu.Lock()
	var list []*conn
	for c := range s.conns {
		if c.listener == listener {
			list = append(list, c)
		}
	}
	s.mu.Unlock()
	for _, c := range list {
		_ = c.Close()
	}
}

// close closes every conn, refuses new ones and waits for their writers.
func (s *connSet) close() {
	s.mu.Lock()
	s.closed = true
	list := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		list = append(list, c)
	}
	s.mu.Unlock()
	for _, c := range list {
		_ = c.Close()
	}
	s.wg.Wait()
}
