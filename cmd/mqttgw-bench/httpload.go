package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// payloadType is the Content-Type of every request; the echo servers
// send it back.
const payloadType = "application/octet-stream"

// httpTarget is the load generator's side of (a), (c) and (d): POST the
// payload, want 200 and the same payload back.
type httpTarget struct {
	client  *http.Client
	url     string
	payload []byte
	bodies  []bytes.Buffer // one per worker, reused: the bench's own allocations stay out of its CPU figures
}

// newHTTPTarget is an httpTarget for concurrency workers.
func newHTTPTarget(url string, payload []byte, concurrency int, timeout time.Duration) *httpTarget {
	return &httpTarget{
		client:  newHTTPClient(concurrency, timeout),
		url:     url,
		payload: payload,
		bodies:  make([]bytes.Buffer, concurrency),
	}
}

// newHTTPClient sizes one client for concurrency workers: as many idle
// connections kept as workers, so that no request pays for a new
// connection once warm.
func newHTTPClient(concurrency int, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			MaxIdleConns:        concurrency,
			MaxIdleConnsPerHost: concurrency,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
	}
}

// do is a requestFunc.
func (t *httpTarget) do(ctx context.Context, w int) error {
	body := &t.bodies[w]
	if err := post(ctx, t.client, t.url, payloadType, t.payload, body); err != nil {
		return err
	}
	if !bytes.Equal(body.Bytes(), t.payload) {
		return fmt.Errorf("reply of %d bytes is not the %d-byte payload", body.Len(), len(t.payload))
	}
	return nil
}

// post sends body to url and reads the whole answer into into; a status
// other than 200 is an error that says what mqttgw answered.
func post(ctx context.Context, client *http.Client, url, contentType string, body []byte, into *bytes.Buffer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	into.Reset()
	_, err = into.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return statusError(resp.StatusCode, into.Bytes())
	}
	return nil
}

// close drops the kept connections and with them their goroutines.
func (t *httpTarget) close() { t.client.CloseIdleConnections() }

// statusError describes a failed request: by mqttgw's problem detail
// (RFC 9457) when the body is one, else by the start of the body.
func statusError(status int, body []byte) error {
	var problem struct{ Title, Detail string }
	if json.Unmarshal(body, &problem) == nil && problem.Detail != "" {
		return fmt.Errorf("HTTP %d %s: %s", status, problem.Title, problem.Detail)
	}
	return fmt.Errorf("HTTP %d: %.300s", status, body)
}
