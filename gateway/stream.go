package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// ProgressProperty is the user property a responder sets on a reply that
// is not its last ("accepted", "40%", …). Replies without it are final,
// so responders that send one reply need not know about it. The mqttgw-
// prefix is kept for the gateway's own properties.
const ProgressProperty = "progress"

func isProgress(m *Message) bool {
	for _, p := range m.UserProperties {
		if p.Key == ProgressProperty {
			return true
		}
	}
	return false
}

// Collect says how a request takes many replies.
type Collect struct {
	// Window keeps the request gathering until its deadline, past the
	// first final reply, where the number of subscribers is not known.
	Window bool
	// MaxReplies ends the request after that many replies; at least 1.
	MaxReplies int
	// Keepalive, when positive, calls the sink's Keepalive after each
	// such quiet interval.
	Keepalive time.Duration
}

// Event is one reply of a request that takes many.
type Event struct {
	Seq      int // from 1
	Reply    Reply
	Final    bool
	Received time.Time
}

// Why a stream ended, as StreamEnd.Reason says it.
const (
	EndComplete   = "complete"    // every subscriber reached sent its final reply
	EndFinal      = "final"       // the first final reply, where the subscribers are not counted
	EndMaxReplies = "max-replies" // Collect.MaxReplies replies came
	EndWindow     = "window"      // the deadline of a Collect.Window request
	EndTimeout    = "timeout"     // the deadline, before any of the above
	EndShutdown   = "shutdown"    // the gateway is shutting down
	EndBroker     = "broker-unavailable"
	EndTooLarge   = "reply-too-large" // a reply above Config.MaxReply
	EndClientGone = "client-gone"
	EndMaxBytes   = "max-bytes" // the sink could take no more (ErrStreamFull)
)

// ErrStreamFull is what a StreamSink's Reply returns to end the stream
// because it can hold no more; the reply it refused is not counted.
var ErrStreamFull = errors.New("gateway: stream full")

// StreamEnd says how a stream ended.
type StreamEnd struct {
	Reason  string
	Replies int
	// Reached is how many subscribers the request was published to (a
	// shared-subscription group counts as one), or -1 where the broker
	// doesn't tell (external brokers).
	Reached int
	// Detail is the error behind a reason that is one.
	Detail string
}

// StreamSink receives a stream's events, all on the goroutine that
// called Stream.
type StreamSink interface {
	// Published is called once, when the request is published and the
	// replies may come.
	Published(reached int) error
	Reply(Event) error
	Keepalive() error
}

// Stream publishes req and hands its replies to sink as they come until
// every subscriber it reached has sent a final reply (where that is
// known), its first final reply (where not, unless c.Window), c.MaxReplies
// replies, or ctx's deadline. An error before Published (nobody
// subscribed, not connected, refused) is returned as for Request; once
// published, the end is in StreamEnd. Replies after the end are counted
// as late.
func (g *Gateway) Stream(ctx context.Context, req Request, c Collect, sink StreamSink) (StreamEnd, error) {
	if c.MaxReplies < 1 {
		return StreamEnd{}, invalid(FieldMaxReplies, "%d is below 1", c.MaxReplies)
	}
	ctx, cancel, err := g.begin(ctx, &req, true)
	if err != nil {
		return StreamEnd{}, err
	}
	defer cancel()
	deadline, _ := ctx.Deadline()
	id := uuid.NewString()
	pubCtx, stopPublish := context.WithCancel(ctx)
	defer stopPublish()
	q := newReplyQueue(c.MaxReplies)
	if !g.pending.addStream(id, stopPublish, q) {
		return StreamEnd{}, ErrClosed
	}
	// Whatever ends the stream, its later replies are late: those that
	// come after it, and those that came but were not handed on.
	var unread []result
	defer func() {
		g.pending.remove(id)
		for _, r := range append(unread, q.take()...) {
			if r.err == nil {
				g.pending.late.Add(1)
			}
		}
	}()
	reached := -1
	err = g.publishCounted(pubCtx, g.requestMessage(&req, id), deadline, req.WaitForResponder, &reached)
	if err != nil {
		return StreamEnd{}, notAcknowledged(err)
	}
	end := StreamEnd{Reached: reached}
	start := time.Now()
	if err := sink.Published(reached); err != nil {
		end.Reason = EndClientGone
		return end, nil
	}
	// The keep-alive comes after each quiet interval: an event resets it.
	var keepalive <-chan time.Time
	quiet := func() {}
	if c.Keepalive > 0 {
		t := time.NewTimer(c.Keepalive)
		defer t.Stop()
		keepalive = t.C
		quiet = func() { t.Reset(c.Keepalive) }
	}
	finals := 0
	for {
		select {
		case <-q.notify:
			batch := q.take()
			for i, r := range batch {
				unread = batch[i+1:]
				if r.err != nil {
					end.Reason, end.Detail = failureReason(r.err), r.err.Error()
					return end, nil
				}
				end.Replies++
				ev := Event{Seq: end.Replies, Final: !r.progress, Received: r.at,
					Reply: Reply{Payload: r.msg.Payload, ContentType: r.msg.ContentType, UserProperties: r.msg.UserProperties}}
				if err := sink.Reply(ev); errors.Is(err, ErrStreamFull) {
					end.Replies--
					end.Reason = EndMaxBytes
					return end, nil
				} else if err != nil {
					end.Reason = EndClientGone
					return end, nil
				}
				quiet()
				if ev.Final {
					finals++
				}
				switch {
				case reached >= 0 && finals >= reached:
					end.Reason = EndComplete
				case reached < 0 && ev.Final && !c.Window:
					end.Reason = EndFinal
				case end.Replies >= c.MaxReplies:
					end.Reason = EndMaxReplies
				}
				if end.Reason != "" {
					return end, nil
				}
			}
		case <-keepalive:
			if err := sink.Keepalive(); err != nil {
				end.Reason = EndClientGone
				return end, nil
			}
			quiet()
		case <-ctx.Done():
			switch {
			case !errors.Is(ctx.Err(), context.DeadlineExceeded):
				end.Reason = EndClientGone
			case c.Window:
				end.Reason = EndWindow
			default:
				end.Reason = EndTimeout
				end.Detail = fmt.Sprintf("no final reply within %s", waited(start, deadline))
			}
			return end, nil
		}
	}
}

// failureReason names the failure that ended a stream.
func failureReason(err error) string {
	switch {
	case errors.Is(err, ErrClosed):
		return EndShutdown
	case errors.Is(err, ErrReplyTooLarge):
		return EndTooLarge
	}
	return EndBroker
}

// publishCounted is publish that also tells, where the transport knows,
// how many subscribers the message reached.
func (g *Gateway) publishCounted(ctx context.Context, m *Message, deadline time.Time, wait time.Duration, reached *int) error {
	counter, ok := g.transport.(ReachCounter)
	if !ok {
		return g.publish(ctx, m, deadline, wait)
	}
	return g.publishWith(ctx, m, deadline, wait, func(ctx context.Context, m *Message) error {
		n, err := counter.PublishReach(ctx, m)
		*reached = n
		return err
	})
}
