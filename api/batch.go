package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/mqttgw/mqttgw/gateway"
)

// batchItem is one request of a batch.
type batchItem struct {
	Topic          string     `json:"topic"`
	Payload        *string    `json:"payload,omitempty"`
	PayloadBase64  *string    `json:"payload_base64,omitempty"`
	ContentType    string     `json:"content_type,omitempty"`
	UserProperties []property `json:"user_properties,omitempty"`
	QoS            *int       `json:"qos,omitempty"`
}

// batchResult is one line of a batch's answer: the reply of item Index,
// or its problem.
type batchResult struct {
	Index       int        `json:"index"`
	Status      int        `json:"status"`
	ContentType string     `json:"content_type,omitempty"`
	Payload     *string    `json:"payload,omitempty"`
	Encoding    string     `json:"payload_encoding,omitempty"`
	Properties  []property `json:"user_properties,omitempty"`
	Problem     *Problem   `json:"problem,omitempty"`
}

// batch publishes many requests from one HTTP call, all at once, and
// answers with their replies as NDJSON in the order they complete. One
// timeout bounds them all; each is authorized on its own topic.
func (s *Server) batch(w http.ResponseWriter, r *http.Request) {
	info := infoOf(r)
	fail, release, ok := s.admit(w, r, info, s.metrics.rpcRequests)
	if !ok {
		return
	}
	defer release()
	owner := ""
	if s.cfg.Auth != nil {
		var err error
		if owner, err = s.cfg.Auth.Identify(r); err != nil {
			fail(err)
			return
		}
	}
	q := r.URL.Query()
	for name := range q {
		if name != "timeout" {
			fail(&badInput{kind: probInvalidParameter, err: fmt.Errorf("%s is not a parameter of /batch; each item says its topic and qos, and timeout bounds the whole batch", name)})
			return
		}
	}
	timeout, err := parseTimeout(q, s.cfg.DefaultTimeout, s.cfg.MaxTimeout)
	if err != nil {
		fail(&badInput{kind: probInvalidParameter, err: err})
		return
	}
	items, err := s.readBatch(w, r)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	results := make(chan batchResult, len(items))
	for i, it := range items {
		go func() { results <- s.batchOne(ctx, r, owner, i, it) }()
	}
	h := w.Header()
	h.Set("Content-Type", ndjsonCT)
	h["X-Content-Type-Options"] = nosniffValue
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	for range items {
		res := <-results
		if err := enc.Encode(res); err != nil {
			// The client is gone: its requests end with ctx.
			cancel()
			continue
		}
		// Write out what has come; wait for more only when nothing has.
		if len(results) == 0 {
			_ = rc.Flush()
		}
	}
	info.outcome = "ok"
	s.metrics.rpcRequests.WithLabelValues("ok").Inc()
}

