package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqttgw/mqttgw/gateway"
)

// Header names of the HTTP⇄MQTT mapping.
const (
	headerUserProperty = "Mqtt-User-Property"
	// statusProperty is the reply user property a responder sets to choose
	// the HTTP status, as nats micro's Nats-Service-Error-Code does.
	statusProperty = "http-status"
	// reservedPropertyPrefix starts the user properties the gateway
	// itself sets; a request may not set them.
	reservedPropertyPrefix = "mqttgw-"
	rpcPrefix              = "/rpc/"
	publishPrefix          = "/publish/"
)

// rpc publishes the request body on the topic named by the path and
// answers with the reply, or with Prefer: respond-async at once with the
// request's status document.
func (s *Server) rpc(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	info := infoOf(r)
	fail, release, ok := s.admit(w, r, info, s.metrics.rpcRequests)
	if !ok {
		return
	}
	defer release()

	prefs, err := parsePrefer(r.Header)
	if err != nil {
		fail(err)
		return
	}
	mode, err := replyMode(r.Header)
	if err != nil {
		fail(err)
		return
	}
	if mode != modeOne && prefs.respondAsync {
		fail(&badInput{kind: probInvalidHeader, err: errors.New("a stream can't be async: drop Prefer: respond-async, or ask for one reply (Accept)")})
		return
	}
	req, limit, many, err := s.decodeRequest(w, r, info, prefs.respondAsync)
	if err != nil {
		fail(err)
		return
	}
	if prefs.respondAsync {
		s.submit(w, r, req, limit, prefs, fail)
		return
	}
	if mode != modeOne || many.gather() {
		s.collect(w, r, req, limit, mode, many, fail)
		return
	}
	req.Deadline = time.Now().Add(limit)
	reply, err := s.gw.Request(r.Context(), req)
	s.metrics.rpcDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		fail(err)
		return
	}
	if err := s.writeReply(w, reply); err != nil {
		fail(err)
		return
	}
	info.outcome = "ok"
	s.metrics.rpcRequests.WithLabelValues("ok").Inc()
}

var nosniffValue = []string{"nosniff"}

// writeReply answers with a responder's reply: the status from its
// http-status property, its content type, user properties and payload.
// It writes nothing when the reply can't be an HTTP response.
func (s *Server) writeReply(w http.ResponseWriter, reply gateway.Reply) error {
	status, err := replyStatus(reply)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", replyContentType(reply.ContentType))
	// A shared value: a header with a len == cap slice is only ever
	// copied by Add, never written through, and Set replaces it.
	h["X-Content-Type-Options"] = nosniffValue
	for _, p := range reply.UserProperties {
		v := p.Key + "=" + p.Value
		if !httpguts.ValidHeaderFieldValue(v) {
			// A CR/LF here would split the response; never write it raw.
			s.droppedProperties.Add(1)
			s.log.Debug("dropped reply user property that is no valid header value", "key", p.Key)
			continue
		}
		h.Add(headerUserProperty, v)
	}
	h.Set("Content-Length", strconv.Itoa(len(reply.Payload)))
	w.WriteHeader(status)
	_, _ = w.Write(reply.Payload)
	return nil
}

// admit counts a request against --max-inflight, and returns how to fail
// it (the problem written, its outcome logged and counted in outcomes) and
// how to release its slot. Beyond the bound it is refused at once, before
// anything is read, and ok is false: queueing without bound would turn
// overload into timeouts for everyone.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, info *reqInfo, outcomes *prometheus.CounterVec) (fail func(error), release func(), ok bool) {
	fail = func(err error) {
		kind := s.writeError(w, r, err)
		info.outcome = kind.outcome
		outcomes.WithLabelValues(kind.outcome).Inc()
	}
	if s.inflight.Add(1) > int64(s.cfg.MaxInflight) {
		s.inflight.Add(-1)
		fail(errOverloaded)
		return nil, nil, false
	}
	s.metrics.inflight.Inc()
	return fail, func() {
		s.inflight.Add(-1)
		s.metrics.inflight.Dec()
	}, true
}

