package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mqttgw/mqttgw/gateway"
)

// Media types of the streaming answers.
const (
	eventStreamCT = "text/event-stream"
	ndjsonCT      = "application/x-ndjson"
)

// answerMode is how a request wants its replies.
type answerMode int

const (
	modeOne    answerMode = iota // the final reply as the response (or a gather)
	modeSSE                      // Server-Sent Events
	modeNDJSON                   // one JSON object per line
)

// replyMode reads Accept: a stream when it names text/event-stream or
// application/x-ndjson (with a q above 0); anything else, */* included,
// is the one reply. Naming both is refused: the two carry the same
// events, and no choice between them would be the obvious one.
func replyMode(h http.Header) (answerMode, error) {
	mode := modeOne
	for _, line := range h.Values("Accept") {
		for _, r := range strings.Split(line, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(r))
			if err != nil || params["q"] == "0" || params["q"] == "0.0" || params["q"] == "0.00" || params["q"] == "0.000" {
				continue
			}
			var m answerMode
			switch mt {
			case eventStreamCT:
				m = modeSSE
			case ndjsonCT:
				m = modeNDJSON
			default:
				continue
			}
			if mode != modeOne && mode != m {
				return 0, &badInput{kind: probInvalidHeader, err: errors.New("the Accept header names both text/event-stream and application/x-ndjson; ask for one")}
			}
			mode = m
		}
	}
	return mode, nil
}

// parseMany reads ?collect= (checked with the timeout, whose place it
// takes) and ?max-replies=.
func (s *Server) parseMany(q url.Values) (manyReplies, error) {
	m := manyReplies{collect: q.Has("collect")}
	v, err := single(q, "max-replies")
	if err != nil || v == nil {
		return m, err
	}
	n, err := strconv.Atoi(*v)
	if err != nil || n < 1 || n > s.cfg.MaxReplies || (*v)[0] == '+' || (*v)[0] == '0' {
		return m, fmt.Errorf("max-replies %q is not a whole number from 1 to %d (--max-replies)", *v, s.cfg.MaxReplies)
	}
	m.maxReplies = n
	return m, nil
}

// eventDoc is one reply of a stream or a gather, as JSON.
type eventDoc struct {
	Type        string     `json:"type"` // "reply"
	Seq         int        `json:"seq"`
	Final       bool       `json:"final"`
	Status      int        `json:"status"`
	ContentType string     `json:"content_type"`
	Payload     string     `json:"payload"`
	Encoding    string     `json:"payload_encoding,omitempty"` // "base64" when the payload is no UTF-8
	Properties  []property `json:"user_properties"`
	Received    time.Time  `json:"received"`
}

type property struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// endDoc is a stream's closing event.
type endDoc struct {
	Type    string `json:"type"` // "end"
	Reason  string `json:"reason"`
	Replies int    `json:"replies"`
	// Reached is null where the broker doesn't tell.
	Reached *int   `json:"reached"`
	Detail  string `json:"detail,omitempty"`
}

func newEventDoc(ev gateway.Event) eventDoc {
	status, err := replyStatus(ev.Reply)
	if err != nil {
		status = probBadReply.status
	}
	d := eventDoc{Type: "reply", Seq: ev.Seq, Final: ev.Final, Status: status, ContentType: ev.Reply.ContentType,
		Received: ev.Received.UTC(), Properties: make([]property, len(ev.Reply.UserProperties))}
	for i, p := range ev.Reply.UserProperties {
		d.Properties[i] = property{p.Key, p.Value}
	}
	if utf8.Valid(ev.Reply.Payload) {
		d.Payload = string(ev.Reply.Payload)
	} else {
		d.Payload, d.Encoding = base64.StdEncoding.EncodeToString(ev.Reply.Payload), "base64"
	}
	return d
}

func newEndDoc(end gateway.StreamEnd) endDoc {
	d := endDoc{Type: "end", Reason: end.Reason, Replies: end.Replies, Detail: end.Detail}
	if end.Reached >= 0 {
		d.Reached = &end.Reached
	}
	return d
}

// keepaliveInterval keeps proxies from closing a quiet stream: nginx's
// default proxy_read_timeout is 60s.
const keepaliveInterval = 15 * time.Second

