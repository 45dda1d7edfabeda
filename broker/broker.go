// Package broker runs the embedded mochi-mqtt MQTT v5 broker: its
// listeners, the hook that keeps the gateways' replies private, and the
// in-process transport the gateway uses to talk to it.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/grantfile"
)

// Config configures the embedded broker.
type Config struct {
	// TCPAddr is the MQTT listener's address; "" means no TCP listener.
	TCPAddr string
	// TLSAddr is the MQTT-over-TLS listener's address; "" means none.
	// It needs TLS.
	TLSAddr string
	// WSAddr is the MQTT-over-WebSocket listener's address; "" means none.
	// With TLS set it serves secure WebSockets (wss) instead.
	WSAddr string
	// TLS is the server's TLS configuration (certificates, and ClientAuth
	// for client certificates) for the TLSAddr and WSAddr listeners. The
	// TCPAddr listener always serves plain MQTT.
	TLS *tls.Config
	// UsersFile is the path of a YAML file of users, their bcrypt password
	// hashes and the topic filters each may publish to and subscribe
	// with (format in users.go). "" lets every client connect without
	// credentials and publish and subscribe anywhere. Either way, network
	// clients never read anything under ResponsePrefix.
	UsersFile string
	// ResponsePrefix is the topic prefix only the gateway may read.
	// Default gateway.DefaultResponsePrefix.
	ResponsePrefix string
	Logger         *slog.Logger

	// Every listener applies the limits below alike.

	// MaxPacketSize is the largest packet a client may send, announced in
	// CONNACK; a larger one disconnects the client. CONNECT packets may be
	// at most 64 KiB (or MaxPacketSize if smaller). Default 1 MiB + 64 KiB.
	MaxPacketSize int
	// ConnectTimeout bounds the TLS or WebSocket handshake, and then the
	// wait for the CONNECT packet. Default 5s.
	ConnectTimeout time.Duration
	// MaxKeepAlive is the longest keep-alive a client may have; one that
	// asks for none or a longer one is given this one as Server Keep
	// Alive. Whole seconds, at most 65535s. Default 120s.
	MaxKeepAlive time.Duration
	// WriteBuffer bounds the bytes queued for one client; at least
	// MaxPacketSize. Default 8 MiB.
	WriteBuffer int
	// WriteTimeout: a client that takes no bytes for this long is
	// disconnected. Default 30s.
	WriteTimeout time.Duration
	// SlowSubscribers says what happens to a client that doesn't read
	// fast enough: SlowDrop (the default) or SlowDisconnect.
	SlowSubscribers SlowPolicy
	// MaxMessageExpiry is the longest any message is kept, queued for an
	// offline session or retained, whatever its Message Expiry says; one
	// without Message Expiry is kept this long. Default 24h.
	MaxMessageExpiry time.Duration
	// DataDir, when set, makes sessions, their queued messages, retained
	// messages (the gateway's request records among them) and
	// subscriptions survive a restart, in DataDir/broker.db. "" keeps
	// them in memory.
	DataDir string
}

// SlowPolicy says what the broker does with deliveries to a client whose
// write buffer can't take another packet of MaxPacketSize.
type SlowPolicy string

const (
	// SlowDrop drops such deliveries (and refuses its new subscriptions)
	// until the client catches up; it is disconnected only if its buffer
	// overflows anyway or it takes no bytes for WriteTimeout.
	SlowDrop SlowPolicy = "drop"
	// SlowDisconnect disconnects the client once a delivery doesn't fit
	// in its write buffer.
	SlowDisconnect SlowPolicy = "disconnect"
)

// maxConnectPacket bounds the CONNECT packet, which arrives before any
// credential is checked.
const maxConnectPacket = 64 << 10

// Defaults of the connection limits in Config.
const (
	// PacketHeadroom is what a packet needs beyond its payload: topic,
	// properties, headers. The default MaxPacketSize is 1 MiB of payload
	// plus this.
	PacketHeadroom        = 64 << 10
	DefaultConnectTimeout = 5 * time.Second
	DefaultMaxKeepAlive   = 120 * time.Second
	DefaultWriteBuffer    = 8 << 20
	DefaultWriteTimeout   = 30 * time.Second
)

// Validate reports the first limit that can't work, after filling in the
// defaults of those left zero.
func (c *Config) Validate() error {
	return c.setDefaults()
}

