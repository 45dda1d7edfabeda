package gateway

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"
)

// memStore is a record store whose writes land in a map, as retained
// messages would on a broker.
func memStore(t *testing.T, resultTTL time.Duration, maxCount int, maxBytes int64) (*recordStore, *sync.Map) {
	t.Helper()
	s := newRecordStore(slog.New(slog.DiscardHandler), "p/records/", resultTTL, maxCount, maxBytes)
	var written sync.Map
	s.write = func(_ context.Context, m *Message) error {
		written.Store(m.Topic, m)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { s.runWriter(ctx); done <- struct{}{} }()
	go func() { s.runExpiry(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	return s, &written
}

func TestRecordEncodingRoundTrip(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond)
	for _, r := range []Record{
		{ID: "a", Owner: "k", Topic: "t/1", State: StateAnswered, Async: true, Created: now, Expires: now.Add(time.Hour), Updated: now.Add(time.Second),
			Reply:          &Reply{Payload: nil, ContentType: "text/plain", UserProperties: []UserProperty{{"http-status", "201"}, {"k", "v"}}},
			IdempotencyKey: "key", Fingerprint: "fp", Replica: "r1"},
		{ID: "b", Topic: "t/2", State: StateWaiting, Created: now, Expires: now, Updated: now,
			Request: &Request{Topic: "t/2", Payload: []byte{0, 1, 2}, QoS: 2, ContentType: "a/b", UserProperties: []UserProperty{{"x", ""}}}},
		{ID: "c", Topic: "t/3", State: StateFailed, Error: "too large", Created: now, Expires: now, Updated: now},
	} {
		m := encodeRecord(&r, "p/records/"+r.ID)
		if !m.Retain || m.QoS != 1 || len(m.Payload) == 0 {
			t.Fatalf("%s: encoded as %+v; want a non-empty retained QoS 1 message", r.ID, m)
		}
		got, err := decodeRecord(m)
		if err != nil {
			t.Fatalf("%s: %v", r.ID, err)
		}
		if got.Reply != nil && len(got.Reply.Payload) == 0 {
			got.Reply.Payload = nil
		}
		if !reflect.DeepEqual(*got, r) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", r.ID, *got, r)
		}
	}
	for _, m := range []*Message{
		{Payload: []byte("x")},
		{Payload: []byte{recordMarker}, UserProperties: []UserProperty{{recordProperty, "{"}}},
		{Payload: []byte{recordMarker}, UserProperties: []UserProperty{{recordProperty, `{"v":2,"id":"a","state":1}`}}},
		{Payload: []byte{recordMarker}, UserProperties: []UserProperty{{recordProperty, `{"v":1,"id":"a","state":9}`}}},
	} {
		if _, err := decodeRecord(m); !errors.Is(err, errNotRecord) {
			t.Errorf("decodeRecord(%+v) = %v, want errNotRecord", m, err)
		}
	}
}

func TestRecordStoreLimits(t *testing.T) {
	s, _ := memStore(t, time.Minute, 2, 1<<20)
	now := time.Now()
	for i, id := range []string{"a", "b"} {
		if _, _, err := s.insert(&Record{ID: id, State: StatePublished, Created: now, Expires: now.Add(time.Minute)}); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
	}
	if _, _, err := s.insert(&Record{ID: "c", State: StatePublished, Expires: now.Add(time.Minute)}); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("third insert: %v, want ErrStoreFull", err)
	}
	big, _ := memStore(t, time.Minute, 10, 1000)
	req := &Request{Payload: make([]byte, 2000)}
	if _, _, err := big.insert(&Record{ID: "x", State: StateWaiting, Request: req, Expires: now.Add(time.Minute)}); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("insert above the byte limit: %v, want ErrStoreFull", err)
	}
	if s.full.Load() != 1 || big.full.Load() != 1 {
		t.Fatalf("full counters %d and %d, want 1 each", s.full.Load(), big.full.Load())
	}
}

