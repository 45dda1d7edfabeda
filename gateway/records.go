package gateway

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// The record store keeps every request record in memory and in the
// broker, as a retained message under <prefix>/records/<id> whose Message
// Expiry is when the record may be forgotten. Every replica subscribes to
// those retained messages, so every replica holds every record and can
// answer for it; the broker replicates and (embedded broker with
// --data-dir, or an external broker with persistence) persists them. No
// state is replicated by the gateway itself.
//
// Writes go through one goroutine, in order, and coalesce: a record
// changed twice before it is written is written once.

// Errors of the record store; test them with errors.Is.
var (
	// ErrRecordNotFound: no record with that id for that owner.
	ErrRecordNotFound = errors.New("gateway: no such request")
	// ErrRecordFinal: the request has already ended; it can't be canceled.
	ErrRecordFinal = errors.New("gateway: request already ended")
	// ErrStoreFull: the limit on records or their bytes is reached.
	ErrStoreFull = errors.New("gateway: request store full")
	// ErrIdempotencyMismatch: the idempotency key was used for a
	// different request.
	ErrIdempotencyMismatch = errors.New("gateway: idempotency key reused for a different request")
	// ErrIdempotencyInFlight: the first request with this idempotency
	// key is still waiting for its reply.
	ErrIdempotencyInFlight = errors.New("gateway: idempotency key in use by a request in flight")
)

// entry is a record and what only this replica knows of it.
type entry struct {
	Record
	size int64
	// changed is closed, and cleared, when the state changes; made only
	// when someone waits.
	changed chan struct{}
}

type recordStore struct {
	log       *slog.Logger
	prefix    string // <response prefix>/records/
	resultTTL time.Duration
	maxCount  int
	maxBytes  int64
	// write stores a record in the broker; nil keeps records in this
	// process only (Config.LocalRecords).
	write func(context.Context, *Message) error
	// onMerged is told of records that arrive from the broker, so that
	// the gateway can resume their work (after a restart, or a reply that
	// came before its record).
	onMerged func(*Record)

	mu        sync.Mutex
	recs      map[string]*entry    // Lock should be held.
	idem      map[string]string    // owner\x00key → id. Lock should be held.
	deadlines deadlineHeap         // Lock should be held.
	dirty     map[string]bool      // ids to write; Lock should be held.
	orphans   map[string]orphan    // replies whose record has not arrived; Lock should be held.
	bytes     int64                // Lock should be held.
	counts    [StateFailed + 1]int // by stored state. Lock should be held.

	kickWriter chan struct{}
	kickExpiry chan struct{}

	full            atomic.Uint64
	canceledReplies atomic.Uint64
	writeErrors     atomic.Uint64
}

type orphan struct {
	msg *Message
	at  time.Time
}

// maxOrphans bounds the replies held for records not yet seen; orphanTTL
// is how long one is held. A record reaches every replica within
// milliseconds of being written, and it is written before its request is
// published, so an orphan is rare and short-lived.
const (
	maxOrphans = 1024
	orphanTTL  = 10 * time.Second
)

func newRecordStore(log *slog.Logger, prefix string, resultTTL time.Duration, maxCount int, maxBytes int64) *recordStore {
	return &recordStore{
		log:        log,
		prefix:     prefix,
		resultTTL:  resultTTL,
		maxCount:   maxCount,
		maxBytes:   maxBytes,
		recs:       make(map[string]*entry),
		idem:       make(map[string]string),
		dirty:      make(map[string]bool),
		orphans:    make(map[string]orphan),
		kickWriter: make(chan struct{}, 1),
		kickExpiry: make(chan struct{}, 1),
	}
}

func (s *recordStore) topic(id string) string { return s.prefix + id }

// deadline is when a record next needs attention: an open one expires at
// Expires, a final one is forgotten resultTTL after it ended.
func (s *recordStore) deadline(r *Record) time.Time {
	if r.State.Final() {
		return r.Updated.Add(s.resultTTL)
	}
	return r.Expires
}

