package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// State is where a request stands. The first two are open: the request
// may still be answered; the others are final.
type State uint8

// The states of a request record, in the order a request goes through
// them.
const (
	StateWaiting   State = iota + 1 // nobody subscribed yet; not published
	StatePublished                  // published, no reply yet
	StateAnswered                   // the reply is stored
	StateExpired                    // the TTL passed without a reply
	StateCanceled                   // canceled by its owner
	StateFailed                     // could not be published
)

// States lists every State, for metrics with a fixed label set.
var States = []State{StateWaiting, StatePublished, StateAnswered, StateExpired, StateCanceled, StateFailed}

var stateNames = [...]string{"", "waiting-for-responder", "published", "answered", "expired", "canceled", "failed"}

func (s State) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Final reports whether s can no longer change.
func (s State) Final() bool { return s >= StateAnswered }

// Record is what the gateway knows of one request that outlives its HTTP
// call: an async request, or a synchronous one that timed out or carried
// an idempotency key. Records are shared by every replica through the
// broker (see records.go).
type Record struct {
	ID    string
	Owner string // the API key that made it; "" without auth
	Topic string
	State State
	// Async is false for a synchronous call's record.
	Async bool
	// Created is when the request came in; Expires when it stops waiting
	// for its reply (its TTL, or for a timed-out synchronous call the
	// result TTL); Updated when its state last changed.
	Created, Expires, Updated time.Time
	// CallEnds is when the synchronous call that made the record gives
	// up waiting; until then a repeat of it is in flight. Zero for async.
	CallEnds time.Time
	// Reply is the stored reply once answered.
	Reply *Reply
	// Error says why a failed request failed.
	Error string
	// IdempotencyKey and Fingerprint (a hash of the request) let a repeat
	// be told from a different request with the same key.
	IdempotencyKey, Fingerprint string
	// Replica is the instance that accepted the request; it alone
	// publishes the request while it waits for a responder.
	Replica string
	// Request is kept only while the state is StateWaiting: it must
	// still be published.
	Request *Request
}

// stateAt is the state as of now: an open record whose TTL has passed is
// expired even before the expiry loop has marked it.
func (r *Record) stateAt(now time.Time) State {
	if !r.State.Final() && !now.Before(r.Expires) {
		return StateExpired
	}
	return r.State
}

// size approximates the bytes a record holds, for --max-record-bytes.
func (r *Record) size() int64 {
	n := 280 + len(r.ID) + len(r.Owner) + len(r.Topic) + len(r.Error) + len(r.IdempotencyKey) + len(r.Fingerprint) + len(r.Replica)
	if r.Reply != nil {
		n += len(r.Reply.Payload) + len(r.Reply.ContentType) + propsSize(r.Reply.UserProperties)
	}
	if r.Request != nil {
		n += len(r.Request.Payload) + len(r.Request.ContentType) + len(r.Request.Topic) + propsSize(r.Request.UserProperties)
	}
	return int64(n)
}

func propsSize(props []UserProperty) int {
	n := 0
	for _, p := range props {
		n += 32 + len(p.Key) + len(p.Value)
	}
	return n
}

// rank orders two versions of one record: a final state beats an open
// one, and then the later update wins. Replicas that see the versions in
// different orders still agree.
func (r *Record) newerThan(o *Record) bool {
	if r.State.Final() != o.State.Final() {
		return r.State.Final()
	}
	return r.Updated.After(o.Updated)
}

// recordMeta is a record's metadata as it travels in the mqttgw-record
// user property; the payload, content type and user properties travel in
// the message's own fields, so that a 4 MiB reply is not re-encoded.
type recordMeta struct {
	V           int    `json:"v"`
	ID          string `json:"id"`
	Owner       string `json:"owner,omitempty"`
	Topic       string `json:"topic"`
	State       State  `json:"state"`
	Async       bool   `json:"async,omitempty"`
	Created     int64  `json:"created"`
	Expires     int64  `json:"expires"`
	Updated     int64  `json:"updated"`
	CallEnds    int64  `json:"call,omitempty"`
	Error       string `json:"error,omitempty"`
	Idem        string `json:"idem,omitempty"`
	Fingerprint string `json:"fp,omitempty"`
	Replica     string `json:"replica,omitempty"`
	// What the payload is: "reply", "request" or "".
	Body    string `json:"body,omitempty"`
	QoS     byte   `json:"qos,omitempty"`
	ReqWait int64  `json:"wait,omitempty"`
}

