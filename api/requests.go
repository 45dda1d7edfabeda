package api

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/mqttgw/mqttgw/gateway"
)

const requestsPrefix = "/requests/"

// statusDoc is the JSON status document of a request, as POST with
// Prefer: respond-async, GET and DELETE /requests/{id} answer it.
type statusDoc struct {
	ID       string     `json:"id"`
	Topic    string     `json:"topic"`
	State    string     `json:"state"`
	Async    bool       `json:"async"`
	Created  time.Time  `json:"created"`
	Expires  time.Time  `json:"expires"`
	Updated  time.Time  `json:"updated"`
	Location string     `json:"location"`
	Reply    *replyInfo `json:"reply,omitempty"`
	Error    string     `json:"error,omitempty"`
}

// replyInfo describes a stored reply; its content is at Location.
type replyInfo struct {
	Status      int    `json:"status"`
	ContentType string `json:"content_type"`
	Bytes       int    `json:"bytes"`
	Location    string `json:"location"`
}

func newStatusDoc(rec gateway.Record) statusDoc {
	loc := requestsPrefix + rec.ID
	d := statusDoc{
		ID: rec.ID, Topic: rec.Topic, State: rec.State.String(), Async: rec.Async,
		// Milliseconds, as records travel between replicas: every
		// replica shows the same document.
		Created: rec.Created.UTC().Truncate(time.Millisecond), Expires: rec.Expires.UTC().Truncate(time.Millisecond),
		Updated:  rec.Updated.UTC().Truncate(time.Millisecond),
		Location: loc, Error: rec.Error,
	}
	if rec.State == gateway.StateAnswered && rec.Reply != nil {
		status, err := replyStatus(*rec.Reply)
		if err != nil {
			status = probBadReply.status
		}
		d.Reply = &replyInfo{Status: status, ContentType: replyContentType(rec.Reply.ContentType), Bytes: len(rec.Reply.Payload), Location: loc + "/reply"}
	}
	return d
}

func writeStatus(w http.ResponseWriter, status int, rec gateway.Record, applied []string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if len(applied) > 0 {
		h.Set("Preference-Applied", strings.Join(applied, ", "))
	}
	if status == http.StatusAccepted {
		h.Set("Location", requestsPrefix+rec.ID)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(newStatusDoc(rec))
}

// submit publishes an async request and answers 202 with its status
// document; with Prefer: wait=N, after up to N seconds in which it may
// have ended.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, req gateway.Request, ttl time.Duration, prefs preferences, fail func(error)) {
	info := infoOf(r)
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.DefaultTimeout)
	rec, err := s.gw.Submit(ctx, req, ttl)
	cancel()
	if err != nil {
		fail(err)
		return
	}
	applied := []string{"respond-async"}
	if prefs.wait > 0 {
		wait := min(prefs.wait, s.cfg.MaxTimeout)
		rec = s.waitForEnd(r.Context(), rec, req.Owner, wait)
		applied = append(applied, "wait="+strconv.Itoa(int(wait/time.Second)))
	}
	info.outcome = "accepted"
	s.metrics.rpcRequests.WithLabelValues("accepted").Inc()
	writeStatus(w, http.StatusAccepted, rec, applied)
}

// waitForEnd waits up to d for rec to reach a final state.
func (s *Server) waitForEnd(ctx context.Context, rec gateway.Record, owner string, d time.Duration) gateway.Record {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for !rec.State.Final() && ctx.Err() == nil {
		next, err := s.gw.Watch(ctx, owner, rec.ID, rec.State)
		if err != nil {
			break
		}
		rec = next
	}
	return rec
}

// requestOwner authenticates a /requests call: without --auth-file
// everyone is "", else the API key's name. A record is only ever shown to
// the key that made it.
func (s *Server) requestOwner(r *http.Request) (string, error) {
	if s.cfg.Auth == nil {
		return "", nil
	}
	return s.cfg.Auth.Identify(r)
}

// requestID reads {id}; a malformed one is as unknown as any other.
func requestID(r *http.Request) (string, error) {
	id := chi.URLParam(r, "id")
	if u, err := uuid.Parse(id); err != nil || len(id) != 36 || u.String() != id {
		return "", &badInput{kind: probRequestNotFound, err: fmt.Errorf("%q is not a request id: ids look like 0d1c5a3e-8f55-4a52-9b0e-2f6a3d7c9e41", id)}
	}
	return id, nil
}

// caller is who asks for {id}, and the id.
func (s *Server) caller(r *http.Request) (owner, id string, err error) {
	if owner, err = s.requestOwner(r); err != nil {
		return "", "", err
	}
	id, err = requestID(r)
	return owner, id, err
}

// lookup is the record {id} of the caller.
func (s *Server) lookup(r *http.Request) (owner string, rec gateway.Record, err error) {
	owner, id, err := s.caller(r)
	if err != nil {
		return "", rec, err
	}
	rec, err = s.gw.Lookup(owner, id)
	return owner, rec, err
}