// forgetAt is when a record may be forgotten; it is the Message Expiry of
// its retained message.
func (s *recordStore) forgetAt(r *Record) time.Time {
	if r.State.Final() {
		return r.Updated.Add(s.resultTTL)
	}
	return r.Expires.Add(s.resultTTL)
}

func idemKey(owner, key string) string { return owner + "\x00" + key }

// insert adds a new record made by this replica, checking the limits and
// the idempotency key. When the key is already taken it returns the
// existing record and found set, and adds nothing.
func (s *recordStore) insert(r *Record) (existing Record, found bool, err error) {
	size := r.size()
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.IdempotencyKey != "" {
		if id, ok := s.idem[idemKey(r.Owner, r.IdempotencyKey)]; ok {
			if e, ok := s.recs[id]; ok {
				return e.Record, true, nil
			}
		}
	}
	if len(s.recs) >= s.maxCount || s.bytes+size > s.maxBytes {
		s.full.Add(1)
		return Record{}, false, fmt.Errorf("%w: %d records of at most %d, %d bytes of at most %d", ErrStoreFull, len(s.recs), s.maxCount, s.bytes, s.maxBytes)
	}
	s.add(&entry{Record: *r, size: size})
	return Record{}, false, nil
}

// add puts e in the maps. Lock should be held.
func (s *recordStore) add(e *entry) {
	s.recs[e.ID] = e
	s.bytes += e.size
	s.counts[e.State]++
	if e.IdempotencyKey != "" {
		s.idem[idemKey(e.Owner, e.IdempotencyKey)] = e.ID
	}
	s.schedule(e)
}

// drop removes e from the maps. Lock should be held.
func (s *recordStore) drop(e *entry) {
	delete(s.recs, e.ID)
	delete(s.dirty, e.ID)
	s.bytes -= e.size
	s.counts[e.State]--
	if e.IdempotencyKey != "" {
		k := idemKey(e.Owner, e.IdempotencyKey)
		if s.idem[k] == e.ID {
			delete(s.idem, k)
		}
	}
	if e.changed != nil {
		close(e.changed)
		e.changed = nil
	}
}

// schedule makes sure the expiry loop looks at e by its deadline. Lock
// should be held.
func (s *recordStore) schedule(e *entry) {
	at := s.deadline(&e.Record)
	first := len(s.deadlines) == 0 || at.Before(s.deadlines[0].at)
	heap.Push(&s.deadlines, deadlineEntry{at: at, id: e.ID})
	if first {
		select {
		case s.kickExpiry <- struct{}{}:
		default:
		}
	}
}

// update applies change to record id as of now, and queues it to be
// written. change returns false to leave the record as it is.
func (s *recordStore) update(id string, change func(r *Record) bool) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.recs[id]
	if !ok {
		return Record{}, false
	}
	return s.modify(e, change)
}

// modify is update with the lock held.
func (s *recordStore) modify(e *entry, change func(r *Record) bool) (Record, bool) {
	before := e.State
	if !change(&e.Record) {
		return e.Record, false
	}
	e.Updated = time.Now()
	if e.State != StateWaiting {
		e.Request = nil
	}
	s.changed(e, before)
	if s.write != nil {
		s.dirty[e.ID] = true
		select {
		case s.kickWriter <- struct{}{}:
		default:
		}
	}
	return e.Record, true
}

// changed accounts for a change to e, which was in state before: its
// bytes and its state's count, the watchers of a new state, and its next
// deadline. Lock should be held.
func (s *recordStore) changed(e *entry, before State) {
	s.bytes -= e.size
	e.size = e.Record.size()
	s.bytes += e.size
	s.counts[before]--
	s.counts[e.State]++
	if e.State != before && e.changed != nil {
		close(e.changed)
		e.changed = nil
	}
	s.schedule(e)
}

