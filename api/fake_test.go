package api

import (
	"context"
	"errors"

	"github.com/mqttgw/mqttgw/gateway"
)

// fakeGateway stands in for the RPC core that NewServer takes: each test
// says what Request and Ready do. Request without RequestFn fails the
// request; Ready without ReadyFn is ready.
type fakeGateway struct {
	RequestFn func(ctx context.Context, req gateway.Request) (gateway.Reply, error)
	ReadyFn   func() error
}

func (g *fakeGateway) Request(ctx context.Context, req gateway.Request) (gateway.Reply, error) {
	if g.RequestFn == nil {
		return gateway.Reply{}, errors.New("fakeGateway: no RequestFn")
	}
	return g.RequestFn(ctx, req)
}

func (g *fakeGateway) Ready() error {
	if g.ReadyFn == nil {
		return nil
	}
	return g.ReadyFn()
}