// manyReplies are the query parameters of a request that takes many
// replies.
type manyReplies struct {
	collect    bool // ?collect= given: gather until then
	maxReplies int  // ?max-replies=, 0 when not given
}

// gather reports whether a plain request asks for many replies.
func (m manyReplies) gather() bool { return m.collect || m.maxReplies > 0 }

// decodeRequest maps an HTTP request to a gateway request and its
// timeout, or for an async request its TTL, or for one that collects
// replies its window. Each takes only its own parameters: a timeout on an
// async request would be silently ignored.
func (s *Server) decodeRequest(w http.ResponseWriter, r *http.Request, info *reqInfo, async bool) (gateway.Request, time.Duration, manyReplies, error) {
	var limit, wait time.Duration
	var many manyReplies
	m, err := s.decode(w, r, info, rpcPrefix, func(q url.Values) (err error) {
		if async {
			for _, name := range []string{"timeout", "wait-for-responder", "collect", "max-replies"} {
				if q.Has(name) {
					return fmt.Errorf("%s applies to synchronous requests; an async request (Prefer: respond-async) waits for a responder and its reply until its ttl", name)
				}
			}
			limit, err = parseDuration(q, "ttl", s.cfg.DefaultTTL, time.Second, s.cfg.MaxTTL)
			return err
		}
		if q.Has("ttl") {
			return errors.New("ttl applies to async requests (Prefer: respond-async); a synchronous request takes timeout")
		}
		if many, err = s.parseMany(q); err != nil {
			return err
		}
		if many.collect {
			// The window is the request's deadline.
			if q.Has("timeout") {
				return errors.New("give collect or timeout, not both: collect is how long replies are gathered")
			}
			limit, err = parseDuration(q, "collect", 0, MinTimeout, s.cfg.MaxTimeout)
		} else {
			limit, err = parseTimeout(q, s.cfg.DefaultTimeout, s.cfg.MaxTimeout)
		}
		if err != nil {
			return err
		}
		wait, err = parseDuration(q, "wait-for-responder", 0, 0, s.cfg.MaxTimeout)
		if err == nil && limit+wait > s.cfg.MaxTimeout {
			// No request is held longer than --max-timeout, which
			// proxies in front and the server's write deadline are
			// sized for.
			name := "timeout"
			if many.collect {
				name = "collect"
			}
			err = fmt.Errorf("%s %s plus wait-for-responder %s is above the maximum of %s", name, limit, wait, s.cfg.MaxTimeout)
		}
		return err
	})
	if err != nil {
		return gateway.Request{}, 0, many, err
	}
	if async && m.qos == 0 {
		// A broker keeps no QoS 0 message for an offline session: the
		// request would be "published" to a sleeping device and lost.
		return gateway.Request{}, 0, many, &badInput{kind: probInvalidParameter, err: errors.New("qos 0 can't wait in an offline device's session; an async request takes qos 1 or 2")}
	}
	key, err := idempotencyKey(r.Header)
	if err != nil {
		return gateway.Request{}, 0, many, &badInput{kind: probInvalidHeader, err: err}
	}
	req := gateway.Request{
		Topic:            m.topic,
		Payload:          m.body,
		ContentType:      m.contentType,
		UserProperties:   m.props,
		QoS:              m.qos,
		WaitForResponder: wait,
		Owner:            m.owner,
		IdempotencyKey:   key,
	}
	if key != "" {
		req.Fingerprint = fingerprint(&req, async)
	}
	// The wait for a responder comes before, and on top of, the wait for
	// the reply.
	return req, limit + wait, many, nil
}

// message is what /rpc and /publish take from an HTTP request alike.
type message struct {
	owner       string // the API key's name; "" without auth
	topic       string
	body        []byte
	contentType string
	props       []gateway.UserProperty
	qos         byte
}

