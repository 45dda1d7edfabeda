// Package brokertest starts mqttgw's embedded broker, with a gateway on
// its in-process transport, for tests.
package brokertest

import (
	"context"
	"testing"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/gateway"
)

// Start starts an embedded broker with cfg (an empty config gets a TCP
// listener on a loopback port chosen by the OS) and a ready gateway on its
// in-process transport. The test's cleanup closes both.
func Start(tb testing.TB, cfg broker.Config) (*broker.Broker, *gateway.Gateway) {
	tb.Helper()
	if cfg.TCPAddr == "" && cfg.TLSAddr == "" && cfg.WSAddr == "" {
		cfg.TCPAddr = "127.0.0.1:0"
	}
	b, err := broker.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := b.Start(); err != nil {
		b.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close() })
	// The one gateway on its embedded broker, as mqttgw runs it.
	g, err := gateway.New(gateway.Config{SoleGateway: true}, b.Transport())
	if err != nil {
		tb.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { g.Close(context.Background()) })
	if err := g.Ready(); err != nil {
		tb.Fatalf("gateway not ready after Start: %v", err)
	}
	return b, g
}
