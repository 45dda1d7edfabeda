package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// DefaultResponsePrefix is the topic under which every gateway replica
// receives replies, one level per instance.
const DefaultResponsePrefix = "mqttgw/reply"

// DefaultTimeout is how long a request waits for its reply when nothing
// says otherwise.
const DefaultTimeout = 10 * time.Second

func init() {
	// Correlation ids come from crypto/rand either way; the pool saves a
	// syscall per request.
	uuid.EnableRandPool()
}

// Config configures a Gateway. The zero value of every field but InstanceID
// is replaced by its default.
type Config struct {
	// ResponsePrefix is shared by all replicas; requests may not publish
	// under it. Default DefaultResponsePrefix.
	ResponsePrefix string
	// InstanceID scopes this replica's response topic; it must be unique
	// among the replicas on one broker. Default: random.
	InstanceID string
	// DefaultTimeout applies when a request's context has no deadline.
	// Default DefaultTimeout.
	DefaultTimeout time.Duration
	// RememberFinished is how many finished request ids are kept to tell
	// late and duplicate replies from unknown ones. Default 4096.
	RememberFinished int
	// MaxReply bounds a reply's payload, content type and user
	// properties, in bytes; a larger reply fails its request with
	// ErrReplyTooLarge. Default DefaultMaxReply.
	MaxReply int
	// ResultTTL is how long a finished request's record is kept, and how
	// long a timed-out synchronous request waits for a late reply.
	// Default DefaultResultTTL.
	ResultTTL time.Duration
	// MaxRecords and MaxRecordBytes bound the request records; beyond
	// them new ones are refused with ErrStoreFull. Defaults 100,000 and
	// 256 MiB.
	MaxRecords     int
	MaxRecordBytes int64
	// SoleGateway says no other gateway shares the broker (the embedded
	// broker): this one publishes every request that waits for a
	// responder, its own from before a restart included.
	SoleGateway bool
	// LocalRecords keeps request records in this process only, not as
	// retained messages in the broker: for an embedded broker that
	// doesn't persist anything, where no other replica could read them
	// and none would survive a restart anyway. It saves the broker a
	// retained message per record (mochi copies all of them once a
	// second to find the expired ones).
	LocalRecords bool
	Logger       *slog.Logger
}

// DefaultMaxReply is the default Config.MaxReply: 4 MiB.
const DefaultMaxReply = 4 << 20

// DefaultResultTTL is the default Config.ResultTTL.
const DefaultResultTTL = 10 * time.Minute

// ShareGroup is the shared-subscription group in which the replicas take
// the replies to async requests: each reply reaches one of them.
const ShareGroup = "mqttgw"