// recordProperty names the user property that carries a record's
// metadata; the mqttgw- prefix is reserved for the gateway's own.
const recordProperty = "mqttgw-record"

// recordMarker starts every record's payload: a retained message with an
// empty payload deletes the retained message [MQTT-3.3.1-10], and a reply
// may well be empty.
const recordMarker = 0x01

// encodeRecord turns r into the retained message that stores it.
func encodeRecord(r *Record, topic string) *Message {
	meta := recordMeta{
		V: 1, ID: r.ID, Owner: r.Owner, Topic: r.Topic, State: r.State, Async: r.Async,
		Created: r.Created.UnixMilli(), Expires: r.Expires.UnixMilli(), Updated: r.Updated.UnixNano(),
		Error: r.Error, Idem: r.IdempotencyKey, Fingerprint: r.Fingerprint, Replica: r.Replica,
	}
	m := &Message{Topic: topic, QoS: 1, Retain: true}
	var body []byte
	var props []UserProperty
	switch {
	case r.Reply != nil:
		meta.Body = "reply"
		body, m.ContentType, props = r.Reply.Payload, r.Reply.ContentType, r.Reply.UserProperties
	case r.Request != nil:
		meta.Body = "request"
		meta.QoS, meta.ReqWait = r.Request.QoS, int64(r.Request.WaitForResponder)
		body, m.ContentType, props = r.Request.Payload, r.Request.ContentType, r.Request.UserProperties
	}
	if !r.CallEnds.IsZero() {
		meta.CallEnds = r.CallEnds.UnixMilli()
	}
	js, _ := json.Marshal(meta) // plain fields: can't fail
	m.Payload = make([]byte, 1+len(body))
	m.Payload[0] = recordMarker
	copy(m.Payload[1:], body)
	m.UserProperties = append(make([]UserProperty, 0, 1+len(props)), UserProperty{Key: recordProperty, Value: string(js)})
	m.UserProperties = append(m.UserProperties, props...)
	return m
}

var errNotRecord = errors.New("not a request record")

// decodeRecord is encodeRecord's inverse.
func decodeRecord(m *Message) (*Record, error) {
	if len(m.Payload) == 0 || m.Payload[0] != recordMarker || len(m.UserProperties) == 0 || m.UserProperties[0].Key != recordProperty {
		return nil, errNotRecord
	}
	var meta recordMeta
	if err := json.Unmarshal([]byte(m.UserProperties[0].Value), &meta); err != nil {
		return nil, fmt.Errorf("%w: %v", errNotRecord, err)
	}
	if meta.V != 1 || meta.ID == "" || meta.State < StateWaiting || meta.State > StateFailed {
		return nil, fmt.Errorf("%w: version %d, state %d", errNotRecord, meta.V, meta.State)
	}
	r := &Record{
		ID: meta.ID, Owner: meta.Owner, Topic: meta.Topic, State: meta.State, Async: meta.Async,
		Created: time.UnixMilli(meta.Created), Expires: time.UnixMilli(meta.Expires), Updated: time.Unix(0, meta.Updated),
		Error: meta.Error, IdempotencyKey: meta.Idem, Fingerprint: meta.Fingerprint, Replica: meta.Replica,
	}
	if meta.CallEnds != 0 {
		r.CallEnds = time.UnixMilli(meta.CallEnds)
	}
	body := m.Payload[1:]
	var props []UserProperty
	if len(m.UserProperties) > 1 {
		props = m.UserProperties[1:]
	}
	switch meta.Body {
	case "reply":
		r.Reply = &Reply{Payload: body, ContentType: m.ContentType, UserProperties: props}
	case "request":
		r.Request = &Request{Topic: meta.Topic, Payload: body, ContentType: m.ContentType, UserProperties: props,
			QoS: meta.QoS, WaitForResponder: time.Duration(meta.ReqWait)}
	}
	return r, nil
}

// recordID takes the id from a record's topic, "" when it is none.
func recordID(topic, recordsPrefix string) string {
	id, ok := strings.CutPrefix(topic, recordsPrefix)
	if !ok || strings.Contains(id, "/") {
		return ""
	}
	return id
}
