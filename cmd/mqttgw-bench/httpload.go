package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// payloadType is the Content-Type of every request; the echo servers
// send it back.
const payloadType = "application/octet-stream"

// httpTarget is the load generator's side of (a), (c) and (d): POST the
// payload, want 200 and the same payload back.
type httpTarget struct {
	client  *rawClient
	payload []byte
	bodies  []bytes.Buffer // one per worker, reused: the bench's own allocations stay out of its CPU figures
}

// newHTTPTarget is an httpTarget for concurrency workers.
func newHTTPTarget(url string, payload []byte, concurrency int, timeout time.Duration) (*httpTarget, error) {
	c, err := newRawClient(url, payloadType, payload, concurrency, timeout)
	if err != nil {
		return nil, err
	}
	return &httpTarget{client: c, payload: payload, bodies: make([]bytes.Buffer, concurrency)}, nil
}

// do is a requestFunc.
func (t *httpTarget) do(ctx context.Context, w int) error {
	body := &t.bodies[w]
	status, err := t.client.post(ctx, w, body)
	if err := expectOK(status, err, body.Bytes()); err != nil {
		return err
	}
	if !bytes.Equal(body.Bytes(), t.payload) {
		return fmt.Errorf("reply of %d bytes is not the %d-byte payload", body.Len(), len(t.payload))
	}
	return nil
}

// close closes the workers' connections.
func (t *httpTarget) close() { t.client.close() }

// statusError describes a failed request: by mqttgw's problem detail
// (RFC 9457) when the body is one, else by the start of the body.
func statusError(status int, body []byte) error {
	var problem struct{ Title, Detail string }
	if json.Unmarshal(body, &problem) == nil && problem.Detail != "" {
		return fmt.Errorf("HTTP %d %s: %s", status, problem.Title, problem.Detail)
	}
	return fmt.Errorf("HTTP %d: %.300s", status, body)
}
