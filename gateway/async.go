package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// TimeoutError is a synchronous request that got no reply in time. When
// Kept is set, its record stays for the result TTL under ID, and a reply
// that comes late is stored there.
type TimeoutError struct {
	ID   string
	Kept bool
	msg  string
}

func (e *TimeoutError) Error() string {
	if e.msg == "" {
		return ErrTimeout.Error()
	}
	return e.msg
}

// Is makes errors.Is(err, ErrTimeout) true.
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }

// Submit publishes req as an async request that may wait for a responder
// and its reply until ttl has passed, and returns its record at once. The
// record is stored before the request is published, so that any replica
// can capture the reply. With an idempotency key already used by the
// same owner, it publishes nothing and returns the first request's record,
// or ErrIdempotencyMismatch when that was a different request.
func (g *Gateway) Submit(ctx context.Context, req Request, ttl time.Duration) (Record, error) {
	if err := g.check(&req); err != nil {
		return Record{}, err
	}
	if err := g.Ready(); err != nil {
		return Record{}, err
	}
	if ttl <= 0 {
		return Record{}, invalid(FieldTTL, "%s is not positive", ttl)
	}
	now := time.Now()
	rec := Record{
		ID: uuid.NewString(), Owner: req.Owner, Topic: req.Topic, State: StatePublished, Async: true,
		Created: now, Expires: now.Add(ttl), Updated: now,
		IdempotencyKey: req.IdempotencyKey, Fingerprint: req.Fingerprint, Replica: g.cfg.InstanceID,
	}
	first, found, err := g.records.insert(&rec)
	if err != nil {
		return Record{}, err
	}
	if found {
		if !first.Async || first.Fingerprint != req.Fingerprint {
			return first, fmt.Errorf("%w: key %q was first used for another request", ErrIdempotencyMismatch, req.IdempotencyKey)
		}
		return first, nil
	}
	if err := g.storeNew(ctx, &rec); err != nil {
		g.records.remove(context.WithoutCancel(ctx), rec.ID)
		return Record{}, notAcknowledged(err)
	}
	err = g.transport.Publish(ctx, g.asyncMessage(&req, &rec))
	switch {
	case errors.Is(err, ErrNoResponders):
		// Not delivered to anyone: keep the request, and publish it as
		// soon as someone subscribes (runWaiting).
		r, _ := g.records.update(rec.ID, func(r *Record) bool {
			if r.State != StatePublished {
				return false
			}
			r.State, r.Request = StateWaiting, &req
			return true
		})
		g.kickWaiting()
		return r, nil
	case err != nil:
		g.records.remove(context.WithoutCancel(ctx), rec.ID)
		return Record{}, notAcknowledged(err)
	}
	r, err := g.records.get(rec.Owner, rec.ID)
	if err != nil {
		// Only a result TTL shorter than this call could do this.
		return rec, nil
	}
	return r, nil
}

// storeNew writes a new record to the broker before its request is
// published, so that whichever replica gets the reply knows the request.
func (g *Gateway) storeNew(ctx context.Context, rec *Record) error {
	if g.cfg.LocalRecords {
		return nil
	}
	return g.records.store(ctx, g.records.encode(rec))
}

// asyncMessage is the PUBLISH of an async request: its replies go to the
// topic all replicas share, and its Message Expiry is the time left of
// its TTL, so that a device that wakes too late never sees it.
func (g *Gateway) asyncMessage(req *Request, rec *Record) *Message {
	m := g.requestMessage(req, rec.ID)
	m.ResponseTopic = g.asyncTopic
	m.MessageExpiry = expirySeconds(rec.Expires, time.Now())
	return m
}

// Lookup returns the record id if owner made it, else ErrRecordNotFound.
func (g *Gateway) Lookup(owner, id string) (Record, error) {
	r, err := g.records.get(owner, id)
	if err == nil {
		r.State = r.stateAt(time.Now())
	}
	return r, err
}