func (c *Config) setDefaults() error {
	if c.ResponsePrefix == "" {
		c.ResponsePrefix = DefaultResponsePrefix
	}
	if err := CheckString(c.ResponsePrefix); err != nil {
		return fmt.Errorf("response prefix %w", err)
	}
	if strings.ContainsAny(c.ResponsePrefix, "+#") || strings.HasPrefix(c.ResponsePrefix, "$") ||
		strings.HasPrefix(c.ResponsePrefix, "/") || strings.HasSuffix(c.ResponsePrefix, "/") {
		return fmt.Errorf("response prefix %q must be a topic name without wildcards, leading '$' or surrounding '/'", c.ResponsePrefix)
	}
	if c.InstanceID == "" {
		c.InstanceID = NewInstanceID()
	}
	if err := CheckString(c.InstanceID); err != nil {
		return fmt.Errorf("instance id %w", err)
	}
	if strings.ContainsAny(c.InstanceID, "/+#") {
		return fmt.Errorf("instance id %q must be a single topic level without wildcards", c.InstanceID)
	}
	if c.InstanceID == asyncLevel || c.InstanceID == recordsLevel {
		return fmt.Errorf("instance id %q is reserved", c.InstanceID)
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = DefaultTimeout
	}
	if c.RememberFinished <= 0 {
		c.RememberFinished = 4096
	}
	if c.MaxReply <= 0 {
		c.MaxReply = DefaultMaxReply
	}
	if c.ResultTTL <= 0 {
		c.ResultTTL = DefaultResultTTL
	}
	if c.MaxRecords <= 0 {
		c.MaxRecords = 100_000
	}
	if c.MaxRecordBytes <= 0 {
		c.MaxRecordBytes = 256 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// NewInstanceID returns a random instance id: 16 hex digits, enough that
// replicas never pick the same one.
func NewInstanceID() string {
	return strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
}

// The levels under the response prefix besides the instances' own:
// replies to async requests, and the request records. Responders may
// publish one level under the prefix; only gateways may publish deeper.
const (
	asyncLevel   = "async"
	recordsLevel = "records"
)

// Gateway turns requests into MQTT v5 publishes and waits for their replies.
// All its methods are safe to be called concurrently.
type Gateway struct {
	cfg           Config
	transport     Transport
	responseTopic string
	asyncTopic    string
	log           *slog.Logger
	pending       *pendingMap
	records       *recordStore
	waitingKick   chan struct{}
	stop          context.CancelFunc
	loops         sync.WaitGroup

	// connected is true between ConnectionUp and ConnectionDown.
	connected atomic.Bool
	connects  atomic.Uint64 // ConnectionUp calls
	oversized atomic.Uint64 // replies above MaxReply
	closed    atomic.Bool
	closeOnce sync.Once

	// immediate says that the transport is an ImmediatePublisher: its
	// requests are published by publishers.
	immediate  bool
	publishers publishers
}

// New returns a Gateway that talks through t. Call Start before Request.
func New(cfg Config, t Transport) (*Gateway, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := &Gateway{
		cfg:           cfg,
		transport:     t,
		responseTopic: cfg.ResponsePrefix + "/" + cfg.InstanceID,
		asyncTopic:    cfg.ResponsePrefix + "/" + asyncLevel,
		log:           cfg.Logger,
		pending:       newPendingMap(cfg.RememberFinished),
		records:       newRecordStore(cfg.Logger, cfg.ResponsePrefix+"/"+recordsLevel+"/", cfg.ResultTTL, cfg.MaxRecords, cfg.MaxRecordBytes),
		waitingKick:   make(chan struct{}, 1),
		stop:          func() {},
	}
	_, g.immediate = t.(ImmediatePublisher)
	if !cfg.LocalRecords {
		g.records.write = t.Publish
	}
	g.records.onMerged = g.recordMerged
	return g, nil
}

// Start connects the transport and makes the response subscriptions: this
// instance's own, the async replies' (shared by the replicas) and the
// request records'. The gateway is ready once the transport reports them
// up; use Ready to check.
func (g *Gateway) Start(ctx context.Context) error {
	loopCtx, stop := context.WithCancel(context.Background())
	g.stop = stop
	for _, loop := range []func(context.Context){g.records.runWriter, g.records.runExpiry, g.runWaiting} {
		g.loops.Add(1)
		go func() {
			defer g.loops.Done()
			loop(loopCtx)
		}()
	}
	if g.immediate {
		g.publishers.run(loopCtx, &g.loops, defaultPublishers(), func(ctx context.Context, m *Message, deadline time.Time) error {
			return g.publish(ctx, m, deadline, 0)
		})
	}
	filters := []string{g.responseTopic, "$share/" + ShareGroup + "/" + g.asyncTopic}
	if !g.cfg.LocalRecords {
		filters = append(filters, g.records.prefix+"#")
	}
	if err := g.transport.Connect(ctx, filters, g); err != nil {
		stop()
		g.loops.Wait()
		return err
	}
	return nil
}

// ResponseTopic is the topic this instance receives its replies on.
func (g *Gateway) ResponseTopic() string { return g.responseTopic }

// ResponsePrefix is the prefix all replicas' response topics share.
func (g *Gateway) ResponsePrefix() string { return g.cfg.ResponsePrefix }

// Ready returns nil when requests can be served, or why not.
func (g *Gateway) Ready() error {
	switch {
	case g.closed.Load():
		return ErrClosed
	case !g.connected.Load():
		return ErrNotConnected
	}
	return nil
}

// Request publishes req with a fresh Response Topic and Correlation Data
// and waits for the matching reply until ctx ends, or for the configured
// default timeout if ctx has no deadline. When no reply came in time, the
// error is a *TimeoutError, and a reply that comes within the result TTL
// is kept in the request's record.
func (g *Gateway) Request(ctx context.Context, req Request) (Reply, error) {
	created := time.Now()
	// An idempotent request stores its record before publishing, which
	// must end by the deadline too.
	ctx, cancel, err := g.begin(ctx, &req, req.IdempotencyKey != "")
	if err != nil {
		return Reply{}, err
	}
	defer cancel()
	deadline := req.Deadline
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	id := uuid.NewString()
	if req.IdempotencyKey != "" {
		if reply, done, err := g.claimKey(ctx, id, &req, created, deadline); done {
			return reply, err
		}
	}
	reply, published, err := g.request(ctx, id, &req, created, deadline)
	if req.IdempotencyKey != "" {
		g.settleKey(id, reply, published, err)
	}
	return reply, err
}

// request publishes req under id and waits for its reply; published
// says whether it may have reached a responder.
func (g *Gateway) request(ctx context.Context, id string, req *Request, created, deadline time.Time) (reply Reply, published bool, err error) {
	// Register before publishing: a fast responder may answer before
	// Publish returns. Once the request has its result, a publish still
	// waiting for its acknowledgement is of no use: pubCtx ends it.
	// A publish that waits (for a PUBACK, or for a responder) needs the
	// deadline in its context; on the embedded broker it waits for
	// neither.
	pubCtx, stopPublish := ctx, context.CancelFunc(func() {})
	if !g.immediate || req.WaitForResponder > 0 {
		pubCtx, stopPublish = context.WithDeadline(ctx, deadline)
		defer stopPublish()
	}
	ch, ok := g.pending.add(id, stopPublish)
	if !ok {
		return Reply{}, false, ErrClosed
	}
	m := g.requestMessage(req, id)
	handed := false
	if g.immediate && req.WaitForResponder == 0 {
		handed, err = g.publishers.publish(pubCtx, m, deadline)
	}
	if !handed {
		err = g.publish(pubCtx, m, deadline, req.WaitForResponder)
	}
	start := time.Now()
	if err != nil {
		if !g.pending.remove(id) {
			// The request got its reply, or failed (the connection was
			// lost), while the publish waited: that is its outcome.
			reply, err = (<-ch).reply()
			return reply, true, err
		}
		return Reply{}, false, notAcknowledged(err)
	}

	// A timer only when ctx doesn't end at the deadline itself (a nil
	// channel never fires).
	var expired <-chan time.Time
	if d, ok := ctx.Deadline(); !ok || d.After(deadline) {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case r := <-ch:
		reply, err = r.reply()
		return reply, true, err
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			if !g.pending.remove(id) {
				reply, err = (<-ch).reply()
				return reply, true, err
			}
			return Reply{}, true, fmt.Errorf("gateway: request abandoned: %w", ctx.Err())
		}
	case <-expired:
	}
	// The record goes in before the request leaves the pending map, so
	// that a reply in between is not lost: it either still reaches ch,
	// or finds the record. A request with an idempotency key has had its
	// record from the start.
	kept := req.IdempotencyKey != "" || g.keepTimedOut(id, req, created)
	if !g.pending.remove(id) {
		// A reply or failure won the race with the deadline; it is
		// already in ch, and the responder did its work: use it.
		if kept && req.IdempotencyKey == "" {
			g.records.remove(context.WithoutCancel(ctx), id)
		}
		reply, err = (<-ch).reply()
		return reply, true, err
	}
	msg := fmt.Sprintf("%s: no reply on %q within %s", ErrTimeout, req.Topic, waited(start, deadline))
	return Reply{}, true, &TimeoutError{ID: id, Kept: kept, msg: msg}
}

// requestMessage is what req publishes under id: with this instance's
// response topic, and id as its correlation data.
func (g *Gateway) requestMessage(req *Request, id string) *Message {
	return &Message{
		Topic:           req.Topic,
		Payload:         req.Payload,
		QoS:             req.QoS,
		ContentType:     req.ContentType,
		ResponseTopic:   g.responseTopic,
		CorrelationData: []byte(id),
		UserProperties:  req.UserProperties,
	}
}

// claimKey records a synchronous request with an idempotency key before
// it is published; the record stays open for a late reply until the
// result TTL after the call's deadline. When the key is taken already it
// reports done, with the first request's outcome.
func (g *Gateway) claimKey(ctx context.Context, id string, req *Request, created, deadline time.Time) (Reply, bool, error) {
	now := time.Now()
	rec := Record{
		ID: id, Owner: req.Owner, Topic: req.Topic, State: StatePublished,
		Created: created, Expires: deadline.Add(g.cfg.ResultTTL), Updated: now, CallEnds: deadline,
		IdempotencyKey: req.IdempotencyKey, Fingerprint: req.Fingerprint, Replica: g.cfg.InstanceID,
	}
	first, found, err := g.records.insert(&rec)
	switch {
	case err != nil:
		return Reply{}, true, err
	case !found:
		if err := g.storeNew(ctx, &rec); err != nil {
			g.records.remove(context.WithoutCancel(ctx), id)
			return Reply{}, true, notAcknowledged(err)
		}
		return Reply{}, false, nil
	case first.Async || first.Fingerprint != req.Fingerprint:
		return Reply{}, true, fmt.Errorf("%w: key %q was first used for another request", ErrIdempotencyMismatch, req.IdempotencyKey)
	}
	switch st := first.stateAt(now); {
	case st == StateAnswered:
		return *first.Reply, true, nil
	case !st.Final() && now.Before(first.CallEnds):
		return Reply{}, true, fmt.Errorf("%w: key %q", ErrIdempotencyInFlight, req.IdempotencyKey)
	case !st.Final() || st == StateExpired:
		return Reply{}, true, &TimeoutError{ID: first.ID, Kept: true,
			msg: fmt.Sprintf("%s: the first request with idempotency key %q got no reply in time", ErrTimeout, req.IdempotencyKey)}
	default:
		return Reply{}, true, fmt.Errorf("%w: the first request with idempotency key %q is %s", ErrRecordFinal, req.IdempotencyKey, st)
	}
}

// settleKey stores the outcome of a request with an idempotency key. A
// reply is kept for repeats. A timeout, or a client that went away, leaves
// the record open for a late reply. A request that never reached the
// broker frees its key for a retry; any other failure after publishing
// (the responder may have acted) ends the record as failed.
func (g *Gateway) settleKey(id string, reply Reply, published bool, err error) {
	now := time.Now()
	switch {
	case err == nil:
		g.records.update(id, func(r *Record) bool {
			if r.State.Final() {
				return false
			}
			r.State, r.Reply = StateAnswered, &reply
			return true
		})
	case !published:
		g.records.remove(context.Background(), id)
	case errors.Is(err, ErrTimeout) || errors.Is(err, context.Canceled):
		g.records.update(id, func(r *Record) bool {
			if r.State.Final() || !now.Before(r.CallEnds) {
				return false
			}
			r.CallEnds = now
			return true
		})
	default:
		g.failRecord(id, err)
	}
}

// Publish publishes p and returns once the broker has taken it (at QoS
// 0, once it is sent). That nobody is subscribed is no error here: the
// message may be retained, and a publication expects no answer.
func (g *Gateway) Publish(ctx context.Context, p Publication) error {
	ctx, cancel, err := g.begin(ctx, &Request{Topic: p.Topic, ContentType: p.ContentType, UserProperties: p.UserProperties, QoS: p.QoS}, true)
	if err != nil {
		return err
	}
	defer cancel()
	var expiry uint32
	if p.TTL > 0 {
		now := time.Now()
		expiry = expirySeconds(now.Add(p.TTL), now)
	}
	err = g.transport.Publish(ctx, &Message{
		Topic:          p.Topic,
		Payload:        p.Payload,
		QoS:            p.QoS,
		ContentType:    p.ContentType,
		MessageExpiry:  expiry,
		UserProperties: p.UserProperties,
		Retain:         p.Retain,
	})
	if errors.Is(err, ErrNoResponders) {
		return nil
	}
	return notAcknowledged(err)
}

// begin checks req, and that the gateway can serve it, and returns ctx
// with the default timeout when neither it nor req has a deadline; with
// req's deadline in it too when withDeadline asks for it. A request whose
// client has already gone (an HTTP/2 stream reset at once, say) is
// refused: it must not still make a device act.
func (g *Gateway) begin(ctx context.Context, req *Request, withDeadline bool) (context.Context, context.CancelFunc, error) {
	if err := g.check(req); err != nil {
		return nil, nil, err
	}
	if err := g.Ready(); err != nil {
		return nil, nil, err
	}
	cancel := context.CancelFunc(func() {})
	switch _, ok := ctx.Deadline(); {
	case !req.Deadline.IsZero() && withDeadline:
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
	case !ok && req.Deadline.IsZero():
		ctx, cancel = context.WithTimeout(ctx, g.cfg.DefaultTimeout)
	}
	if err := ctx.Err(); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("gateway: abandoned before publishing: %w", err)
	}
	return ctx, cancel, nil
}

