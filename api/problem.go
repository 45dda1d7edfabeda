package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/mqttgw/mqttgw/gateway"
)

// problemKind is one entry of the error table: an RFC 9457 problem type
// with its status. openapi.yaml lists the same types.
type problemKind struct {
	slug   string
	title  string
	status int
	// retry is the Retry-After in seconds, for 503s that a retry can cure
	// soon; 0 means no header.
	retry int
	// outcome labels mqttgw_rpc_requests_total.
	outcome string
}

// ProblemTypeBase prefixes every problem type's slug to make its URI.
const ProblemTypeBase = "urn:mqttgw:problem:"

var (
	probInvalidTopic      = problemKind{"invalid-topic", "Invalid topic", http.StatusBadRequest, 0, "invalid"}
	probInvalidParameter  = problemKind{"invalid-parameter", "Invalid query parameter", http.StatusBadRequest, 0, "invalid"}
	probInvalidHeader     = problemKind{"invalid-header", "Invalid header", http.StatusBadRequest, 0, "invalid"}
	probInvalidBatch      = problemKind{"invalid-batch", "Invalid batch", http.StatusBadRequest, 0, "invalid"}
	probUnauthorized      = problemKind{"unauthorized", "Unauthorized", http.StatusUnauthorized, 0, "unauthorized"}
	probForbidden         = problemKind{"forbidden", "Forbidden", http.StatusForbidden, 0, "forbidden"}
	probBodyTimeout       = problemKind{"body-timeout", "Request body too slow", http.StatusRequestTimeout, 0, "invalid"}
	probBodyTooLarge      = problemKind{"body-too-large", "Request body too large", http.StatusRequestEntityTooLarge, 0, "too_large"}
	probNotFound          = problemKind{"not-found", "Not found", http.StatusNotFound, 0, ""}
	probMethodNotAllowed  = problemKind{"method-not-allowed", "Method not allowed", http.StatusMethodNotAllowed, 0, ""}
	probBrokerRejected    = problemKind{"broker-rejected", "Broker rejected the request", http.StatusBadGateway, 0, "rejected"}
	probBadReply          = problemKind{"bad-reply", "Malformed reply", http.StatusBadGateway, 0, "bad_reply"}
	probReplyTooLarge     = problemKind{"reply-too-large", "Reply too large", http.StatusBadGateway, 0, "reply_too_large"}
	probNoResponders      = problemKind{"no-responders", "No responders", http.StatusServiceUnavailable, 0, "no_responders"}
	probBrokerUnavailable = problemKind{"broker-unavailable", "Broker unavailable", http.StatusServiceUnavailable, 1, "broker_unavailable"}
	probOverloaded        = problemKind{"overloaded", "Gateway overloaded", http.StatusServiceUnavailable, 1, "overloaded"}
	probShuttingDown      = problemKind{"shutting-down", "Gateway shutting down", http.StatusServiceUnavailable, 1, "shutting_down"}
	probTimeout           = problemKind{"timeout", "No reply in time", http.StatusGatewayTimeout, 0, "timeout"}
	probInternal          = problemKind{"internal", "Internal error", http.StatusInternalServerError, 0, "internal"}
	probRequestNotFound   = problemKind{"request-not-found", "No such request", http.StatusNotFound, 0, "not_found"}
	probNotAnswered       = problemKind{"not-answered", "Request not answered", http.StatusConflict, 0, "not_answered"}
	probRequestEnded      = problemKind{"request-ended", "Request already ended", http.StatusConflict, 0, "ended"}
	probStoreFull         = problemKind{"store-full", "Request store full", http.StatusServiceUnavailable, 5, "store_full"}
	probKeyReused         = problemKind{"idempotency-key-reused", "Idempotency key reused", http.StatusUnprocessableEntity, 0, "key_reused"}
	probKeyInFlight       = problemKind{"idempotency-key-in-flight", "Idempotency key in flight", http.StatusConflict, 0, "key_in_flight"}
	// probClientGone is only logged: the client has hung up and will never
	// read it. 499 is nginx's "client closed request".
	probClientGone = problemKind{"client-closed-request", "Client closed request", 499, 0, "client_gone"}
)

// errOverloaded is a request beyond --max-inflight.
var errOverloaded = errors.New("api: overloaded")

// Problem is an RFC 9457 problem details object. A timeout whose late
// reply will be kept names the request (extension members).
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	ID       string `json:"id,omitempty"`
	Location string `json:"location,omitempty"`
}

// badInput is a request the gateway refuses before sending anything.
type badInput struct {
	kind problemKind
	err  error
}

func (e *badInput) Error() string { return e.err.Error() }
func (e *badInput) Unwrap() error { return e.err }

// errBadReply is a reply that can't be turned into an HTTP response.
type errBadReply struct{ detail string }

func (e errBadReply) Error() string { return e.detail }

