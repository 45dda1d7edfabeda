package broker

import (
	"net"
	"sync"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Two races in mochi v2.7.9's Server.Close, both hit when clients connect
// or disconnect while the broker closes, are worked around here by
// wrapping every listener:
//
//   - Close can deadlock: Clients.GetByListener takes its read lock twice,
//     and an Add or Delete waiting for the write lock in between blocks
//     the second read lock for ever (mochi-mqtt/server#488, open). The
//     wrapped listeners disconnect their clients with
//     closeListenerClients instead, which locks once.
//   - Close waits on a WaitGroup that each new connection Adds to, with
//     nothing ordering the two: a connection accepted as Close begins may
//     outlive it (and the race detector reports it). The gate stops new
//     connections before Close and waits until those already handed to
//     mochi have been counted.

// guard wraps l so that its connections pass the broker's gate and get
// the broker's limits (conn.go), and its Close disconnects clients without
// mochi's deadlock.
func (b *Broker) guard(l listeners.Listener) listeners.Listener {
	return &guarded{Listener: l, b: b}
}

type guarded struct {
	listeners.Listener
	b *Broker
}

func (l *guarded) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(l.b.gate.wrap(func(id string, c net.Conn) error {
		mc := newConn(c, id, &l.b.limits)
		if mc == nil {
			return c.Close() // the broker is closing
		}
		return establish(id, mc)
	}))
}

func (l *guarded) Close(listeners.CloseFn) {
	l.Listener.Close(l.b.closeListenerClients)
}

// closeListenerClients is mochi's Server.closeListenerClients without the
// deadlock: Clients.GetAll takes the read lock once. It also ends the
// connections that have not sent CONNECT, which mochi doesn't know as
// clients but waits for.
func (b *Broker) closeListenerClients(listener string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	b.limits.conns.closeListener(listener)
}

// gate lets connections through to mochi until close, and lets close wait
// until mochi has counted every connection it let through. mochi counts a
// connection (ClientsWg.Add) before it first reads from it, so the first
// Read marks the connection as counted.
type gate struct {
	mu      sync.Mutex
	closing bool           // Lock should be held.
	pending sync.WaitGroup // let through, not yet read from; Add only with the lock held and !closing.
}

func (g *gate) wrap(establish listeners.EstablishFn) listeners.EstablishFn {
	return func(id string, c net.Conn) error {
		g.mu.Lock()
		if g.closing {
			g.mu.Unlock()
			return c.Close()
		}
		g.pending.Add(1)
		g.mu.Unlock()
		gc := &gatedConn{Conn: c, counted: g.pending.Done}
		defer gc.markCounted() // in case mochi never reads
		return establish(id, gc)
	}
}

// close turns new connections away and waits for those let through to be
// counted by mochi, so that Server.Close waits for all of them.
func (g *gate) close() {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	g.pending.Wait()
}

// gatedConn reports its first Read, by which time mochi has counted it.
type gatedConn struct {
	net.Conn
	once    sync.Once
	counted func()
}

func (c *gatedConn) markCounted() { c.once.Do(c.counted) }

func (c *gatedConn) Read(p []byte) (int, error) {
	c.markCounted()
	return c.Conn.Read(p)
}