// decode reads the topic after prefix, authorizes it, and reads qos, the
// user properties, the body, and the route's own query parameters with
// params. Cheap checks come first, so a bad topic is refused before a
// large body is read.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, info *reqInfo, prefix string, params func(url.Values) error) (message, error) {
	var m message
	topic, err := decodeTopic(r.URL.EscapedPath(), prefix)
	if err == nil {
		err = gateway.CheckTopic(topic, s.cfg.ReservedPrefix)
	}
	if err != nil {
		return m, &badInput{kind: probInvalidTopic, err: err}
	}
	info.topic, m.topic = topic, topic
	if s.cfg.Auth != nil {
		if m.owner, err = s.cfg.Auth.Check(r, topic); err != nil {
			return m, err
		}
	}
	q := r.URL.Query()
	if err := params(q); err != nil {
		return m, &badInput{kind: probInvalidParameter, err: err}
	}
	if m.qos, err = parseQoS(q, s.cfg.DefaultQoS); err != nil {
		return m, &badInput{kind: probInvalidParameter, err: err}
	}
	if m.props, err = userProperties(r.Header); err != nil {
		return m, &badInput{kind: probInvalidHeader, err: err}
	}
	m.contentType = r.Header.Get("Content-Type")
	if r.ContentLength > s.cfg.MaxBody {
		return m, &badInput{kind: probBodyTooLarge, err: fmt.Errorf("the body is %d bytes; at most %d are allowed", r.ContentLength, s.cfg.MaxBody)}
	}
	// guardBody set a deadline for the body when the request came in;
	// lift it for the wait for the broker and the reply, which have
	// their own.
	m.body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err == nil {
		_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
		return m, nil
	}
	if errors.As(err, new(*http.MaxBytesError)) {
		return m, &badInput{kind: probBodyTooLarge, err: fmt.Errorf("the body is larger than the %d bytes allowed", s.cfg.MaxBody)}
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return m, &badInput{kind: probBodyTimeout, err: fmt.Errorf("the body was not received within %s", s.cfg.BodyReadTimeout)}
	}
	return m, fmt.Errorf("reading the request body: %w", err)
}

// decodeTopic takes the topic from the escaped path and decodes it exactly
// once, so that %2F is a level separator and %2B a literal '+' (which
// CheckTopic then refuses). chi's own "*" parameter is sometimes decoded
// and sometimes not, so it is not used.
func decodeTopic(escapedPath, prefix string) (string, error) {
	raw, ok := strings.CutPrefix(escapedPath, prefix)
	if !ok {
		return "", fmt.Errorf("path %q does not start with %s", escapedPath, prefix)
	}
	topic, err := url.PathUnescape(raw)
	if err != nil {
		return "", fmt.Errorf("topic is not correctly percent-encoded: %w", err)
	}
	return topic, nil
}

// MinTimeout is the shortest ?timeout a client may ask for: below it a
// request could only time out, after being published all the same.
const MinTimeout = time.Millisecond

// parseTimeout reads ?timeout as a Go duration ("1.5s", "500ms") or plain
// seconds ("2", "0.5"), from MinTimeout to max.
func parseTimeout(q url.Values, def, max time.Duration) (time.Duration, error) {
	return parseDuration(q, "timeout", def, MinTimeout, max)
}

// parseDuration reads query parameter name as a Go duration or plain
// seconds, from min to max. Only the canonical forms are taken: no sign,
// no exponent, no '_' between digits ("1_0" would be 10 to strconv), so
// that a value means what it reads as.
func parseDuration(q url.Values, name string, def, min, max time.Duration) (time.Duration, error) {
	v, err := single(q, name)
	if err != nil || v == nil {
		return def, err
	}
	var d time.Duration
	switch plain, ok := canonicalDuration(*v); {
	case !ok:
		return 0, fmt.Errorf("%s %q is not a duration such as 1.5s or 500ms, nor a number of seconds such as 2 or 0.5, from %s to %s", name, *v, min, max)
	case plain:
		secs, ferr := strconv.ParseFloat(*v, 64)
		if ferr != nil || secs > max.Seconds() {
			return 0, fmt.Errorf("%s %q is above the maximum of %s", name, *v, max)
		}
		d = time.Duration(secs * float64(time.Second))
	default:
		// The form is right, so ParseDuration can only fail on a
		// duration too large for time.Duration ("9999999h").
		if d, err = time.ParseDuration(*v); err != nil {
			return 0, fmt.Errorf("%s %q is above the maximum of %s", name, *v, max)
		}
	}
	switch {
	case d < min:
		return 0, fmt.Errorf("%s %q is below the minimum of %s", name, *v, min)
	case d > max:
		return 0, fmt.Errorf("%s %q is above the maximum of %s", name, *v, max)
	}
	return d, nil
}