func TestRecordIdempotencyKeyIsPerOwner(t *testing.T) {
	s, _ := memStore(t, time.Minute, 10, 1<<20)
	exp := time.Now().Add(time.Minute)
	if _, found, err := s.insert(&Record{ID: "a", Owner: "k1", IdempotencyKey: "x", Fingerprint: "f", State: StatePublished, Expires: exp}); found || err != nil {
		t.Fatal(found, err)
	}
	first, found, err := s.insert(&Record{ID: "b", Owner: "k1", IdempotencyKey: "x", Fingerprint: "g", State: StatePublished, Expires: exp})
	if !found || err != nil || first.ID != "a" {
		t.Fatalf("same owner and key: %+v %v %v, want record a", first, found, err)
	}
	if _, found, err := s.insert(&Record{ID: "c", Owner: "k2", IdempotencyKey: "x", State: StatePublished, Expires: exp}); found || err != nil {
		t.Fatalf("another owner's key collided: %v %v", found, err)
	}
}

// An open record expires at its TTL (waking watchers), is forgotten a
// result TTL later, and its retained message expires with it.
func TestRecordExpiresAndIsForgotten(t *testing.T) {
	s, written := memStore(t, 300*time.Millisecond, 10, 1<<20)
	now := time.Now()
	if _, _, err := s.insert(&Record{ID: "a", State: StatePublished, Created: now, Updated: now, Expires: now.Add(200 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	s.markDirty("a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := s.watch(ctx, "", "a", StatePublished)
	if err != nil || r.State != StateExpired {
		t.Fatalf("watch: %+v %v, want expired", r, err)
	}
	if waited := time.Since(now); waited < 200*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("expired after %s, want about 200ms", waited)
	}
	m, ok := written.Load("p/records/a")
	if !ok || m.(*Message).MessageExpiry != 1 {
		t.Fatalf("written record %+v, want one expiring after the TTL and the result TTL (rounded up to 1s)", m)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := s.get("", "a"); errors.Is(err, ErrRecordNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("record not forgotten after its result TTL")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if counts, bytes := s.stats(); counts != [StateFailed + 1]int{} || bytes != 0 {
		t.Fatalf("after forgetting: counts %v, %d bytes; want none", counts, bytes)
	}
}

// Replicas agree on a record whatever order its versions arrive in: a
// final state beats an open one, then the later update wins.
func TestRecordMergeKeepsTheNewest(t *testing.T) {
	s, _ := memStore(t, time.Minute, 10, 1<<20)
	now := time.Now()
	base := Record{ID: "a", Topic: "t", Created: now, Expires: now.Add(time.Minute)}
	version := func(st State, updated time.Time) *Message {
		r := base
		r.State, r.Updated = st, updated
		if st == StateAnswered {
			r.Reply = &Reply{Payload: []byte("r")}
		}
		return encodeRecord(&r, "p/records/a")
	}
	s.merge(version(StateAnswered, now))
	s.merge(version(StatePublished, now.Add(time.Second))) // later, but open
	if r, _ := s.get("", "a"); r.State != StateAnswered {
		t.Fatalf("state %s, want answered to win over a later open state", r.State)
	}
	s.merge(version(StateCanceled, now.Add(2*time.Second)))
	if r, _ := s.get("", "a"); r.State != StateCanceled {
		t.Fatalf("state %s, want the later final state", r.State)
	}
	s.merge(&Message{Topic: "p/records/a"}) // deleted
	if _, err := s.get("", "a"); !errors.Is(err, ErrRecordNotFound) {
		t.Fatalf("after deletion: %v", err)
	}
	s.merge(&Message{Topic: "p/records/b", Payload: []byte("forged")})
	if _, err := s.get("", "b"); !errors.Is(err, ErrRecordNotFound) {
		t.Fatal("a message that is no record became one")
	}
}

// A reply that reaches a replica before the record does is held, and
// stored once the record arrives.
func TestRecordReplyBeforeRecord(t *testing.T) {
	s, _ := memStore(t, time.Minute, 10, 1<<20)
	if got := s.answer("a", &Message{Payload: []byte("early")}, true); got != replyHeld {
		t.Fatalf("answer before the record: %v, want held", got)
	}
	now := time.Now()
	s.merge(encodeRecord(&Record{ID: "a", State: StatePublished, Created: now, Updated: now, Expires: now.Add(time.Minute)}, "p/records/a"))
	r, err := s.get("", "a")
	if err != nil || r.State != StateAnswered || string(r.Reply.Payload) != "early" {
		t.Fatalf("record %+v %v, want the held reply stored", r, err)
	}
	if got := s.answer("a", &Message{}, true); got != replyDuplicate {
		t.Fatalf("second reply: %v, want duplicate", got)
	}
	if got := s.answer("zzz", &Message{}, false); got != replyUnknown {
		t.Fatalf("reply nobody asked for: %v, want unknown", got)
	}
}