// notAcknowledged names a publish's deadline for what it is: the broker
// did not acknowledge it in time.
func notAcknowledged(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: publish not acknowledged in time", ErrTimeout)
	}
	return err
}

// publish publishes m; while nobody is subscribed to its topic it waits
// up to wait for a subscriber and publishes again, at once when the
// transport tells when a subscription appears (the embedded broker),
// else with backoff (a broker's PUBACK 0x10). Each attempt's Message
// Expiry is the time left until deadline.
func (g *Gateway) publish(ctx context.Context, m *Message, deadline time.Time, wait time.Duration) error {
	return g.publishWith(ctx, m, deadline, wait, g.transport.Publish)
}

// publishWith is publish through pub.
func (g *Gateway) publishWith(ctx context.Context, m *Message, deadline time.Time, wait time.Duration, pub func(context.Context, *Message) error) error {
	m.MessageExpiry = expirySeconds(deadline, time.Now())
	err := pub(ctx, m)
	if wait <= 0 || !errors.Is(err, ErrNoResponders) {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	waiter, _ := g.transport.(SubscriberWaiter)
	backoff := 50 * time.Millisecond
	for {
		if waiter != nil {
			_ = waiter.WaitForSubscriber(wctx, m.Topic)
		} else {
			t := time.NewTimer(backoff)
			select {
			case <-wctx.Done():
				t.Stop()
			case <-t.C:
			}
			backoff = min(2*backoff, 2*time.Second)
		}
		if err := ctx.Err(); errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w: nobody subscribed to %q before the request's deadline", ErrNoResponders, m.Topic)
		} else if err != nil {
			return err
		}
		if wctx.Err() != nil {
			return fmt.Errorf("%w: nobody subscribed to %q within the %s waited for a responder", ErrNoResponders, m.Topic, wait)
		}
		m.MessageExpiry = expirySeconds(deadline, time.Now())
		if err = pub(ctx, m); !errors.Is(err, ErrNoResponders) {
			return err
		}
	}
}