// classify maps an error to its problem kind and the detail shown to the
// client: the one table of error statuses.
func classify(err error) (problemKind, string) {
	var bad *badInput
	var invalid *gateway.InvalidError
	var rejected *gateway.PublishError
	var badReply errBadReply
	switch {
	case errors.As(err, &bad):
		return bad.kind, bad.err.Error()
	case errors.Is(err, ErrUnauthorized):
		return probUnauthorized, authDetail(err)
	case errors.Is(err, ErrForbidden):
		return probForbidden, authDetail(err)
	case errors.Is(err, errOverloaded):
		return probOverloaded, "the gateway serves as many requests as --max-inflight allows; retry shortly"
	case errors.As(err, &invalid):
		kind := probInvalidHeader
		switch invalid.Field {
		case gateway.FieldTopic:
			kind = probInvalidTopic
		case gateway.FieldQoS:
			kind = probInvalidParameter
		}
		return kind, string(invalid.Field) + ": " + invalid.Reason
	case errors.Is(err, gateway.ErrTooLarge):
		return probBodyTooLarge, err.Error()
	case errors.Is(err, gateway.ErrNoResponders):
		// After a wait for a responder, the gateway says how long.
		if d, ok := strings.CutPrefix(err.Error(), gateway.ErrNoResponders.Error()+": "); ok {
			return probNoResponders, d
		}
		return probNoResponders, "no MQTT client is subscribed to the topic"
	case errors.Is(err, gateway.ErrNotConnected):
		return probBrokerUnavailable, err.Error()
	case errors.Is(err, gateway.ErrClosed):
		return probShuttingDown, "the gateway is shutting down; retry on another replica"
	case errors.Is(err, gateway.ErrTimeout):
		return probTimeout, err.Error()
	case errors.Is(err, gateway.ErrRecordNotFound):
		return probRequestNotFound, "no such request for this API key; records are kept for --result-ttl after they end"
	case errors.Is(err, gateway.ErrRecordFinal):
		return probRequestEnded, err.Error()
	case errors.Is(err, gateway.ErrStoreFull):
		return probStoreFull, err.Error() + " (--max-records, --max-record-bytes); retry later"
	case errors.Is(err, gateway.ErrIdempotencyMismatch):
		return probKeyReused, err.Error() + "; a key names one request: use a new key for a new request"
	case errors.Is(err, gateway.ErrIdempotencyInFlight):
		return probKeyInFlight, err.Error() + "; the first request with this key is still waiting for its reply: retry after it ends"
	case errors.As(err, &rejected):
		return probBrokerRejected, rejected.Error()
	case errors.As(err, &badReply):
		return probBadReply, badReply.detail
	case errors.Is(err, gateway.ErrReplyTooLarge):
		return probReplyTooLarge, err.Error() + " (--max-reply)"
	case errors.Is(err, context.Canceled):
		return probClientGone, "the client closed the request"
	}
	// Internal details go to the log, not to the client.
	return probInternal, "the gateway failed to handle the request; see its log"
}

// authDetail is what the client may see of an authentication failure.
func authDetail(err error) string {
	var ae *AuthError
	if errors.As(err, &ae) && ae.Detail != "" {
		return ae.Detail
	}
	return err.Error()
}

// writeError answers with the problem for err, and returns its kind.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) problemKind {
	kind, detail := classify(err)
	switch kind {
	case probInternal, probBrokerRejected, probBadReply, probReplyTooLarge:
		// Worth an operator's look; the other failures are states the
		// request log line already shows.
		s.log.Warn("request failed", "path", r.URL.EscapedPath(), "status", kind.status, "error", err)
	}
	p := Problem{Detail: detail}
	if id, ok := timeoutLocation(err); ok {
		p.ID, p.Location = id, requestsPrefix+id
		p.Detail += fmt.Sprintf("; a reply that arrives later is kept at %s for %s", p.Location, s.cfg.ResultTTL)
		w.Header().Set("Location", p.Location)
	}
	s.writeProblemDoc(w, kind, p)
	return kind
}

func (s *Server) writeProblem(w http.ResponseWriter, kind problemKind, detail string) {
	s.writeProblemDoc(w, kind, Problem{Detail: detail})
}

// writeProblemDoc writes p, with kind's type, title and status.
func (s *Server) writeProblemDoc(w http.ResponseWriter, kind problemKind, p Problem) {
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("X-Content-Type-Options", "nosniff")
	if kind.retry > 0 {
		h.Set("Retry-After", fmt.Sprint(kind.retry))
	}
	if kind == probUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="mqttgw"`)
	}
	w.WriteHeader(kind.status)
	p.Type, p.Title, p.Status = ProblemTypeBase+kind.slug, kind.title, kind.status
	_ = json.NewEncoder(w).Encode(p)
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	s.writeProblem(w, probNotFound, fmt.Sprintf("no route for %s; requests go to POST /rpc/{topic}", r.URL.EscapedPath()))
}

// methodNotAllowed answers 405 with the Allow header RFC 9110 §15.5.6
// requires; chi sets it only in its own default handler.
func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if s.mux.Match(chi.NewRouteContext(), m, r.URL.Path) {
			allowed = append(allowed, m)
		}
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	s.writeProblem(w, probMethodNotAllowed, fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, r.URL.EscapedPath(), strings.Join(allowed, " or ")))
}
