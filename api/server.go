// Package api is mqttgw's HTTP face: the chi router, the mapping between
// HTTP requests and MQTT requests, and RFC 9457 problem responses.
package api

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqttgw/mqttgw/gateway"
)

// Requester is what the API needs from the RPC core (gateway.Gateway is
// one). Its methods must be safe to be called concurrently.
type Requester interface {
	// Request publishes req and waits for its reply until req.Deadline
	// (the ?timeout) or until ctx ends (the client went away).
	Request(ctx context.Context, req gateway.Request) (gateway.Reply, error)
	// Publish publishes p without waiting for a reply.
	Publish(ctx context.Context, p gateway.Publication) error
	// Submit publishes req as an async request that may wait until ttl.
	Submit(ctx context.Context, req gateway.Request, ttl time.Duration) (gateway.Record, error)
	// Lookup, Watch and Cancel act on owner's request id.
	Lookup(owner, id string) (gateway.Record, error)
	Watch(ctx context.Context, owner, id string, seen gateway.State) (gateway.Record, error)
	Cancel(owner, id string) (gateway.Record, error)
	// Stream publishes req and hands its replies to sink as they come.
	Stream(ctx context.Context, req gateway.Request, c gateway.Collect, sink gateway.StreamSink) (gateway.StreamEnd, error)
	// Ready returns nil when requests can be served, or why not.
	Ready() error
}

