package api

import (
	"context"
	"errors"
	"time"

	"github.com/mqttgw/mqttgw/gateway"
)

// fakeGateway stands in for the RPC core that NewServer takes: each test
// says what Request, Publish and Ready do. Request without RequestFn and
// Publish without PublishFn fail; Ready without ReadyFn is ready.
type fakeGateway struct {
	RequestFn func(ctx context.Context, req gateway.Request) (gateway.Reply, error)
	PublishFn func(ctx context.Context, p gateway.Publication) error
	ReadyFn   func() error
	SubmitFn  func(ctx context.Context, req gateway.Request, ttl time.Duration) (gateway.Record, error)
	LookupFn  func(owner, id string) (gateway.Record, error)
	StreamFn  func(ctx context.Context, req gateway.Request, c gateway.Collect, sink gateway.StreamSink) (gateway.StreamEnd, error)
}

func (g *fakeGateway) Stream(ctx context.Context, req gateway.Request, c gateway.Collect, sink gateway.StreamSink) (gateway.StreamEnd, error) {
	if g.StreamFn == nil {
		return gateway.StreamEnd{}, errors.New("fakeGateway: no StreamFn")
	}
	return g.StreamFn(ctx, req, c, sink)
}

func (g *fakeGateway) Submit(ctx context.Context, req gateway.Request, ttl time.Duration) (gateway.Record, error) {
	if g.SubmitFn == nil {
		return gateway.Record{}, errors.New("fakeGateway: no SubmitFn")
	}
	return g.SubmitFn(ctx, req, ttl)
}

func (g *fakeGateway) Lookup(owner, id string) (gateway.Record, error) {
	if g.LookupFn == nil {
		return gateway.Record{}, gateway.ErrRecordNotFound
	}
	return g.LookupFn(owner, id)
}

func (g *fakeGateway) Watch(_ context.Context, owner, id string, _ gateway.State) (gateway.Record, error) {
	return g.Lookup(owner, id)
}

func (g *fakeGateway) Cancel(owner, id string) (gateway.Record, error) {
	return g.Lookup(owner, id)
}

func (g *fakeGateway) Publish(ctx context.Context, p gateway.Publication) error {
	if g.PublishFn == nil {
		return errors.New("fakeGateway: no PublishFn")
	}
	return g.PublishFn(ctx, p)
}

// Request hands RequestFn the request's deadline in its context, the
// earlier of the two applying, as gateway.Request waits.
func (g *fakeGateway) Request(ctx context.Context, req gateway.Request) (gateway.Reply, error) {
	if g.RequestFn == nil {
		return gateway.Reply{}, errors.New("fakeGateway: no RequestFn")
	}
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	return g.RequestFn(ctx, req)
}

func (g *fakeGateway) Ready() error {
	if g.ReadyFn == nil {
		return nil
	}
	return g.ReadyFn()
}
