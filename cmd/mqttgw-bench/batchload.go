package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// ndjsonType is the Content-Type of a batch and of its answer: one JSON
// document per line.
const ndjsonType = "application/x-ndjson"

// batchTarget is the load generator's side of (e): POST a batch of size
// requests to mqttgw's /batch, want 200 and, for every one of them, a
// line with status 200 and the payload echoed. One call is size requests.
type batchTarget struct {
	client  *rawClient
	payload string // each request's, as the answer's lines carry it
	size    int
	workers []batchWorker
}

// batchWorker is one worker's reusable state: the bench's own
// allocations stay out of its CPU figures.
type batchWorker struct {
	answer bytes.Buffer
	seen   []bool // by index: which requests have had their line
	line   batchLine
}

// batchLine is what the bench reads of one line of the answer.
type batchLine struct {
	Index    *int    `json:"index"`
	Status   int     `json:"status"`
	Payload  *string `json:"payload"`
	Encoding string  `json:"payload_encoding"`
	Problem  *struct {
		Title, Detail string
	} `json:"problem"`
}

// newBatchTarget prepares batches of size requests of payload to topic
// at qos, for concurrency workers. base is mqttgw's http://host:port;
// timeout is the batch's ?timeout=, and the client waits a little longer,
// so that requests with no reply are mqttgw's 504 lines, with their
// problem detail, rather than a client-side timeout.
func newBatchTarget(base, topic string, qos int, payload []byte, size, concurrency int, timeout time.Duration) (*batchTarget, error) {
	// Strings and an int: Marshal cannot fail.
	item, _ := json.Marshal(struct {
		Topic   string `json:"topic"`
		Payload string `json:"payload"`
		QoS     int    `json:"qos"`
	}{topic, string(payload), qos})
	body := make([]byte, 0, size*(len(item)+1))
	for range size {
		body = append(append(body, item...), '\n')
	}
	client, err := newRawClient(fmt.Sprintf("%s/batch?timeout=%s", base, timeout), ndjsonType, body, concurrency, timeout+2*time.Second)
	if err != nil {
		return nil, err
	}
	t := &batchTarget{
		client:  client,
		payload: string(payload),
		size:    size,
		workers: make([]batchWorker, concurrency),
	}
	for i := range t.workers {
		t.workers[i].seen = make([]bool, size)
	}
	return t, nil
}

// do is a requestFunc: one batch call.
func (t *batchTarget) do(ctx context.Context, w int) error {
	wk := &t.workers[w]
	// The lines stream in as requests complete: the call is done when
	// the last has come and mqttgw has ended the answer.
	status, err := t.client.post(ctx, w, &wk.answer)
	if err := expectOK(status, err, wk.answer.Bytes()); err != nil {
		return err
	}
	return t.check(wk)
}

// check wants one line per request of the batch, each with status 200
// and the payload echoed; it names the first that is not.
func (t *batchTarget) check(wk *batchWorker) error {
	clear(wk.seen)
	rest := wk.answer.Bytes()
	lines := 0
	for len(rest) > 0 {
		line, after, _ := bytes.Cut(rest, []byte{'\n'})
		rest = after
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		lines++
		l := &wk.line
		*l = batchLine{}
		if err := json.Unmarshal(line, l); err != nil {
			return fmt.Errorf("answer line %d is no JSON result: %v: %.300s", lines, err, line)
		}
		switch {
		case l.Index == nil || *l.Index < 0 || *l.Index >= t.size:
			return fmt.Errorf("answer line %d has no index of a batch of %d: %.300s", lines, t.size, line)
		case wk.seen[*l.Index]:
			return fmt.Errorf("answer line %d repeats index %d", lines, *l.Index)
		case l.Problem != nil || l.Status != http.StatusOK:
			title, detail := "", ""
			if l.Problem != nil {
				title, detail = l.Problem.Title, l.Problem.Detail
			}
			return fmt.Errorf("batch item %d: status %d %s: %s", *l.Index, l.Status, title, detail)
		case l.Payload == nil || l.Encoding != "" || *l.Payload != t.payload:
			return fmt.Errorf("batch item %d: the reply is not the %d-byte payload: %.300s", *l.Index, len(t.payload), line)
		}
		wk.seen[*l.Index] = true
	}
	if lines != t.size {
		return fmt.Errorf("the answer has %d lines for a batch of %d", lines, t.size)
	}
	return nil
}

// close closes the workers' connections.
func (t *batchTarget) close() { t.client.close() }