// remove forgets record id at once and deletes its retained message: its
// request was never published.
func (s *recordStore) remove(ctx context.Context, id string) {
	s.mu.Lock()
	if e, ok := s.recs[id]; ok {
		s.drop(e)
	}
	s.mu.Unlock()
	// An empty retained message deletes the stored record.
	if err := s.store(ctx, &Message{Topic: s.topic(id), QoS: 1, Retain: true}); err != nil {
		s.log.Warn("could not delete a request record; it expires by itself", "id", id, "error", err)
	}
}

// store writes a record's message now, unless records are local.
func (s *recordStore) store(ctx context.Context, m *Message) error {
	if s.write == nil {
		return nil
	}
	err := s.write(ctx, m)
	if errors.Is(err, ErrNoResponders) {
		// Retained all the same; nobody needed to be listening.
		return nil
	}
	return err
}

// markDirty queues record id to be written.
func (s *recordStore) markDirty(id string) {
	if s.write == nil {
		return
	}
	s.mu.Lock()
	s.dirty[id] = true
	s.mu.Unlock()
	select {
	case s.kickWriter <- struct{}{}:
	default:
	}
}

// flush writes every dirty record now, for a clean shutdown.
func (s *recordStore) flush(ctx context.Context) {
	batch := s.takeDirty(math.MaxInt)
	for _, m := range batch {
		if err := s.store(ctx, m); err != nil {
			s.log.Warn("request records not stored at shutdown", "records", len(batch), "error", err)
			return
		}
	}
}

// get returns the record id if owner made it.
func (s *recordStore) get(owner, id string) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.recs[id]
	if !ok || e.Owner != owner {
		return Record{}, ErrRecordNotFound
	}
	return e.Record, nil
}

// watch returns record id once its state is no longer seen, or as it is
// when ctx ends.
func (s *recordStore) watch(ctx context.Context, owner, id string, seen State) (Record, error) {
	for {
		s.mu.Lock()
		e, ok := s.recs[id]
		if !ok || e.Owner != owner {
			s.mu.Unlock()
			return Record{}, ErrRecordNotFound
		}
		if e.State != seen {
			s.mu.Unlock()
			return e.Record, nil
		}
		if e.changed == nil {
			e.changed = make(chan struct{})
		}
		ch := e.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return s.get(owner, id)
		}
	}
}

// replyOutcome is what became of a reply offered to the store.
type replyOutcome uint8

const (
	replyUnknown replyOutcome = iota
	replyStored
	replyDuplicate
	replyLate
	replyCanceled
	replyHeld // its record has not arrived yet
)

// answer stores m as the reply of record id, if it is still open. With
// hold set, a reply for a record this replica has not seen yet is held
// for a while: another replica may have just written it.
func (s *recordStore) answer(id string, m *Message, hold bool) replyOutcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.recs[id]
	if !ok {
		if hold && len(s.orphans) < maxOrphans {
			s.orphans[id] = orphan{msg: m, at: time.Now()}
			return replyHeld
		}
		return replyUnknown
	}
	switch e.stateAt(time.Now()) {
	case StateAnswered:
		return replyDuplicate
	case StateCanceled:
		s.canceledReplies.Add(1)
		return replyCanceled
	case StateExpired, StateFailed:
		return replyLate
	}
	s.modify(e, func(r *Record) bool {
		r.State = StateAnswered
		r.Reply = &Reply{Payload: m.Payload, ContentType: m.ContentType, UserProperties: m.UserProperties}
		return true
	})
	return replyStored
}

// merge applies a record read from the broker: another replica's write,
// our own coming back, or the stored records after a (re)connect.
func (s *recordStore) merge(m *Message) {
	id := recordID(m.Topic, s.prefix)
	if id == "" {
		return
	}
	if len(m.Payload) == 0 {
		// Deleted by the replica that wrote it.
		s.mu.Lock()
		if e, ok := s.recs[id]; ok {
			s.drop(e)
		}
		s.mu.Unlock()
		return
	}
	r, err := decodeRecord(m)
	if err != nil || r.ID != id {
		s.log.Warn("ignored a message under the records prefix that is no request record", "topic", m.Topic, "error", err)
		return
	}
	now := time.Now()
	if !now.Before(s.forgetAt(r)) {
		return
	}
	s.mu.Lock()
	e, ok := s.recs[id]
	switch {
	case !ok:
		e = &entry{Record: *r, size: r.size()}
		s.add(e)
	case r.newerThan(&e.Record):
		before := e.State
		e.Record = *r
		s.changed(e, before)
	default:
		s.mu.Unlock()
		return
	}
	o, held := s.orphans[id]
	delete(s.orphans, id)
	rec := e.Record
	s.mu.Unlock()
	if held {
		s.answer(id, o.msg, false)
	}
	if s.onMerged != nil {
		s.onMerged(&rec)
	}
}

