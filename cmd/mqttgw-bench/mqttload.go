package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// mqttTarget is (b), native MQTT v5 request/response: every worker
// publishes its request with a Response Topic and Correlation Data on one
// shared paho connection, as an application's MQTT client library would,
// and waits for the reply there. It is what mqttgw does for an HTTP
// client, minus HTTP and the gateway.
type mqttTarget struct {
	client     *mqttClient
	topic      string
	replyTopic string
	qos        byte
	payload    []byte
	timeout    time.Duration
	slots      []mqttSlot
	failed     atomic.Pointer[error] // the connection's error, once it fails
}

// mqttSlot is one worker's mailbox. The correlation data is the worker's
// index and a sequence number, so that the reply finds its worker without
// a map or a lock, and a late reply to an earlier, timed-out request is
// recognised and dropped.
type mqttSlot struct {
	seq   atomic.Uint32
	reply chan mqttReply // buffered, 1
	timer *time.Timer
}

type mqttReply struct {
	seq     uint32
	payload []byte
}

// newMQTTTarget connects to broker and subscribes to a reply topic of its
// own, for concurrency workers publishing payload to topic at qos.
func newMQTTTarget(ctx context.Context, broker, topic string, qos byte, payload []byte, concurrency int, timeout time.Duration) (*mqttTarget, error) {
	t := &mqttTarget{
		topic:      topic,
		replyTopic: "bench/reply/" + rand.Text()[:10],
		qos:        qos,
		payload:    payload,
		timeout:    timeout,
		slots:      make([]mqttSlot, concurrency),
	}
	for i := range t.slots {
		t.slots[i].reply = make(chan mqttReply, 1)
		t.slots[i].timer = time.NewTimer(time.Hour)
		t.slots[i].timer.Stop()
	}
	c, err := dialMQTT(ctx, broker, "bench-requester", t.onPublish, func(err error) { t.failed.CompareAndSwap(nil, &err) })
	if err != nil {
		return nil, err
	}
	t.client = c
	// QoS 1, so that a reply sent at QoS 1 arrives at QoS 1: the
	// delivered QoS is the lower of the two.
	if err := c.subscribe(ctx, t.replyTopic, 1); err != nil {
		c.close()
		return nil, err
	}
	return t, nil
}

// onPublish runs on paho's router goroutine: it must only hand over.
func (t *mqttTarget) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	if p.Properties == nil || len(p.Properties.CorrelationData) != 8 {
		return true, nil
	}
	w := binary.BigEndian.Uint32(p.Properties.CorrelationData)
	seq := binary.BigEndian.Uint32(p.Properties.CorrelationData[4:])
	if int(w) >= len(t.slots) || t.slots[w].seq.Load() != seq {
		return true, nil // a late reply: its worker gave up on it
	}
	select {
	case t.slots[w].reply <- mqttReply{seq, p.Payload}:
	default:
	}
	return true, nil
}

// do is a requestFunc.
func (t *mqttTarget) do(ctx context.Context, w int) error {
	if err := t.failed.Load(); err != nil {
		return fmt.Errorf("requester connection: %w", *err)
	}
	s := &t.slots[w]
	seq := s.seq.Add(1)
	select { // a reply that came after its request timed out
	case <-s.reply:
	default:
	}
	corr := make([]byte, 8) // paho keeps it until the PUBACK: not reused
	binary.BigEndian.PutUint32(corr, uint32(w))
	binary.BigEndian.PutUint32(corr[4:], seq)
	_, err := t.client.Publish(ctx, &paho.Publish{
		Topic:   t.topic,
		QoS:     t.qos,
		Payload: t.payload,
		Properties: &paho.PublishProperties{
			ResponseTopic:   t.replyTopic,
			CorrelationData: corr,
			ContentType:     payloadType,
		},
	})
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	s.timer.Reset(t.timeout)
	defer s.timer.Stop()
	for {
		select {
		case r := <-s.reply:
			if r.seq != seq {
				continue
			}
			if !bytes.Equal(r.payload, t.payload) {
				return fmt.Errorf("reply of %d bytes is not the %d-byte payload", len(r.payload), len(t.payload))
			}
			return nil
		case <-s.timer.C:
			return errors.New("no reply within " + t.timeout.String())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// close disconnects.
func (t *mqttTarget) close() { t.client.close() }
