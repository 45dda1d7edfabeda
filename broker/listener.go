package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tcpListener serves MQTT over TCP, or over TLS with a config. It replaces
// mochi's listeners.TCP, which returns from its accept loop on the first
// Accept error: once the process ran out of file descriptors (EMFILE), the
// broker never accepted a connection again. This one retries with backoff,
// as net/http does, and does the TLS handshake in the connection's own
// goroutine under a deadline, so that a handshake begun and never finished
// neither stalls the accept loop nor holds a descriptor for ever.
type tcpListener struct {
	listenerBase
	tls              *tls.Config // nil: plain TCP
	handshakeTimeout time.Duration
	stats            *connStats

	// ctx ends at Close, and with it the accept backoff and handshakes.
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool // Lock should be held.
	// wg counts Serve and the connections' goroutines; Add only with the
	// lock held and !closed.
	wg sync.WaitGroup
}

// listenerBase is what the broker's listeners share: identity, the bound
// socket, and whether they still serve.
type listenerBase struct {
	id      string
	address string
	ln      net.Listener
	log     *slog.Logger
	// dead is why Serve stopped without Close; nil while it serves.
	dead atomic.Pointer[error]
}

func (l *listenerBase) ID() string { return l.id }

// Address is the bound address once Init has run.
func (l *listenerBase) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// bind listens on the address; mochi calls Init, and so this, when the
// listener is added, so that an address in use is an error of New.
func (l *listenerBase) bind(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	l.ln = ln
	return nil
}

// Err is why the listener stopped serving before Close, or nil.
func (l *listenerBase) Err() error {
	if p := l.dead.Load(); p != nil {
		return *p
	}
	return nil
}

// die records that the listener stopped for good, with err.
func (l *listenerBase) die(err error) {
	err = fmt.Errorf("mqtt listener %s on %s stopped: %w", l.id, l.Address(), err)
	l.dead.Store(&err)
	l.log.Error("mqtt listener stopped; it accepts no more connections", "listener", l.id, "error", err)
}

var _ listeners.Listener = (*tcpListener)(nil)

func newTCPListener(id, address string, tc *tls.Config, handshakeTimeout time.Duration, stats *connStats) *tcpListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &tcpListener{listenerBase: listenerBase{id: id, address: address}, tls: tc, handshakeTimeout: handshakeTimeout, stats: stats, ctx: ctx, cancel: cancel}
}

func (l *tcpListener) Protocol() string {
	if l.tls != nil {
		return "tls"
	}
	return "tcp"
}

// Init binds the address, so that an address in use is an error of New.
func (l *tcpListener) Init(log *slog.Logger) error { return l.bind(log) }

// Serve accepts connections until Close.
func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	if !l.enter() {
		return
	}
	defer l.wg.Done()
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				l.die(err)
				return
			}
			// EMFILE, ENFILE, ECONNABORTED and the like pass: back off
			// so as not to spin, and try again.
			l.stats.acceptErrors.Add(1)
			if delay == 0 {
				delay = 5 * time.Millisecond
				l.log.Warn("mqtt accept failed; retrying with backoff", "listener", l.id, "error", err)
			} else {
				delay = min(2*delay, time.Second)
			}
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		if delay != 0 {
			l.log.Info("mqtt accept recovered", "listener", l.id)
			delay = 0
		}
		if !l.enter() {
			_ = c.Close()
			return
		}
		go func() {
			defer l.wg.Done()
			l.handle(c, establish)
		}()
	}
}

func (l *tcpListener) handle(c net.Conn, establish listeners.EstablishFn) {
	if l.tls != nil {
		tc := tls.Server(c, l.tls)
		ctx, cancel := context.WithTimeout(l.ctx, l.handshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			l.log.Debug("mqtt tls handshake failed", "listener", l.id, "remote", c.RemoteAddr().String(), "error", err)
			_ = c.Close()
			return
		}
		c = tc
	}
	if err := establish(l.id, c); err != nil {
		l.log.Debug("mqtt client ended", "listener", l.id, "error", err)
	}
}

// enter counts a goroutine that Close must wait for, unless closed.
func (l *tcpListener) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	return true
}

// Close stops accepting, disconnects the listener's clients and waits for
// its goroutines.
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	if l.ln != nil {
		_ = l.ln.Close()
	}
	closeClients(l.id)
	l.wg.Wait()
}
