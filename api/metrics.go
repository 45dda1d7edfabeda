package api

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the API's Prometheus metrics. No label carries the topic:
// topics are unbounded, and so would be the series.
type metrics struct {
	httpRequests *prometheus.CounterVec
	rpcRequests  *prometheus.CounterVec
	// publishRequests counts POST /publish/... by outcome.
	publishRequests *prometheus.CounterVec
	rpcDuration     prometheus.Histogram
	inflight        prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, s *Server) *metrics {
	m := &metrics{
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqttgw_http_requests_total",
			Help: "HTTP requests by route pattern, method (other for any but the standard ones) and status code.",
		}, []string{"route", "method", "code"}),
		rpcRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqttgw_rpc_requests_total",
			Help: "RPC requests (POST /rpc/...) by outcome: ok, accepted (async), timeout, no_responders, broker_unavailable, overloaded, shutting_down, rejected, bad_reply, reply_too_large, invalid, too_large, unauthorized, forbidden, store_full, key_reused, key_in_flight, ended, client_gone, internal.",
		}, []string{"outcome"}),
		publishRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqttgw_publish_requests_total",
			Help: "Publications (POST /publish/...) by outcome: ok, broker_unavailable, overloaded, shutting_down, rejected, timeout, invalid, too_large, unauthorized, forbidden, client_gone, internal.",
		}, []string{"outcome"}),
		rpcDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mqttgw_rpc_duration_seconds",
			Help: "Time from receiving an RPC request to its answer, in seconds, for requests that passed validation.",
			// From sub-millisecond in-process round trips to the 60s
			// default --max-timeout.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqttgw_rpc_inflight_requests",
			Help: "RPC requests being served now (bounded by --max-inflight).",
		}),
	}
	dropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "mqttgw_dropped_user_properties_total",
		Help: "Reply user properties not sent because they can't be an HTTP header value.",
	}, func() float64 { return float64(s.droppedProperties.Load()) })
	reg.MustRegister(m.httpRequests, m.rpcRequests, m.publishRequests, m.rpcDuration, m.inflight, dropped)
	return m
}

// reqInfo is filled in by handlers for the request log line.
type reqInfo struct {
	topic   string
	outcome string
}

// observed is a request's ResponseWriter as observe sees it: it records
// the status, and carries the request's reqInfo in the request's context.
// One allocation holds both; this runs for every request.
type observed struct {
	http.ResponseWriter
	status int // 0 until the response starts
	info   reqInfo
}

func (o *observed) WriteHeader(code int) {
	// 1xx answers (but 101) are interim: the final status comes later.
	if o.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		o.status = code
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *observed) Write(p []byte) (int, error) {
	if o.status == 0 {
		o.status = http.StatusOK
	}
	return o.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection: flushes,
// deadlines.
func (o *observed) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// Flush is for handlers that assert http.Flusher rather than use a
// ResponseController.
func (o *observed) Flush() {
	_ = http.NewResponseController(o.ResponseWriter).Flush() // http.Flusher has no error to report
}

type observedKey struct{}

// infoOf is the request's reqInfo: a handler's notes for the log line.
func infoOf(r *http.Request) *reqInfo {
	if o, ok := r.Context().Value(observedKey{}).(*observed); ok {
		return &o.info
	}
	return &reqInfo{}
}

// observe counts each request and writes its log line.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		o := &observed{ResponseWriter: w}
		next.ServeHTTP(o, r.WithContext(context.WithValue(r.Context(), observedKey{}, o)))

		status := o.status
		if status == 0 { // nothing written: the client went away
			status = probClientGone.status
		}
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		s.metrics.httpRequests.WithLabelValues(route, methodLabel(r.Method), strconv.Itoa(status)).Inc()
		// Typed attributes, built only when the line is written: this
		// runs for every request.
		if !s.log.Enabled(r.Context(), slog.LevelInfo) {
			return
		}
		attrs := make([]slog.Attr, 0, 8)
		attrs = append(attrs,
			slog.String("method", r.Method),
			slog.String("path", r.URL.EscapedPath()),
			slog.Int("status", status),
			slog.Duration("duration", time.Since(start)),
			slog.String("request_id", s.requestID(r)),
			slog.String("client_ip", s.clientIP(r)),
		)
		if o.info.topic != "" {
			attrs = append(attrs, slog.String("topic", o.info.topic), slog.String("outcome", o.info.outcome))
		}
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
	})
}

// requestID is the client's X-Request-Id, trusted for logs only, or one
// made up: this process's random prefix and a count. It is made only for
// a log line that is written.
func (s *Server) requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" {
		return id
	}
	return s.reqIDPrefix + strconv.FormatUint(s.reqIDs.Add(1), 10)
}

// methodLabel keeps the method label to a fixed set: a method is any
// token a client sends, and each new one would be a series for ever.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}