// collect answers a request that takes many replies: as a stream of
// events, or gathered into one JSON array.
func (s *Server) collect(w http.ResponseWriter, r *http.Request, req gateway.Request, limit time.Duration, mode answerMode, many manyReplies, fail func(error)) {
	info := infoOf(r)
	if req.IdempotencyKey != "" {
		fail(&badInput{kind: probInvalidHeader, err: errors.New("an Idempotency-Key applies to requests that take one reply, not to streams and gathers")})
		return
	}
	c := gateway.Collect{Window: many.collect, MaxReplies: s.cfg.MaxReplies}
	if many.maxReplies > 0 {
		c.MaxReplies = many.maxReplies
	}
	ctx, cancel := context.WithTimeout(r.Context(), limit)
	defer cancel()
	var sink interface {
		gateway.StreamSink
		finish(gateway.StreamEnd) error
	}
	if mode == modeOne {
		sink = &gatherSink{limit: s.cfg.MaxReply}
	} else {
		c.Keepalive = keepaliveInterval
		sink = &streamSink{w: w, rc: http.NewResponseController(w), sse: mode == modeSSE}
	}
	end, err := s.gw.Stream(ctx, req, c, sink)
	if err != nil {
		fail(err)
		return
	}
	if end.Reason == gateway.EndClientGone {
		// Nothing more can reach the client; a stream has its status
		// line out already.
		info.outcome = probClientGone.outcome
		s.metrics.rpcRequests.WithLabelValues(probClientGone.outcome).Inc()
		return
	}
	if g, ok := sink.(*gatherSink); ok && len(g.events) == 0 {
		fail(noReplies(end, limit-req.WaitForResponder))
		return
	}
	info.outcome = "ok"
	s.metrics.rpcRequests.WithLabelValues("ok").Inc()
	if g, ok := sink.(*gatherSink); ok {
		g.write(w, end)
		return
	}
	_ = sink.finish(end)
}

// noReplies is the problem of a gather that got no reply at all.
func noReplies(end gateway.StreamEnd, window time.Duration) error {
	reached := "an unknown number of subscribers"
	if end.Reached >= 0 {
		reached = fmt.Sprintf("%d subscriber(s)", end.Reached)
	}
	switch end.Reason {
	case gateway.EndShutdown:
		return fmt.Errorf("%w: %s", gateway.ErrClosed, end.Detail)
	case gateway.EndBroker:
		return fmt.Errorf("%w: %s", gateway.ErrNotConnected, end.Detail)
	case gateway.EndTooLarge:
		return fmt.Errorf("%w: %s", gateway.ErrReplyTooLarge, end.Detail)
	case gateway.EndMaxBytes:
		return fmt.Errorf("%w: the first reply alone is larger than a gather may be", gateway.ErrReplyTooLarge)
	}
	return fmt.Errorf("%w: the request reached %s and none replied within %s", gateway.ErrTimeout, reached, window)
}

// gatherSink keeps the replies for one JSON array, at most limit bytes
// of payload and properties in all.
type gatherSink struct {
	limit  int
	bytes  int
	full   bool
	events []eventDoc
}

func (g *gatherSink) Published(int) error { return nil }
func (g *gatherSink) Keepalive() error    { return nil }

func (g *gatherSink) Reply(ev gateway.Event) error {
	n := len(ev.Reply.Payload) + len(ev.Reply.ContentType)
	for _, p := range ev.Reply.UserProperties {
		n += len(p.Key) + len(p.Value)
	}
	if g.bytes+n > g.limit {
		g.full = true
		return gateway.ErrStreamFull
	}
	g.bytes += n
	g.events = append(g.events, newEventDoc(ev))
	return nil
}

func (g *gatherSink) finish(gateway.StreamEnd) error { return nil }

// write answers 200 with the array; why the gather ended, and how many
// subscribers it reached, are in headers.
func (g *gatherSink) write(w http.ResponseWriter, end gateway.StreamEnd) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Gather-End", end.Reason)
	if end.Reached >= 0 {
		h.Set("Gather-Reached", strconv.Itoa(end.Reached))
	}
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(g.events)
}

// streamSink writes each event as it comes, flushed: Server-Sent Events
// or NDJSON.
type streamSink struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	sse bool
}

func (s *streamSink) Published(int) error {
	h := s.w.Header()
	if s.sse {
		h.Set("Content-Type", eventStreamCT)
	} else {
		h.Set("Content-Type", ndjsonCT)
	}
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// nginx buffers proxied responses unless told not to; a stream
	// must reach the client event by event.
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
	return s.rc.Flush()
}

func (s *streamSink) Reply(ev gateway.Event) error {
	return s.event("reply", strconv.Itoa(ev.Seq), newEventDoc(ev))
}

func (s *streamSink) finish(end gateway.StreamEnd) error {
	return s.event("end", "", newEndDoc(end))
}

func (s *streamSink) Keepalive() error {
	var err error
	if s.sse {
		_, err = s.w.Write([]byte(": keep-alive\n\n"))
	} else {
		_, err = s.w.Write([]byte(`{"type":"keepalive"}` + "\n"))
	}
	if err != nil {
		return err
	}
	return s.rc.Flush()
}

// event writes one event and flushes it.
func (s *streamSink) event(name, id string, v any) error {
	js, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var b []byte
	if s.sse {
		b = append(b, "event: "+name+"\n"...)
		if id != "" {
			b = append(b, "id: "+id+"\n"...)
		}
		b = append(b, "data: "...)
		b = append(b, js...)
		b = append(b, "\n\n"...)
	} else {
		b = append(js, '\n')
	}
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	return s.rc.Flush()
}