// getRequest answers the status document of {id}; with Prefer: wait=N
// it first waits up to N seconds for the state to change.
func (s *Server) getRequest(w http.ResponseWriter, r *http.Request) {
	owner, rec, err := s.lookup(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	prefs, err := parsePrefer(r.Header)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var applied []string
	if prefs.wait > 0 && !rec.State.Final() {
		wait := min(prefs.wait, s.cfg.MaxTimeout)
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		rec, err = s.gw.Watch(ctx, owner, rec.ID, rec.State)
		cancel()
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		applied = []string{"wait=" + strconv.Itoa(int(wait/time.Second))}
	}
	writeStatus(w, http.StatusOK, rec, applied)
}

// cancelRequest cancels {id} and answers its status document.
func (s *Server) cancelRequest(w http.ResponseWriter, r *http.Request) {
	owner, id, err := s.caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rec, err := s.gw.Cancel(owner, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeStatus(w, http.StatusOK, rec, nil)
}

// getReply answers the stored reply exactly as the synchronous call would
// have.
func (s *Server) getReply(w http.ResponseWriter, r *http.Request) {
	_, rec, err := s.lookup(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if rec.State != gateway.StateAnswered || rec.Reply == nil {
		detail := fmt.Sprintf("request %s is %s; GET %s%s with Prefer: wait=N waits for its reply", rec.ID, rec.State, requestsPrefix, rec.ID)
		if rec.State.Final() {
			detail = fmt.Sprintf("request %s is %s and has no reply", rec.ID, rec.State)
			if rec.Error != "" {
				detail += ": " + rec.Error
			}
		}
		s.writeProblem(w, probNotAnswered, detail)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if err := s.writeReply(w, *rec.Reply); err != nil {
		w.Header().Del("Cache-Control")
		s.writeError(w, r, err)
	}
}

// preferences are the RFC 7240 preferences mqttgw honours.
type preferences struct {
	respondAsync bool
	wait         time.Duration
}

// parsePrefer reads every Prefer header. Preferences it doesn't know are
// ignored, as RFC 7240 §2 says; a known one with a malformed value is an
// error, since ignoring it would do something the client did not ask.
func parsePrefer(h http.Header) (preferences, error) {
	var p preferences
	for _, line := range h.Values("Prefer") {
		for _, pref := range strings.Split(line, ",") {
			// Parameters after ';' belong to the preference; none of
			// ours has any.
			pref, _, _ = strings.Cut(pref, ";")
			name, value, hasValue := strings.Cut(strings.TrimSpace(pref), "=")
			name = strings.ToLower(strings.TrimSpace(name))
			value = strings.Trim(strings.TrimSpace(value), `"`)
			switch name {
			case "respond-async":
				p.respondAsync = true
			case "wait":
				n, err := strconv.ParseUint(value, 10, 31)
				if !hasValue || err != nil || value[0] == '+' {
					return p, &badInput{kind: probInvalidHeader, err: fmt.Errorf("the preference wait=%q in Prefer is not a number of seconds such as wait=10", value)}
				}
				p.wait = time.Duration(n) * time.Second
			}
		}
	}
	return p, nil
}

// maxIdempotencyKey bounds the Idempotency-Key header's value.
const maxIdempotencyKey = 255

// idempotencyKey reads the Idempotency-Key header: a Structured Field
// string as the IETF httpapi draft has it ("..."), or for convenience the
// bare value; "" when absent.
func idempotencyKey(h http.Header) (string, error) {
	vs := h.Values("Idempotency-Key")
	switch {
	case len(vs) == 0:
		return "", nil
	case len(vs) > 1:
		return "", fmt.Errorf("the Idempotency-Key header is given %d times; give it once", len(vs))
	}
	v := strings.TrimSpace(vs[0])
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if v == "" || len(v) > maxIdempotencyKey {
		return "", fmt.Errorf("the Idempotency-Key header must be 1 to %d characters", maxIdempotencyKey)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return "", errors.New(`the Idempotency-Key header must be printable ASCII without spaces, quotes or backslashes, such as "8e03978e-40d5-43e8-bc93-6894a57f9324"`)
		}
	}
	return v, nil
}

// fingerprint hashes what a request publishes, and whether it is async,
// so that a repeat under an idempotency key can be told from a different
// request. Each field is length-prefixed, so no two requests hash alike
// by shifting bytes between fields.
func fingerprint(req *gateway.Request, async bool) string {
	h := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte{boolByte(async), req.QoS})
	field([]byte(req.Topic))
	field([]byte(req.ContentType))
	for _, p := range req.UserProperties {
		field([]byte(p.Key))
		field([]byte(p.Value))
	}
	field(req.Payload)
	return hex.EncodeToString(h.Sum(nil))
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// timeoutLocation is the record a timed-out request's late reply is kept
// in, if any.
func timeoutLocation(err error) (id string, ok bool) {
	var te *gateway.TimeoutError
	if errors.As(err, &te) && te.Kept {
		return te.ID, true
	}
	return "", false
}