// waiting lists the records in state StateWaiting that pass keep.
func (s *recordStore) waiting(keep func(*Record) bool) []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Record
	if s.counts[StateWaiting] == 0 {
		return nil
	}
	for _, e := range s.recs {
		if e.State == StateWaiting && keep(&e.Record) {
			out = append(out, e.Record)
		}
	}
	return out
}

// stats returns the number of records in each state.
func (s *recordStore) stats() (counts [StateFailed + 1]int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts, s.bytes
}

// takeDirty returns the messages of up to n dirty records, which are
// clean from then on.
func (s *recordStore) takeDirty(n int) []*Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	var batch []*Message
	for id := range s.dirty {
		if len(batch) == n {
			break
		}
		if e, ok := s.recs[id]; ok {
			batch = append(batch, s.encode(&e.Record))
		}
		delete(s.dirty, id)
	}
	return batch
}

// runWriter writes dirty records until ctx ends. A write that fails (no
// connection) is retried: the record stays dirty.
func (s *recordStore) runWriter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kickWriter:
		}
		for {
			batch := s.takeDirty(64)
			if len(batch) == 0 {
				break
			}
			for i, m := range batch {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := s.store(wctx, m)
				cancel()
				if err != nil {
					s.writeErrors.Add(1)
					s.log.Warn("could not store a request record; retrying", "error", err)
					s.mu.Lock()
					for _, m := range batch[i:] {
						if id := recordID(m.Topic, s.prefix); s.recs[id] != nil {
							s.dirty[id] = true
						}
					}
					s.mu.Unlock()
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Second):
					}
					break
				}
			}
		}
	}
}

// encode is the retained message for r, expiring when r may be forgotten.
func (s *recordStore) encode(r *Record) *Message {
	m := encodeRecord(r, s.topic(r.ID))
	m.MessageExpiry = expirySeconds(s.forgetAt(r), time.Now())
	return m
}

// runExpiry expires open records at their TTL and forgets records once
// their result TTL has passed, until ctx ends.
func (s *recordStore) runExpiry(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := s.expire(time.Now())
		if !next.IsZero() {
			t.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kickExpiry:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
	}
}

// expire handles every deadline up to now and returns the next one.
// Expiring is not written to the broker: every replica expires a record
// at the same time by itself.
func (s *recordStore) expire(now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.deadlines) > 0 && !s.deadlines[0].at.After(now) {
		d := heap.Pop(&s.deadlines).(deadlineEntry)
		e, ok := s.recs[d.id]
		if !ok || s.deadline(&e.Record).After(now) {
			continue // a stale entry: the record was changed since
		}
		if !e.State.Final() {
			before := e.State
			e.State, e.Updated, e.Request = StateExpired, e.Expires, nil
			s.changed(e, before)
			continue
		}
		s.drop(e)
	}
	for id, o := range s.orphans {
		if now.Sub(o.at) > orphanTTL {
			delete(s.orphans, id)
		}
	}
	if len(s.deadlines) == 0 {
		return time.Time{}
	}
	return s.deadlines[0].at
}

type deadlineEntry struct {
	at time.Time
	id string
}

// deadlineHeap is a min-heap of deadlines; entries are never updated in
// place, a changed record gets a new one and the old one is skipped.
type deadlineHeap []deadlineEntry

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h deadlineHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlineHeap) Push(x any)        { *h = append(*h, x.(deadlineEntry)) }
func (h *deadlineHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