// Watch returns record id once its state is other than seen, or as it is
// when ctx ends.
func (g *Gateway) Watch(ctx context.Context, owner, id string, seen State) (Record, error) {
	r, err := g.records.watch(ctx, owner, id, seen)
	if err == nil {
		r.State = r.stateAt(time.Now())
	}
	return r, err
}

// Cancel ends record id if it is still open: a reply after this is
// dropped and counted. A request already delivered to a responder (or
// queued in its session) stays there; only a request still waiting for a
// responder is never published.
func (g *Gateway) Cancel(owner, id string) (Record, error) {
	now := time.Now()
	var final State
	r, ok := g.records.update(id, func(r *Record) bool {
		if r.Owner != owner {
			return false
		}
		if s := r.stateAt(now); s.Final() {
			final = s
			return false
		}
		r.State = StateCanceled
		return true
	})
	switch {
	case !ok && final != 0:
		return r, fmt.Errorf("%w: it is %s", ErrRecordFinal, final)
	case !ok || r.Owner != owner:
		return Record{}, ErrRecordNotFound
	}
	return r, nil
}

func (g *Gateway) kickWaiting() {
	select {
	case g.waitingKick <- struct{}{}:
	default:
	}
}

// runWaiting publishes the requests that wait for a responder: on the
// embedded broker the moment a subscription appears, on an external one
// by trying again every second (the broker's PUBACK 0x10 says whether
// anyone listens). One try per topic: when it finds no responder, the
// other requests to that topic are not tried.
func (g *Gateway) runWaiting(ctx context.Context) {
	waiter, _ := g.transport.(SubscriberWaiter)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		var subscribed <-chan struct{}
		if waiter != nil {
			// Taken before looking, so that a subscription made while
			// we publish still wakes us.
			subscribed = waiter.Subscribed()
		}
		g.publishWaiting(ctx)
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(time.Second)
		select {
		case <-ctx.Done():
			return
		case <-subscribed:
		case <-g.waitingKick:
		case <-t.C:
		}
	}
}

// publishWaiting tries every waiting request this replica is in charge
// of: its own, or every one on the embedded broker, where this is the
// only gateway.
func (g *Gateway) publishWaiting(ctx context.Context) {
	if !g.connected.Load() {
		return
	}
	recs := g.records.waiting(func(r *Record) bool {
		return g.cfg.SoleGateway || r.Replica == g.cfg.InstanceID
	})
	nobody := make(map[string]bool)
	now := time.Now()
	for i := range recs {
		r := &recs[i]
		if nobody[r.Topic] || r.Request == nil || !now.Before(r.Expires) {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := g.transport.Publish(pctx, g.asyncMessage(r.Request, r))
		cancel()
		switch {
		case errors.Is(err, ErrNoResponders):
			nobody[r.Topic] = true
		case errors.Is(err, ErrNotConnected) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			return
		default:
			g.records.update(r.ID, func(cur *Record) bool {
				if cur.State != StateWaiting {
					return false
				}
				if err != nil {
					cur.State, cur.Error = StateFailed, err.Error()
				} else {
					cur.State = StatePublished
				}
				return true
			})
		}
	}
}

// recordMerged resumes the work a record read from the broker needs:
// after a restart, the requests still waiting for a responder.
func (g *Gateway) recordMerged(r *Record) {
	if r.State == StateWaiting {
		g.kickWaiting()
	}
}

// keepTimedOut stores a timed-out synchronous request's record, so that a
// late reply is kept; it reports false when the store is full.
func (g *Gateway) keepTimedOut(id string, req *Request, created time.Time) bool {
	now := time.Now()
	rec := Record{
		ID: id, Owner: req.Owner, Topic: req.Topic, State: StatePublished,
		Created: created, Expires: now.Add(g.cfg.ResultTTL), Updated: now, CallEnds: now, Replica: g.cfg.InstanceID,
	}
	if _, _, err := g.records.insert(&rec); err != nil {
		return false
	}
	g.records.markDirty(id)
	return true
}