// waited is the timeout a request had, for messages: the deadline may
// come from the caller's context rather than from a duration we were given.
//
// The time from start is a little under the timeout that was given (the
// caller set the deadline a moment before): rounded to 10 ms from 100 ms
// up, a timeout of 1s reads as 1s, not 998ms, on a busy machine too.
func waited(start, deadline time.Time) time.Duration {
	d := deadline.Sub(start)
	if d >= 100*time.Millisecond {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

func (r result) reply() (Reply, error) {
	if r.err != nil {
		return Reply{}, r.err
	}
	return Reply{
		Payload:        r.msg.Payload,
		ContentType:    r.msg.ContentType,
		UserProperties: r.msg.UserProperties,
	}, nil
}

// check rejects what must never reach the broker: a strict broker or
// responder library drops its connection on it, failing every request in
// flight.
func (g *Gateway) check(req *Request) error {
	if err := CheckTopic(req.Topic, g.cfg.ResponsePrefix); err != nil {
		return invalid(FieldTopic, "%v", err)
	}
	if req.QoS > 2 {
		return invalid(FieldQoS, "%d is not 0, 1 or 2", req.QoS)
	}
	if err := CheckString(req.ContentType); err != nil {
		return invalid(FieldContentType, "it %v", err)
	}
	for _, p := range req.UserProperties {
		if err := CheckString(p.Key); err != nil {
			return invalid(FieldUserProperty, "key %q %v", p.Key, err)
		}
		if err := CheckString(p.Value); err != nil {
			return invalid(FieldUserProperty, "value of %q %v", p.Key, err)
		}
	}
	return nil
}

// HandleReply takes a message from one of the gateway's subscriptions: a
// reply to a waiting or timed-out synchronous request, a reply to an
// async request, or a request record. Transports call it; it never blocks.
func (g *Gateway) HandleReply(m *Message) {
	switch {
	case m.Topic == g.responseTopic:
		g.handleSyncReply(m)
	case m.Topic == g.asyncTopic:
		g.handleAsyncReply(m)
	case strings.HasPrefix(m.Topic, g.records.prefix):
		g.records.merge(m)
	default:
		g.pending.unknown.Add(1)
	}
}

func (g *Gateway) handleSyncReply(m *Message) {
	id := string(m.CorrelationData)
	r := result{msg: m, progress: isProgress(m), at: time.Now()}
	if n := replySize(m); n > g.cfg.MaxReply {
		r = result{err: fmt.Errorf("%w: the reply is %d bytes; at most %d are allowed", ErrReplyTooLarge, n, g.cfg.MaxReply)}
	}
	var kept bool
	delivered := g.pending.deliver(id, r, func() bool {
		// A late reply to a request that timed out and kept its record.
		if r.err != nil {
			kept = g.failRecord(id, r.err)
			return kept
		}
		o := g.records.answer(id, m, false)
		if o == replyUnknown {
			return false // the pending map counts it, knowing its recent ids
		}
		kept = o == replyStored
		g.countDropped(o)
		return true
	})
	if r.err != nil && (delivered || kept) {
		g.oversized.Add(1)
	}
}

func (g *Gateway) handleAsyncReply(m *Message) {
	id := string(m.CorrelationData)
	if n := replySize(m); n > g.cfg.MaxReply {
		g.oversized.Add(1)
		g.failRecord(id, fmt.Errorf("%w: the reply is %d bytes; at most %d are allowed", ErrReplyTooLarge, n, g.cfg.MaxReply))
		return
	}
	// Another replica may have written the record a moment ago; on the
	// embedded broker every record is here already.
	g.countDropped(g.records.answer(id, m, !g.cfg.SoleGateway))
}

// countDropped counts a reply the record store did not keep; a reply
// to a canceled request the store counts itself.
func (g *Gateway) countDropped(o replyOutcome) {
	switch o {
	case replyDuplicate:
		g.pending.duplicates.Add(1)
	case replyLate:
		g.pending.late.Add(1)
	case replyUnknown:
		g.pending.unknown.Add(1)
	}
}

// failRecord ends an open record with err; it reports whether there was one.
func (g *Gateway) failRecord(id string, err error) bool {
	_, ok := g.records.update(id, func(r *Record) bool {
		if r.State.Final() {
			return false
		}
		r.State, r.Error = StateFailed, err.Error()
		return true
	})
	return ok
}

// replySize is what of a reply reaches the HTTP response.
func replySize(m *Message) int {
	n := len(m.Payload) + len(m.ContentType)
	for _, p := range m.UserProperties {
		n += len(p.Key) + len(p.Value)
	}
	return n
}

// ConnectionUp marks the gateway ready; transports call it once the
// response subscription is acknowledged.
func (g *Gateway) ConnectionUp() {
	g.connects.Add(1)
	g.connected.Store(true)
	g.kickWaiting()
	g.log.Info("broker connection up", "response_topic", g.responseTopic)
}

// ConnectionDown fails every waiting request at once: their replies can't
// arrive on a connection that is gone, so waiting would only turn a fast
// 503 into a slow 504.
func (g *Gateway) ConnectionDown(err error) {
	g.connected.Store(false)
	g.log.Warn("broker connection down", "error", err, "failed_requests", g.pending.len())
	g.pending.failAll(fmt.Errorf("%w: connection lost while waiting for the reply", ErrNotConnected), false)
}

// Close fails every waiting request with ErrClosed, refuses new ones and
// closes the transport.
func (g *Gateway) Close(ctx context.Context) error {
	var err error
	g.closeOnce.Do(func() {
		g.closed.Store(true)
		g.pending.failAll(fmt.Errorf("%w: the gateway is shutting down", ErrClosed), true)
		g.stop()
		g.loops.Wait()
		// Records changed since the last write (replies, cancels) are
		// written while the connection is still there.
		g.records.flush(ctx)
		g.connected.Store(false)
		err = g.transport.Close(ctx)
	})
	return err
}

// Stats is a snapshot of the gateway's counters.
type Stats struct {
	Pending    int    // requests waiting for a reply now
	Late       uint64 // replies that came after their request ended
	Duplicates uint64 // replies to a request that was already answered
	Unknown    uint64 // replies with correlation data nobody sent (or long forgotten)
	Oversized  uint64 // replies refused for being larger than MaxReply
}

// Stats returns the current counters.
func (g *Gateway) Stats() Stats {
	return Stats{
		Pending:    g.pending.len(),
		Late:       g.pending.late.Load(),
		Duplicates: g.pending.duplicates.Load(),
		Unknown:    g.pending.unknown.Load(),
		Oversized:  g.oversized.Load(),
	}
}