func (c *Config) setDefaults() error {
	if c.ResponsePrefix == "" {
		c.ResponsePrefix = gateway.DefaultResponsePrefix
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = 1<<20 + PacketHeadroom
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.MaxKeepAlive == 0 {
		c.MaxKeepAlive = DefaultMaxKeepAlive
	}
	if c.WriteBuffer == 0 {
		c.WriteBuffer = DefaultWriteBuffer
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.SlowSubscribers == "" {
		c.SlowSubscribers = SlowDrop
	}
	if c.MaxMessageExpiry == 0 {
		c.MaxMessageExpiry = 24 * time.Hour
	}
	switch {
	case c.MaxPacketSize < 128 || c.MaxPacketSize > 268435460:
		return fmt.Errorf("maximum packet size %d is not from 128 bytes to 256 MiB", c.MaxPacketSize)
	case c.ConnectTimeout < 0 || c.WriteTimeout < 0:
		return errors.New("connect and write timeouts must be positive")
	case c.MaxKeepAlive < time.Second || c.MaxKeepAlive > 65535*time.Second:
		return fmt.Errorf("maximum keep-alive %s is not from 1s to 65535s", c.MaxKeepAlive)
	case c.WriteBuffer < c.MaxPacketSize:
		return fmt.Errorf("write buffer of %d bytes can't hold a packet of the maximum size, %d bytes", c.WriteBuffer, c.MaxPacketSize)
	case c.MaxMessageExpiry < time.Second:
		return fmt.Errorf("maximum message expiry %s is below 1s", c.MaxMessageExpiry)
	case c.SlowSubscribers != SlowDrop && c.SlowSubscribers != SlowDisconnect:
		return fmt.Errorf("slow subscriber policy %q is not %q or %q", c.SlowSubscribers, SlowDrop, SlowDisconnect)
	}
	return nil
}

// Broker is a running embedded MQTT v5 broker.
type Broker struct {
	srv       *mqtt.Server
	hook      *accessHook
	usersFile string
	log       *slog.Logger
	tcp       *tcpListener
	tls       *tcpListener
	ws        *wsListener
	gate      gate
	limits    connLimits
	stats     connStats
	// subscribed is told of every subscription a client makes.
	subscribed signal
	// direct delivers replies to the gateway without mochi's topic index.
	direct *directHook
	// subscriptions counts changes to the topic index (limitsHook).
	subscriptions atomic.Uint64
	closeOnce     sync.Once
	closeErr      error
}

// New creates the broker and binds its listeners, so that an address in
// use is an error here rather than a log line later. Call Start to serve.
func New(cfg Config) (*Broker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}

	// Start from the defaults: a partial Capabilities struct zeroes
	// MaximumClients and every CONNECT is refused.
	caps := mqtt.NewDefaultServerCapabilities()
	// By default mochi copies a QoS 1 publish's user properties into its
	// PUBACK (with reason 0x01), which MQTT.js can't parse.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	// mochi has no limit by default; conn (conn.go) also holds back a
	// packet until it has arrived, so that this is never allocated ahead.
	caps.MaximumPacketSize = uint32(cfg.MaxPacketSize)
	// mochi drops any message older than this, queued or retained,
	// whatever its own Message Expiry: it must cover the longest
	// request TTL and the records kept after it.
	caps.MaximumMessageExpiryInterval = int64(cfg.MaxMessageExpiry / time.Second)

	if cfg.TLSAddr != "" && cfg.TLS == nil {
		return nil, errors.New("broker: a TLS listener address needs a TLS configuration")
	}

	hook := &accessHook{prefix: cfg.ResponsePrefix, dropSlow: cfg.SlowSubscribers == SlowDrop, sizes: &publishSizes{}}
	// Read the users file before binding anything, so that a bad file
	// leaves no listener behind.
	if cfg.UsersFile != "" {
		f, err := grantfile.Open("users file", cfg.UsersFile, parseUsers)
		if err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
		hook.users = f
	}

	b := &Broker{srv: mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true, // for the in-process transport's subscription
		Logger:       cfg.Logger,
	}), hook: hook, usersFile: cfg.UsersFile, log: cfg.Logger}
	b.limits = connLimits{
		connectTimeout: cfg.ConnectTimeout,
		maxConnect:     min(maxConnectPacket, cfg.MaxPacketSize),
		maxPacket:      cfg.MaxPacketSize,
		writeBuffer:    cfg.WriteBuffer,
		writeTimeout:   cfg.WriteTimeout,
		stats:          &b.stats,
		conns:          &connSet{},
	}
	hook.srv, hook.stats = b.srv, &b.stats
	// mochi ORs its auth hooks, so this must be the only one: next to an
	// allow-all hook it would allow everything.
	if err := b.srv.AddHook(hook, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	b.direct = &directHook{}
	if err := b.srv.AddHook(b.direct, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if cfg.DataDir != "" {
		if err := b.addStore(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	limits := &limitsHook{maxKeepAlive: uint16(cfg.MaxKeepAlive / time.Second), maxPacket: uint32(cfg.MaxPacketSize), subscribed: &b.subscribed, srv: b.srv, subscriptions: &b.subscriptions, sizes: hook.sizes}
	if err := b.srv.AddHook(limits, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	// On a bind error, Close releases the listeners bound so far; the one
	// that failed to bind never joined the server.
	if cfg.TCPAddr != "" {
		b.tcp = newTCPListener("tcp", cfg.TCPAddr, nil, cfg.ConnectTimeout, &b.stats)
		if err := b.srv.AddListener(b.guard(b.tcp)); err != nil {
			_ = b.srv.Close()
			return nil, fmt.Errorf("broker: mqtt listener on %s: %w", cfg.TCPAddr, err)
		}
	}
	if cfg.TLSAddr != "" {
		// A copy, so that the caller can't change it under the listener.
		b.tls = newTCPListener("tls", cfg.TLSAddr, cfg.TLS.Clone(), cfg.ConnectTimeout, &b.stats)
		if err := b.srv.AddListener(b.guard(b.tls)); err != nil {
			_ = b.srv.Close()
			return nil, fmt.Errorf("broker: mqtt tls listener on %s: %w", cfg.TLSAddr, err)
		}
	}
	if cfg.WSAddr != "" {
		var tc *tls.Config
		if cfg.TLS != nil {
			tc = cfg.TLS.Clone()
			// WebSockets upgrade HTTP/1.1; a config shared with an
			// HTTPS server may offer h2, where Upgrade doesn't exist.
			tc.NextProtos = []string{"http/1.1"}
		}
		b.ws = newWSListener("ws", cfg.WSAddr, tc, cfg.ConnectTimeout)
		if err := b.srv.AddListener(b.guard(b.ws)); err != nil {
			_ = b.srv.Close()
			return nil, fmt.Errorf("broker: websocket listener on %s: %w", cfg.WSAddr, err)
		}
	}
	return b, nil
}

// ReloadUsers re-reads Config.UsersFile (call it on SIGHUP). On success
// the new users take effect at once, for clients already connected too:
// their sessions stay, but every later ACL check uses the new filters,
// and a user no longer listed may do nothing (it is not disconnected).
// Passwords are only checked at CONNECT. On error the old users stay in
// force and the error names the file and the problem. Without a users
// file it does nothing.
func (b *Broker) ReloadUsers() error {
	if b.hook.users == nil {
		return nil
	}
	if err := b.hook.users.Reload(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	b.log.Info("mqtt users reloaded", "file", b.usersFile, "users", len(b.hook.table().users))
	return nil
}

// Start serves the listeners in the background.
func (b *Broker) Start() error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	restoreExpiry(b.srv)
	return nil
}

// Addr is the bound MQTT TCP address, or "" without a TCP listener.
func (b *Broker) Addr() string {
	if b.tcp == nil {
		return ""
	}
	return b.tcp.Address()
}

// TLSAddr is the bound MQTT-over-TLS address, or "" without a TLS
// listener.
func (b *Broker) TLSAddr() string {
	if b.tls == nil {
		return ""
	}
	return b.tls.Address()
}

// WSAddr is the bound WebSocket address, or "" without a WebSocket listener.
func (b *Broker) WSAddr() string {
	if b.ws == nil {
		return ""
	}
	return b.ws.Address()
}

// Transport returns a gateway.Transport that publishes and subscribes
// inside this process, without a network connection.
func (b *Broker) Transport() gateway.Transport {
	return newInproc(b.srv, &b.subscribed, b.direct, &b.subscriptions)
}

// Ready returns nil while every listener accepts connections, or why
// not: a listener that stopped for good (not merely out of file
// descriptors for a while, which it retries) leaves responders that
// reconnect locked out.
func (b *Broker) Ready() error {
	if b.tcp != nil && b.tcp.Err() != nil {
		return b.tcp.Err()
	}
	if b.tls != nil && b.tls.Err() != nil {
		return b.tls.Err()
	}
	if b.ws != nil && b.ws.Err() != nil {
		return b.ws.Err()
	}
	return nil
}

// Close disconnects every client and stops the listeners. New connections
// are turned away first, so that none outlives Close (see guard.go). Only
// the first call does anything: mochi's own Close panics when called
// twice.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.gate.close()
		b.closeErr = b.srv.Close()
		b.limits.conns.close()
	})
	return b.closeErr
}