// readBatch reads the items: an NDJSON body (one item per line) or a JSON
// array, at most --max-body bytes and --max-batch items.
func (s *Server) readBatch(w http.ResponseWriter, r *http.Request) ([]batchItem, error) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != ndjsonCT && mt != "application/json" {
		return nil, &badInput{kind: probInvalidHeader, err: fmt.Errorf("the Content-Type %q is neither application/x-ndjson (one request per line) nor application/json (an array)", r.Header.Get("Content-Type"))}
	}
	if r.ContentLength > s.cfg.MaxBody {
		return nil, &badInput{kind: probBodyTooLarge, err: fmt.Errorf("the batch is %d bytes; at most %d are allowed (--max-body)", r.ContentLength, s.cfg.MaxBody)}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	switch {
	case errors.As(err, new(*http.MaxBytesError)):
		return nil, &badInput{kind: probBodyTooLarge, err: fmt.Errorf("the batch is larger than the %d bytes allowed (--max-body)", s.cfg.MaxBody)}
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, &badInput{kind: probBodyTimeout, err: fmt.Errorf("the body was not received within %s", s.cfg.BodyReadTimeout)}
	case err != nil:
		return nil, fmt.Errorf("reading the batch: %w", err)
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
	var items []batchItem
	if mt == "application/json" {
		if err := json.Unmarshal(body, &items); err != nil {
			return nil, &badInput{kind: probInvalidBatch, err: fmt.Errorf("the body is no JSON array of requests: %v", err)}
		}
	} else {
		for n, line := range strings.Split(string(body), "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			var it batchItem
			if err := json.Unmarshal([]byte(line), &it); err != nil {
				return nil, &badInput{kind: probInvalidBatch, err: fmt.Errorf("line %d is no JSON request: %v", n+1, err)}
			}
			items = append(items, it)
		}
	}
	switch {
	case len(items) == 0:
		return nil, &badInput{kind: probInvalidBatch, err: errors.New("the batch has no requests")}
	case len(items) > s.cfg.MaxBatch:
		return nil, &badInput{kind: probInvalidBatch, err: fmt.Errorf("the batch has %d requests; at most %d are allowed (--max-batch)", len(items), s.cfg.MaxBatch)}
	}
	return items, nil
}

// batchOne runs item i and returns its result line.
func (s *Server) batchOne(ctx context.Context, r *http.Request, owner string, i int, it batchItem) batchResult {
	req, err := s.batchRequest(r, owner, it)
	var reply gateway.Reply
	if err == nil {
		reply, err = s.gw.Request(ctx, req)
	}
	status := 0
	if err == nil {
		status, err = replyStatus(reply)
	}
	if err != nil {
		kind, detail := classify(err)
		return batchResult{Index: i, Status: kind.status, Problem: &Problem{
			Type: ProblemTypeBase + kind.slug, Title: kind.title, Status: kind.status, Detail: detail}}
	}
	ev := newEventDoc(gateway.Event{Reply: reply})
	return batchResult{Index: i, Status: status, ContentType: reply.ContentType, Payload: &ev.Payload,
		Encoding: ev.Encoding, Properties: ev.Properties}
}

// batchRequest checks one item as POST /rpc would its request.
func (s *Server) batchRequest(r *http.Request, owner string, it batchItem) (gateway.Request, error) {
	if err := gateway.CheckTopic(it.Topic, s.cfg.ReservedPrefix); err != nil {
		return gateway.Request{}, &badInput{kind: probInvalidTopic, err: err}
	}
	if s.cfg.Auth != nil {
		if _, err := s.cfg.Auth.Check(r, it.Topic); err != nil {
			return gateway.Request{}, err
		}
	}
	req := gateway.Request{Topic: it.Topic, ContentType: it.ContentType, QoS: s.cfg.DefaultQoS, Owner: owner}
	if it.QoS != nil {
		if *it.QoS < 0 || *it.QoS > 2 {
			return req, &badInput{kind: probInvalidBatch, err: fmt.Errorf("qos %d must be 0, 1 or 2", *it.QoS)}
		}
		req.QoS = byte(*it.QoS)
	}
	switch {
	case it.Payload != nil && it.PayloadBase64 != nil:
		return req, &badInput{kind: probInvalidBatch, err: errors.New("give payload or payload_base64, not both")}
	case it.Payload != nil:
		req.Payload = []byte(*it.Payload)
	case it.PayloadBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*it.PayloadBase64)
		if err != nil {
			return req, &badInput{kind: probInvalidBatch, err: fmt.Errorf("payload_base64 is no standard base64: %v", err)}
		}
		req.Payload = b
	}
	for _, p := range it.UserProperties {
		if p.Key == "" || strings.HasPrefix(p.Key, reservedPropertyPrefix) {
			return req, &badInput{kind: probInvalidBatch, err: fmt.Errorf("user property key %q is empty or starts with %s", p.Key, reservedPropertyPrefix)}
		}
		req.UserProperties = append(req.UserProperties, gateway.UserProperty{Key: p.Key, Value: p.Value})
	}
	return req, nil
}