// canonicalDuration reports whether v is plain seconds, digits with an
// optional fraction ("2", "0.5"), or else a Go duration made of such
// numbers each with a unit ("1.5s", "1m30s"); ok is false for anything
// else, a sign, an exponent or a '_' included.
func canonicalDuration(v string) (plain, ok bool) {
	number := func() bool {
		i := 0
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
		}
		if i == 0 {
			return false
		}
		if i < len(v) && v[i] == '.' {
			j := i + 1
			for j < len(v) && v[j] >= '0' && v[j] <= '9' {
				j++
			}
			if j == i+1 {
				return false
			}
			i = j
		}
		v = v[i:]
		return true
	}
	if !number() {
		return false, false
	}
	if v == "" {
		return true, true
	}
	for {
		unit := ""
		for _, u := range durationUnits {
			if strings.HasPrefix(v, u) {
				unit = u
				break
			}
		}
		if unit == "" {
			return false, false
		}
		if v = v[len(unit):]; v == "" {
			return false, true
		}
		if !number() {
			return false, false
		}
	}
}

// durationUnits are time.ParseDuration's, longer ones before their
// prefixes ("ms" before "m").
var durationUnits = []string{"ns", "us", "µs", "μs", "ms", "s", "m", "h"}

// parseQoS reads ?qos: 0, 1 or 2.
func parseQoS(q url.Values, def byte) (byte, error) {
	v, err := single(q, "qos")
	if err != nil || v == nil {
		return def, err
	}
	switch *v {
	case "0", "1", "2":
		return (*v)[0] - '0', nil
	}
	return 0, fmt.Errorf("qos %q must be 0, 1 or 2", *v)
}

// single returns the one value of query parameter name, nil when absent,
// or an error when it is given twice: neither choice would be obvious.
func single(q url.Values, name string) (*string, error) {
	vs, ok := q[name]
	switch {
	case !ok:
		return nil, nil
	case len(vs) > 1:
		return nil, fmt.Errorf("%s is given %d times; give it once", name, len(vs))
	}
	return &vs[0], nil
}

// userProperties maps each Mqtt-User-Property header, in order, to one
// user property, split at the first '='.
func userProperties(h http.Header) ([]gateway.UserProperty, error) {
	vs := h.Values(headerUserProperty)
	if len(vs) == 0 {
		return nil, nil
	}
	props := make([]gateway.UserProperty, 0, len(vs))
	for _, v := range vs {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q must be key=value with a non-empty key", headerUserProperty, v)
		}
		if strings.HasPrefix(k, reservedPropertyPrefix) {
			return nil, fmt.Errorf("%s %q: keys starting with %s are the gateway's own", headerUserProperty, v, reservedPropertyPrefix)
		}
		props = append(props, gateway.UserProperty{Key: k, Value: val})
	}
	return props, nil
}

// replyStatus is the HTTP status the responder asked for with the
// http-status user property, or 200.
func replyStatus(reply gateway.Reply) (int, error) {
	for _, p := range reply.UserProperties {
		if p.Key != statusProperty {
			continue
		}
		code, err := strconv.Atoi(p.Value)
		// Three plain digits: Atoi alone would take "+201" or "0201".
		if err != nil || len(p.Value) != 3 || p.Value[0] < '0' || p.Value[0] > '9' || code < 200 || code > 599 {
			return 0, errBadReply{fmt.Sprintf("the responder's %s %q is not an integer from 200 to 599", statusProperty, p.Value)}
		}
		return code, nil
	}
	return http.StatusOK, nil
}

// replyContentType is the reply's Content Type, or octet-stream when it has
// none or one that can't be a header value.
func replyContentType(ct string) string {
	if ct == "" || !httpguts.ValidHeaderFieldValue(ct) {
		return "application/octet-stream"
	}
	return ct
}