// Config holds the HTTP-side limits and defaults.
type Config struct {
	DefaultTimeout time.Duration // when the request has no ?timeout; default 10s
	MaxTimeout     time.Duration // largest ?timeout a client may ask for; default 60s
	// DefaultQoS applies when the request has no ?qos; default 1: a QoS 1
	// PUBACK tells "no matching subscribers" (0x10) on brokers that send
	// it, so a missing responder is a 503 at once rather than a 504.
	DefaultQoS byte
	MaxBody    int64 // largest request body in bytes; default 1 MiB
	// DefaultTTL applies to an async request without ?ttl; MaxTTL is the
	// largest ?ttl. Defaults 1h and 7 days.
	DefaultTTL, MaxTTL time.Duration
	// ResultTTL is how long a timed-out request's late reply is kept, as
	// the 504 says; the gateway's Config.ResultTTL. Default 10m.
	ResultTTL time.Duration
	// MaxReplies is the most replies a stream or gather takes, and the
	// largest ?max-replies; default 1000.
	MaxReplies int
	// MaxBatch is the most requests one POST /batch may carry; default
	// 1000.
	MaxBatch int
	// MaxReply bounds a gather's replies in all, in bytes, as the
	// gateway bounds each reply; default gateway.DefaultMaxReply.
	MaxReply int
	// ReservedPrefix is the gateways' response prefix, which requests may
	// not publish under. Default gateway.DefaultResponsePrefix.
	ReservedPrefix string
	// MaxInflight bounds the RPC requests served at once; beyond it
	// requests get 503 at once rather than queueing without bound.
	MaxInflight int
	// BodyReadTimeout bounds reading a request body, so that a client
	// trickling its upload can't hold a request slot; default 30s.
	BodyReadTimeout time.Duration
	// TrustedProxies are the proxies whose X-Forwarded-For is believed
	// for the client address in logs.
	TrustedProxies []netip.Prefix
	// Auth, when set, authenticates API keys and authorizes topics on
	// every route that publishes.
	Auth *Authenticator
	// Registerer receives the API's metrics and Gatherer serves /metrics;
	// nil means a private registry.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// DefaultConfig returns the defaults, as the README's configuration table
// lists them.
func DefaultConfig() Config {
	return Config{
		DefaultTimeout:  gateway.DefaultTimeout,
		MaxTimeout:      60 * time.Second,
		DefaultQoS:      1,
		MaxBody:         1 << 20,
		DefaultTTL:      time.Hour,
		MaxTTL:          7 * 24 * time.Hour,
		ResultTTL:       gateway.DefaultResultTTL,
		MaxReplies:      1000,
		MaxBatch:        1000,
		MaxReply:        gateway.DefaultMaxReply,
		ReservedPrefix:  gateway.DefaultResponsePrefix,
		MaxInflight:     DefaultMaxInflight(),
		BodyReadTimeout: 30 * time.Second,
	}
}

// DefaultMaxInflight sizes --max-inflight for this machine: a waiting
// request costs little CPU but a goroutine, its body and a pending entry,
// so the bound grows with the cores that must keep up with the replies.
func DefaultMaxInflight() int {
	return 1024 * runtime.GOMAXPROCS(0)
}

// Validate reports the first setting that can't work.
func (c Config) Validate() error {
	switch {
	case c.MaxTimeout <= 0:
		return fmt.Errorf("max timeout must be positive, not %s", c.MaxTimeout)
	case c.DefaultTimeout <= 0 || c.DefaultTimeout > c.MaxTimeout:
		return fmt.Errorf("timeout %s must be positive and at most the max timeout %s", c.DefaultTimeout, c.MaxTimeout)
	case c.DefaultQoS > 2:
		return fmt.Errorf("qos must be 0, 1 or 2, not %d", c.DefaultQoS)
	case c.MaxTTL < time.Second || c.MaxTTL > maxTTL:
		return fmt.Errorf("max ttl %s must be from 1s to %s", c.MaxTTL, maxTTL)
	case c.DefaultTTL < time.Second || c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("ttl %s must be from 1s to the max ttl %s", c.DefaultTTL, c.MaxTTL)
	case c.MaxBatch < 1:
		return fmt.Errorf("max batch must be at least 1, not %d", c.MaxBatch)
	case c.MaxReplies < 1:
		return fmt.Errorf("max replies must be at least 1, not %d", c.MaxReplies)
	case c.MaxReply < 1:
		return fmt.Errorf("max reply must be positive, not %d", c.MaxReply)
	case c.ResultTTL <= 0:
		return fmt.Errorf("result ttl must be positive, not %s", c.ResultTTL)
	case c.MaxBody <= 0:
		return fmt.Errorf("max body must be positive, not %d", c.MaxBody)
	case c.MaxInflight <= 0:
		return fmt.Errorf("max inflight must be positive, not %d", c.MaxInflight)
	case c.BodyReadTimeout <= 0:
		return fmt.Errorf("body read timeout must be positive, not %s", c.BodyReadTimeout)
	}
	return nil
}

// Server is the HTTP handler of the gateway.
type Server struct {
	log     *slog.Logger
	gw      Requester
	cfg     Config
	handler http.Handler
	mux     *chi.Mux // for the Allow header of 405s
	metrics *metrics
	gather  prometheus.Gatherer

	// draining turns /readyz to 503 while requests are still served.
	draining atomic.Bool
	// inflight counts RPC requests being served, against MaxInflight.
	inflight atomic.Int64
	// droppedProperties counts reply user properties that could not be
	// written as a header value.
	droppedProperties atomic.Uint64
	// reqIDPrefix and reqIDs make up request ids for log lines.
	reqIDPrefix string
	reqIDs      atomic.Uint64
}

// NewServer returns the gateway's HTTP handler. cfg must pass Validate.
func NewServer(logger *slog.Logger, gw Requester, cfg Config) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: logger, gw: gw, cfg: cfg, gather: cfg.Gatherer, reqIDPrefix: rand.Text()[:10] + "-"}
	reg := cfg.Registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, s.gather = r, r
	}
	if s.gather == nil {
		s.gather = prometheus.DefaultGatherer
	}
	s.metrics = newMetrics(reg, s)
	s.handler = s.routes()
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.handler.ServeHTTP(w, r)
}

// Drain makes /readyz answer 503 from now on, while requests are still
// served, so that load balancers stop sending traffic before shutdown.
func (s *Server) Drain() { s.draining.Store(true) }

// DroppedProperties is how many reply user properties could not be sent
// as Mqtt-User-Property headers.
func (s *Server) DroppedProperties() uint64 { return s.droppedProperties.Load() }
