package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// result is what a waiting request receives: a reply or the reason it will
// never get one.
type result struct {
	msg *Message
	err error
	// progress marks a reply its responder said is not the last.
	progress bool
	// at is when the reply arrived.
	at time.Time
}

// pendingMap holds the requests waiting for a reply, keyed by correlation
// data, and remembers the ids of recently finished ones so that a reply
// arriving after its request ended can be told apart from one nobody asked
// for. All its methods are safe for concurrent use.
type pendingMap struct {
	mu      sync.Mutex
	waiting map[string]*waiter // Lock should be held.
	closed  bool               // Lock should be held.

	// recent is a ring of finished ids; recentKind says how each ended.
	// Both are bounded by len(recent), so they can't grow with traffic.
	recent     []string
	recentNext int
	recentKind map[string]finish

	late       atomic.Uint64
	duplicates atomic.Uint64
	unknown    atomic.Uint64
	// progress counts progress replies that a request waiting for its
	// final reply passed over.
	progress atomic.Uint64
}

// waiter is a request waiting for its reply, or for its replies.
type waiter struct {
	ch chan result // cap 1; receives the one result. nil for a stream.
	// stop ends the request's publish, which may still be waiting for
	// an acknowledgement when the result arrives (a connection lost
	// before the PUBACK, or a responder faster than it).
	stop context.CancelFunc
	// stream takes every reply of a request that wants many.
	stream *replyQueue
}

// replyQueue holds a streaming request's replies until its reader takes
// them. It never blocks the transport: it takes at most max results, and
// the reader ends the stream when it has read that many.
type replyQueue struct {
	mu     sync.Mutex
	items  []result // Lock should be held.
	pushed int      // Lock should be held.
	max    int
	notify chan struct{} // cap 1: something was pushed
}

func newReplyQueue(max int) *replyQueue {
	return &replyQueue{max: max, notify: make(chan struct{}, 1)}
}

// push adds r unless max results have been pushed already; a failure
// always goes in, it ends the stream.
func (q *replyQueue) push(r result) bool {
	q.mu.Lock()
	if r.err == nil && q.pushed >= q.max {
		q.mu.Unlock()
		return false
	}
	q.pushed++
	q.items = append(q.items, r)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return true
}

// take returns what was pushed since the last take.
func (q *replyQueue) take() []result {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

// finish is how a pending request ended.
type finish uint8

const (
	answered  finish = iota + 1 // a reply arrived; more replies are duplicates
	abandoned                   // deadline, cancel, failure; replies are late
)

func newPendingMap(remember int) *pendingMap {
	return &pendingMap{
		waiting:    make(map[string]*waiter),
		recent:     make([]string, remember),
		recentKind: make(map[string]finish, remember),
	}
}

// add registers id and returns the channel its reply will arrive on, or
// false once the map is closed. stop is called once the result is in.
func (p *pendingMap) add(id string, stop context.CancelFunc) (chan result, bool) {
	ch := make(chan result, 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, false
	}
	p.waiting[id] = &waiter{ch: ch, stop: stop}
	return ch, true
}

// addStream registers id for a request that takes its replies from q.
func (p *pendingMap) addStream(id string, stop context.CancelFunc, q *replyQueue) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.waiting[id] = &waiter{stop: stop, stream: q}
	return true
}

// remove drops id after its waiter gave up. It reports false if a reply or
// a failure got there first (the result is then in the channel).
func (p *pendingMap) remove(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.waiting[id]; !ok {
		return false
	}
	delete(p.waiting, id)
	p.remember(id, abandoned)
	return true
}

// deliver hands r to the request waiting on id without ever blocking.
// When none waits, orElse may take the reply; if it does not, the reply
// is counted as late, duplicate or unknown. It reports whether a request
// was waiting.
func (p *pendingMap) deliver(id string, r result, orElse func() bool) bool {
	p.mu.Lock()
	w, ok := p.waiting[id]
	var kind finish
	switch {
	case ok && w.stream != nil:
		// A stream stays registered until its reader is done; replies
		// beyond its maximum are dropped, as late ones are.
		p.mu.Unlock()
		if !w.stream.push(r) {
			p.late.Add(1)
		}
		return true
	case ok && r.progress && r.err == nil:
		// Whoever waits for one reply waits for the final one.
		p.mu.Unlock()
		p.progress.Add(1)
		return true
	}
	if ok {
		delete(p.waiting, id)
		p.remember(id, answered)
	} else {
		kind = p.recentKind[id]
	}
	p.mu.Unlock()

	if ok {
		// Cap 1 and a single sender, chosen under the lock: this never
		// blocks. The result is in before the publish is stopped.
		w.ch <- r
		w.stop()
		return true
	}
	if orElse != nil && orElse() {
		return false
	}
	switch kind {
	case answered:
		p.duplicates.Add(1)
	case abandoned:
		p.late.Add(1)
	default:
		p.unknown.Add(1)
	}
	return false
}

// failAll ends every waiting request with err; with closing set, it also
// refuses all later adds.
func (p *pendingMap) failAll(err error, closing bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = p.closed || closing
	for id, w := range p.waiting {
		delete(p.waiting, id)
		p.remember(id, abandoned)
		if w.stream != nil {
			w.stream.push(result{err: err})
		} else {
			w.ch <- result{err: err}
		}
		w.stop()
	}
}

// len is the number of waiting requests.
func (p *pendingMap) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}

// remember records how id ended, forgetting the oldest id once the ring is
// full. Lock should be held.
func (p *pendingMap) remember(id string, kind finish) {
	if len(p.recent) == 0 {
		return
	}
	if old := p.recent[p.recentNext]; old != "" {
		delete(p.recentKind, old)
	}
	p.recent[p.recentNext] = id
	p.recentKind[id] = kind
	p.recentNext = (p.recentNext + 1) % len(p.recent)
}
