// Package broker runs the embedded mochi-mqtt MQTT v5 broker: its
// listeners, the hook that keeps the gateways' replies private, and the
// in-process transport the gateway uses to talk to it.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/mqttgw/mqttgw/gateway"
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
}

// Broker is a running embedded MQTT v5 broker.
type Broker struct {
	srv       *mqtt.Server
	hook      *accessHook
	usersFile string
	log       *slog.Logger
	tcp       *listeners.TCP
	tls       *listeners.TCP
	ws        *wsListener
	gate      gate
}

// New creates the broker and binds its listeners, so that an address in
// use is an error here rather than a log line later. Call Start to serve.
func New(cfg Config) (*Broker, error) {
	if cfg.ResponsePrefix == "" {
		cfg.ResponsePrefix = gateway.DefaultResponsePrefix
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	// Start from the defaults: a partial Capabilities struct zeroes
	// MaximumClients and every CONNECT is refused.
	caps := mqtt.NewDefaultServerCapabilities()
	// By default mochi copies a QoS 1 publish's user properties into its
	// PUBACK (with reason 0x01), which MQTT.js can't parse.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true

	if cfg.TLSAddr != "" && cfg.TLS == nil {
		return nil, errors.New("broker: a TLS listener address needs a TLS configuration")
	}

	hook := &accessHook{prefix: cfg.ResponsePrefix}
	// Read the users file before binding anything, so that a bad file
	// leaves no listener behind.
	if cfg.UsersFile != "" {
		t, err := loadUsers(cfg.UsersFile)
		if err != nil {
			return nil, err
		}
		hook.users.Store(t)
	}

	b := &Broker{srv: mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true, // for the in-process transport's subscription
		Logger:       cfg.Logger,
	}), hook: hook, usersFile: cfg.UsersFile, log: cfg.Logger}
	hook.srv = b.srv
	// mochi ORs its auth hooks, so this must be the only one: next to an
	// allow-all hook it would allow everything.
	if err := b.srv.AddHook(hook, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	// On a bind error, Close releases the listeners bound so far; the one
	// that failed to bind never joined the server.
	if cfg.TCPAddr != "" {
		b.tcp = listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: "tcp", Address: cfg.TCPAddr})
		if err := b.srv.AddListener(b.guard(b.tcp)); err != nil {
			_ = b.srv.Close()
			return nil, fmt.Errorf("broker: mqtt listener on %s: %w", cfg.TCPAddr, err)
		}
	}
	if cfg.TLSAddr != "" {
		// A copy, so that the caller can't change it under the listener.
		b.tls = listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: "tls", Address: cfg.TLSAddr, TLSConfig: cfg.TLS.Clone()})
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
		b.ws = newWSListener("ws", cfg.WSAddr, tc)
		if err := b.srv.AddListener(b.guard(b.ws)); err != nil {
			_ = b.srv.Close()
			return nil, fmt.Errorf("broker: websocket listener on %s: %w", cfg.WSAddr, err)
		}
	}
	return b, nil
}

// loadUsers reads and parses a users file; its errors name the file.
func loadUsers(path string) (*userTable, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("broker: users file: %w", err)
	}
	t, err := parseUsers(data)
	if err != nil {
		return nil, fmt.Errorf("broker: users file %s: %w", path, err)
	}
	return t, nil
}

// ReloadUsers re-reads Config.UsersFile (call it on SIGHUP). On success
// the new users take effect at once, for clients already connected too:
// their sessions stay, but every later ACL check uses the new filters,
// and a user no longer listed may do nothing (it is not disconnected).
// Passwords are only checked at CONNECT. On error the old users stay in
// force and the error names the file and the problem. Without a users
// file it does nothing.
func (b *Broker) ReloadUsers() error {
	if b.usersFile == "" {
		return nil
	}
	t, err := loadUsers(b.usersFile)
	if err != nil {
		return err
	}
	b.hook.users.Store(t)
	b.log.Info("mqtt users reloaded", "file", b.usersFile, "users", len(t.users))
	return nil
}

// Start serves the listeners in the background.
func (b *Broker) Start() error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
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
	return newInproc(b.srv)
}

// HasSubscribers reports whether any client subscribes to a filter that
// matches topic.
func (b *Broker) HasSubscribers(topic string) bool {
	s := b.srv.Topics.Subscribers(topic)
	return len(s.Subscriptions)+len(s.Shared)+len(s.InlineSubscriptions) > 0
}

// Close disconnects every client and stops the listeners. New connections
// are turned away first, so that none outlives Close (see guard.go).
func (b *Broker) Close() error {
	b.gate.close()
	return b.srv.Close()
}
