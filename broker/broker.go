// Package broker runs the embedded mochi-mqtt MQTT v5 broker: its
// listeners, the hook that keeps the gateways' replies private, and the
// in-process transport the gateway uses to talk to it.
package broker

import (
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/mqttgw/mqttgw/gateway"
)

// Config configures the embedded broker.
type Config struct {
	// TCPAddr is the MQTT listener's address; "" means no TCP listener.
	TCPAddr string
	// WSAddr is the MQTT-over-WebSocket listener's address; "" means none.
	WSAddr string
	// ResponsePrefix is the topic prefix only the gateway may read.
	// Default gateway.DefaultResponsePrefix.
	ResponsePrefix string
	Logger         *slog.Logger
}

// Broker is a running embedded MQTT v5 broker.
type Broker struct {
	srv *mqtt.Server
	tcp *listeners.TCP
	ws  *wsListener
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

	b := &Broker{srv: mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true, // for the in-process transport's subscription
		Logger:       cfg.Logger,
	})}
	// mochi ORs its auth hooks, so this must be the only one: next to an
	// allow-all hook it would allow everything.
	if err := b.srv.AddHook(&accessHook{prefix: cfg.ResponsePrefix}, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if cfg.TCPAddr != "" {
		b.tcp = listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: "tcp", Address: cfg.TCPAddr})
		if err := b.srv.AddListener(b.tcp); err != nil {
			return nil, fmt.Errorf("broker: mqtt listener on %s: %w", cfg.TCPAddr, err)
		}
	}
	if cfg.WSAddr != "" {
		b.ws = newWSListener("ws", cfg.WSAddr)
		if err := b.srv.AddListener(b.ws); err != nil {
			_ = b.srv.Close()
			return nil, fmt.Errorf("broker: websocket listener on %s: %w", cfg.WSAddr, err)
		}
	}
	return b, nil
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

// Close disconnects every client and stops the listeners.
func (b *Broker) Close() error {
	return b.srv.Close()
}
