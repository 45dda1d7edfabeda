package api

// These tests hold openapi.yaml to the code: the routes must be the chi
// router's, every problem type of problem.go must be listed with its
// status, and live responses of every kind must validate against it.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/go-chi/chi/v5"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

const (
	specFile      = "../openapi.yaml"
	specRPCPath   = "/rpc/{topic}"
	problemCT     = "application/problem+json"
	plainTextCT   = "text/plain; charset=utf-8"
	octetStreamCT = "application/octet-stream"
)

// loadSpec loads and validates openapi.yaml.
func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(specFile)
	if err != nil {
		t.Fatalf("loading %s: %v", specFile, err)
	}
	if doc.OpenAPI != "3.1.0" || !doc.IsOpenAPI31OrLater() {
		t.Fatalf("%s is OpenAPI %q, want 3.1.0", specFile, doc.OpenAPI)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("%s is not a valid OpenAPI document: %v", specFile, err)
	}
	return doc
}

// newLocalServer serves h on 127.0.0.1 only.
func newLocalServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestOpenAPIRoutesMatchRouter(t *testing.T) {
	doc := loadSpec(t)
	s := NewServer(nil, &fakeGateway{}, DefaultConfig())
	mux, ok := s.routes().(chi.Routes)
	if !ok {
		t.Fatalf("routes() is a %T, not a chi.Routes", s.routes())
	}
	inRouter := map[string]bool{}
	err := chi.Walk(mux, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		// OpenAPI has no catch-all; the spec names the rest of the path.
		if prefix, ok := strings.CutSuffix(route, "/*"); ok {
			route = prefix + "/{topic}"
		}
		inRouter[method+" "+route] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	inSpec := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			inSpec[method+" "+path] = true
		}
	}
	if len(inRouter) == 0 || len(inSpec) == 0 {
		t.Fatalf("router has %d routes, spec %d operations", len(inRouter), len(inSpec))
	}
	for op := range inRouter {
		if !inSpec[op] {
			t.Errorf("route %s is not in %s", op, specFile)
		}
	}
	for op := range inSpec {
		if !inRouter[op] {
			t.Errorf("%s lists %s, which the router does not serve", specFile, op)
		}
	}
}

// problemEnums returns the type and status enums of a Problem* schema.
func problemEnums(s *openapi3.Schema) (types []string, statuses []int) {
	for _, sub := range append([]*openapi3.SchemaRef{{Value: s}}, s.AllOf...) {
		if sub.Value == nil {
			continue
		}
		if p := sub.Value.Properties["type"]; p != nil && p.Value != nil {
			for _, v := range p.Value.Enum {
				if s, ok := v.(string); ok {
					types = append(types, s)
				}
			}
		}
		if p := sub.Value.Properties["status"]; p != nil && p.Value != nil {
			for _, v := range p.Value.Enum {
				if f, ok := v.(float64); ok {
					statuses = append(statuses, int(f))
				}
			}
		}
	}
	return types, statuses
}

func TestOpenAPIProblemTypes(t *testing.T) {
	doc := loadSpec(t)
	// Every problem kind a client can receive (probClientGone is only
	// logged: its client is gone).
	kinds := []problemKind{
		probInvalidTopic, probInvalidParameter, probInvalidHeader, probBodyTooLarge,
		probNotFound, probMethodNotAllowed, probBrokerRejected, probBadReply, probReplyTooLarge,
		probNoResponders, probBrokerUnavailable, probShuttingDown, probTimeout, probInternal,
		probUnauthorized, probForbidden, probBodyTimeout, probOverloaded,
		probRequestNotFound, probNotAnswered, probRequestEnded, probStoreFull, probKeyReused, probKeyInFlight,
		probInvalidBatch,
	}
	specStatus := map[string][]int{} // problem type → statuses the spec gives it
	for name, ref := range doc.Components.Schemas {
		if !strings.HasPrefix(name, "Problem") || name == "Problem" {
			continue
		}
		types, statuses := problemEnums(ref.Value)
		if len(types) == 0 || len(statuses) != 1 {
			t.Errorf("schema %s: types %q, statuses %v; want some types and one status", name, types, statuses)
		}
		for _, typ := range types {
			specStatus[typ] = append(specStatus[typ], statuses...)
		}
	}
	codeTypes := map[string]bool{}
	for _, k := range kinds {
		typ := ProblemTypeBase + k.slug
		codeTypes[typ] = true
		st := specStatus[typ]
		if len(st) == 0 {
			t.Errorf("problem type %s (%d) is not in %s", typ, k.status, specFile)
		}
		for _, s := range st {
			if s != k.status {
				t.Errorf("%s gives problem type %s status %d; the code uses %d", specFile, typ, s, k.status)
			}
		}
	}
	for typ := range specStatus {
		if !codeTypes[typ] {
			t.Errorf("%s lists problem type %s, which the code never produces", specFile, typ)
		}
	}
	// Each operation's problem responses carry their own status.
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for code, resp := range op.Responses.Map() {
				mt := resp.Value.Content[problemCT]
				if mt == nil || mt.Schema == nil {
					continue
				}
				_, statuses := problemEnums(mt.Schema.Value)
				if fmt.Sprint(statuses) != "["+code+"]" {
					t.Errorf("%s %s response %s: problem schema has status %v", method, path, code, statuses)
				}
			}
		}
	}
	if !strings.Contains(doc.Info.Description, "%zz") {
		t.Errorf("info.description does not mention net/http's plain 400 for malformed percent-encoding")
	}
}

// specRoute finds the spec operation for r. OpenAPI path parameters do
// not span '/', so kin's routers can't match a multi-level topic: POST
// /rpc/... and /publish/... are resolved here, the way the spec describes
// the parameter (the escaped path after the prefix, percent-decoded once).
func specRoute(doc *openapi3.T, router routers.Router, r *http.Request) (*routers.Route, map[string]string, error) {
	for _, prefix := range []string{"/rpc/", "/publish/"} {
		raw, ok := strings.CutPrefix(r.URL.EscapedPath(), prefix)
		if !ok || r.Method != http.MethodPost {
			continue
		}
		topic, err := url.PathUnescape(raw)
		if err != nil {
			return nil, nil, err
		}
		path := prefix + "{topic}"
		item := doc.Paths.Value(path)
		return &routers.Route{
			Spec: doc, Path: path, PathItem: item,
			Method: r.Method, Operation: item.GetOperation(r.Method),
		}, map[string]string{"topic": topic}, nil
	}
	return router.FindRoute(r)
}

// unroutedRoute is a stand-in operation for requests that match no
// operation of the spec; its responses are the spec's NotFound and
// MethodNotAllowed components.
func unroutedRoute(t *testing.T, doc *openapi3.T, r *http.Request) *routers.Route {
	t.Helper()
	nf, mna := doc.Components.Responses["NotFound"], doc.Components.Responses["MethodNotAllowed"]
	if nf == nil || mna == nil {
		t.Fatalf("%s lacks components.responses NotFound or MethodNotAllowed", specFile)
	}
	op := openapi3.NewOperation()
	op.Responses = openapi3.NewResponses(
		openapi3.WithStatus(http.StatusNotFound, nf),
		openapi3.WithStatus(http.StatusMethodNotAllowed, mna),
	)
	return &routers.Route{Spec: doc, Path: r.URL.Path, PathItem: &openapi3.PathItem{}, Method: r.Method, Operation: op}
}

// liveCase is one real HTTP exchange with the gateway.
type liveCase struct {
	name    string
	method  string // default POST
	target  string // request target as sent: escaped path and query
	header  [][2]string
	reqBody []byte
	chunked bool // send the body without Content-Length
	// stall: after reqBody, the body sends nothing more until the test ends.
	stall bool
	// cfg adjusts the server's configuration for this case.
	cfg func(*testing.T, *Config)
	// request is the gateway's behaviour; nil means the request must be
	// refused before it reaches the gateway.
	request func(t *testing.T, ctx context.Context, req gateway.Request) (gateway.Reply, error)
	// publish is the gateway's behaviour for POST /publish; nil means
	// the publication must be refused before it reaches the gateway.
	publish func(t *testing.T, ctx context.Context, p gateway.Publication) error
	// submit is the gateway's behaviour for an async POST /rpc; nil
	// means the request must be refused before it reaches the gateway.
	submit func(t *testing.T, ctx context.Context, req gateway.Request, ttl time.Duration) (gateway.Record, error)
	// lookup is the gateway's Lookup, and so its Watch and Cancel (the
	// fake serves them alike); nil means no request record may be asked
	// for.
	lookup func(t *testing.T, owner, id string) (gateway.Record, error)
	// stream is the gateway's Stream, for a request that takes many
	// replies (a stream or a gather); nil means the request must be
	// refused before it reaches the gateway.
	stream func(t *testing.T, ctx context.Context, req gateway.Request, c gateway.Collect, sink gateway.StreamSink) (gateway.StreamEnd, error)
	ready  func() error // default: ready

	status   int
	ctype    string // exact Content-Type
	slug     string // problem type slug; "" for a response that is no problem
	detail   string // substring of the problem's detail
	wantBody string // exact body of a response that is no problem
	// Exact values of Mqtt-User-Property, Retry-After, Location,
	// Preference-Applied, Cache-Control, X-Accel-Buffering, Gather-End
	// and Gather-Reached (absent if not listed), and of
	// X-Content-Type-Options (nosniff unless sniffable).
	hdr       map[string][]string
	sniffable bool
	// schema names a components schema that the JSON body must match
	// too, where the spec's media type allows more than it (a gather's
	// application/json is also any JSON reply's).
	schema string
	// specRejects: the spec's schemas themselves flag the request.
	specRejects bool
	// unrouted: no operation of the spec matches (404, 405).
	unrouted bool
	after    func(t *testing.T, s *Server)
}

var (
	ready           = func() error { return nil }
	nosniff         = []string{"nosniff"}
	noStore         = []string{"no-store"}
	retryAfter1     = map[string][]string{"Retry-After": {"1"}}
	testCfg         = DefaultConfig()
	maxBodyBytes    = bytes.Repeat([]byte("x"), int(testCfg.MaxBody))
	tooLargeBody    = bytes.Repeat([]byte("x"), int(testCfg.MaxBody)+1)
	maxLengthTopic  = strings.Repeat("a", 65535)
	overLengthTopic = strings.Repeat("a", 65536)
)

// wantDeadline checks that ctx ends about d from now.
func wantDeadline(t *testing.T, ctx context.Context, d time.Duration) {
	t.Helper()
	dl, ok := ctx.Deadline()
	if left := time.Until(dl); !ok || left > d || left < d-time.Second {
		t.Errorf("gateway got deadline in %s (set: %v), want about %s", left, ok, d)
	}
}

const testAPIKey = "k-0123456789abcdef0123456789abcdef"

// withAuth turns on API keys: testAPIKey may publish on devices/+/get.
func withAuth(t *testing.T, c *Config) {
	path := filepath.Join(t.TempDir(), "keys.yaml")
	gatewaytest.WriteKeys(t, path, gatewaytest.Key{Name: "test", Key: testAPIKey, Topics: []string{"devices/+/get"}})
	auth, err := NewAuthenticator(path)
	if err != nil {
		t.Fatal(err)
	}
	c.Auth = auth
}

// stallReader blocks until ctx ends, like a client that stops sending.
type stallReader struct{ ctx context.Context }

func (r stallReader) Read([]byte) (int, error) {
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}

// replyWith answers every request with r.
func replyWith(r gateway.Reply) func(*testing.T, context.Context, gateway.Request) (gateway.Reply, error) {
	return func(*testing.T, context.Context, gateway.Request) (gateway.Reply, error) { return r, nil }
}

// failWith fails every request with err.
func failWith(err error) func(*testing.T, context.Context, gateway.Request) (gateway.Reply, error) {
	return func(*testing.T, context.Context, gateway.Request) (gateway.Reply, error) { return gateway.Reply{}, err }
}

// checkStrings fails the way gateway.Request does on a content type or
// user property that MQTT can't carry.
func checkStrings(t *testing.T, _ context.Context, req gateway.Request) (gateway.Reply, error) {
	if err := gateway.CheckString(req.ContentType); err != nil {
		return gateway.Reply{}, &gateway.InvalidError{Field: "content type", Reason: "it " + err.Error()}
	}
	for _, p := range req.UserProperties {
		if err := gateway.CheckString(p.Value); err != nil {
			return gateway.Reply{}, &gateway.InvalidError{Field: "user property", Reason: fmt.Sprintf("value of %q %v", p.Key, err)}
		}
	}
	t.Errorf("request %+v should have failed CheckString", req)
	return gateway.Reply{}, errors.New("test case is wrong")
}

func liveCases() []liveCase {
	cases := []liveCase{
		// 200
		{
			name: "200 plain", target: "/rpc/a/b?timeout=1.5s&qos=0",
			header:  [][2]string{{"Content-Type", "text/plain"}},
			reqBody: []byte("hello"),
			request: func(t *testing.T, ctx context.Context, req gateway.Request) (gateway.Reply, error) {
				wantDeadline(t, ctx, 1500*time.Millisecond)
				if req.Topic != "a/b" || req.QoS != 0 || req.ContentType != "text/plain" || string(req.Payload) != "hello" || req.UserProperties != nil {
					t.Errorf("gateway got %+v", req)
				}
				return gateway.Reply{Payload: []byte("world"), ContentType: plainTextCT}, nil
			},
			status: 200, ctype: plainTextCT, wantBody: "world",
		},
		{
			name: "200 after waiting for a responder", target: "/rpc/a?timeout=2s&wait-for-responder=3",
			request: func(t *testing.T, ctx context.Context, req gateway.Request) (gateway.Reply, error) {
				// The wait comes on top of the timeout.
				wantDeadline(t, ctx, 5*time.Second)
				if req.WaitForResponder != 3*time.Second {
					t.Errorf("gateway got wait %s, want 3s", req.WaitForResponder)
				}
				return gateway.Reply{Payload: []byte("ok")}, nil
			},
			status: 200, ctype: octetStreamCT, wantBody: "ok",
		},
		{
			name: "200 defaults, %2F separator, no content type", target: "/rpc/devices%2F42%2Fget",
			request: func(t *testing.T, ctx context.Context, req gateway.Request) (gateway.Reply, error) {
				wantDeadline(t, ctx, testCfg.DefaultTimeout)
				if req.Topic != "devices/42/get" || req.QoS != testCfg.DefaultQoS || req.ContentType != "" || len(req.Payload) != 0 {
					t.Errorf("gateway got %+v", req)
				}
				return gateway.Reply{Payload: []byte{0, 1, 0xfe, 0xff}}, nil
			},
			status: 200, ctype: octetStreamCT, wantBody: "\x00\x01\xfe\xff",
		},
		{
			name: "200 user properties both ways", target: "/rpc/x/%24y?timeout=2&qos=2",
			header: [][2]string{
				{"Mqtt-User-Property", "a=1"}, {"Mqtt-User-Property", "b=x=y"}, {"Mqtt-User-Property", "a=2"},
				{"Content-Type", "application/json"},
			},
			reqBody: []byte(`{"q":1}`),
			request: func(t *testing.T, ctx context.Context, req gateway.Request) (gateway.Reply, error) {
				wantDeadline(t, ctx, 2*time.Second)
				want := []gateway.UserProperty{{Key: "a", Value: "1"}, {Key: "b", Value: "x=y"}, {Key: "a", Value: "2"}}
				if req.Topic != "x/$y" || req.QoS != 2 || req.ContentType != "application/json" || !slices.Equal(req.UserProperties, want) {
					t.Errorf("gateway got %+v", req)
				}
				return gateway.Reply{
					Payload:     []byte(`{"a":1}`),
					ContentType: "application/json",
					UserProperties: []gateway.UserProperty{
						{Key: "k", Value: "v"}, {Key: "split", Value: "bad\r\nX-Injected: 1"}, {Key: "k", Value: "w=z"},
					},
				}, nil
			},
			status: 200, ctype: "application/json", wantBody: `{"a":1}`,
			hdr: map[string][]string{"Mqtt-User-Property": {"k=v", "k=w=z"}, "X-Injected": nil},
			after: func(t *testing.T, s *Server) {
				if n := s.DroppedProperties(); n != 1 {
					t.Errorf("DroppedProperties = %d, want 1", n)
				}
			},
		},
		{
			name: "200 body of exactly max-body", target: "/rpc/big", reqBody: maxBodyBytes,
			request: func(t *testing.T, _ context.Context, req gateway.Request) (gateway.Reply, error) {
				if len(req.Payload) != len(maxBodyBytes) {
					t.Errorf("gateway got %d bytes, want %d", len(req.Payload), len(maxBodyBytes))
				}
				return gateway.Reply{}, nil
			},
			status: 200, ctype: octetStreamCT, wantBody: "",
		},
		{
			name: "200 longest topic", target: "/rpc/" + maxLengthTopic,
			request: replyWith(gateway.Reply{Payload: []byte("ok")}),
			status:  200, ctype: octetStreamCT, wantBody: "ok",
		},
		{
			name: "201 chosen by the responder", target: "/rpc/orders",
			request: replyWith(gateway.Reply{
				Payload: []byte(`{"id":7}`), ContentType: "application/json",
				UserProperties: []gateway.UserProperty{{Key: "http-status", Value: "201"}},
			}),
			status: 201, ctype: "application/json", wantBody: `{"id":7}`,
			hdr: map[string][]string{"Mqtt-User-Property": {"http-status=201"}},
		},
		{
			name: "404 chosen by the responder", target: "/rpc/orders/9",
			request: replyWith(gateway.Reply{
				Payload:        []byte("no such order"),
				UserProperties: []gateway.UserProperty{{Key: "http-status", Value: "404"}},
			}),
			status: 404, ctype: octetStreamCT, wantBody: "no such order",
			hdr: map[string][]string{"Mqtt-User-Property": {"http-status=404"}},
		},

		// 400 invalid-topic: never reaches the gateway.
		{name: "400 wildcard +", target: "/rpc/a/+/b", status: 400, slug: "invalid-topic", detail: "wildcard", specRejects: true},
		{name: "400 wildcard %2B", target: "/rpc/a%2Bb", status: 400, slug: "invalid-topic", detail: "wildcard", specRejects: true},
		{name: "400 wildcard %23", target: "/rpc/a/%23", status: 400, slug: "invalid-topic", detail: "wildcard", specRejects: true},
		{name: "400 $ topic", target: "/rpc/$SYS/broker/uptime", status: 400, slug: "invalid-topic", detail: "'$'", specRejects: true},
		{name: "400 %24 topic", target: "/rpc/%24SYS", status: 400, slug: "invalid-topic", detail: "'$'", specRejects: true},
		{name: "400 empty topic", target: "/rpc/", status: 400, slug: "invalid-topic", detail: "empty", specRejects: true},
		{name: "400 response prefix", target: "/rpc/mqttgw/reply", status: 400, slug: "invalid-topic", detail: "mqttgw/reply"},
		{name: "400 under response prefix", target: "/rpc/mqttgw/reply/abc", status: 400, slug: "invalid-topic", detail: "mqttgw/reply"},
		{name: "400 under response prefix, %2F", target: "/rpc/mqttgw%2Freply%2Fabc", status: 400, slug: "invalid-topic", detail: "mqttgw/reply"},
		{name: "400 NUL", target: "/rpc/a%00b", status: 400, slug: "invalid-topic", detail: "NUL", specRejects: true},
		{name: "400 control character", target: "/rpc/a%1Bb", status: 400, slug: "invalid-topic", detail: "U+001B", specRejects: true},
		{name: "400 C1 control character", target: "/rpc/a%C2%85b", status: 400, slug: "invalid-topic", detail: "U+0085", specRejects: true},
		{name: "400 invalid UTF-8", target: "/rpc/a%FFb", status: 400, slug: "invalid-topic", detail: "UTF-8"},
		{name: "400 non-character", target: "/rpc/a%EF%B7%90", status: 400, slug: "invalid-topic", detail: "U+FDD0", specRejects: true},
		{name: "400 non-character beyond the BMP", target: "/rpc/a%F0%9F%BF%BF", status: 400, slug: "invalid-topic", detail: "U+1FFFF"},
		{name: "400 topic too long", target: "/rpc/" + overLengthTopic, status: 400, slug: "invalid-topic", detail: "65535", specRejects: true},

		// 400 invalid-parameter
		{name: "400 timeout zero", target: "/rpc/a?timeout=0", status: 400, slug: "invalid-parameter", detail: "minimum of 1ms"},
		{name: "400 timeout below 1ms", target: "/rpc/a?timeout=1ns", status: 400, slug: "invalid-parameter", detail: "minimum of 1ms"},
		{name: "400 timeout negative", target: "/rpc/a?timeout=-1s", status: 400, slug: "invalid-parameter", detail: "from 1ms", specRejects: true},
		{name: "400 timeout exponent", target: "/rpc/a?timeout=1e-12", status: 400, slug: "invalid-parameter", detail: "from 1ms", specRejects: true},
		{name: "400 timeout underscore", target: "/rpc/a?timeout=1_0", status: 400, slug: "invalid-parameter", detail: `"1_0"`, specRejects: true},
		{name: "400 timeout sign", target: "/rpc/a?timeout=%2B5s", status: 400, slug: "invalid-parameter", detail: `"+5s"`, specRejects: true},
		{name: "400 timeout empty", target: "/rpc/a?timeout=", status: 400, slug: "invalid-parameter", specRejects: true},
		{name: "400 timeout unparsable", target: "/rpc/a?timeout=soon", status: 400, slug: "invalid-parameter", detail: "1.5s", specRejects: true},
		{name: "400 timeout NaN", target: "/rpc/a?timeout=NaN", status: 400, slug: "invalid-parameter", specRejects: true},
		{name: "400 timeout above max", target: "/rpc/a?timeout=61s", status: 400, slug: "invalid-parameter", detail: testCfg.MaxTimeout.String()},
		{name: "400 timeout seconds above max", target: "/rpc/a?timeout=61", status: 400, slug: "invalid-parameter", detail: testCfg.MaxTimeout.String()},
		// Too large for a time.Duration: refused all the same, naming
		// the maximum, not as a parse error.
		{name: "400 timeout overflows", target: "/rpc/a?timeout=3000000h", status: 400, slug: "invalid-parameter", detail: "maximum of 1m0s"},
		{name: "400 timeout twice", target: "/rpc/a?timeout=1s&timeout=2s", status: 400, slug: "invalid-parameter", detail: "once"},
		{name: "400 wait-for-responder unparsable", target: "/rpc/a?wait-for-responder=soon", status: 400, slug: "invalid-parameter", detail: "wait-for-responder", specRejects: true},
		{name: "400 wait-for-responder negative", target: "/rpc/a?wait-for-responder=-1s", status: 400, slug: "invalid-parameter", detail: "wait-for-responder", specRejects: true},
		{name: "400 wait-for-responder above max", target: "/rpc/a?wait-for-responder=61s", status: 400, slug: "invalid-parameter", detail: "maximum of 1m0s"},
		{name: "400 wait-for-responder and timeout above max", target: "/rpc/a?timeout=40s&wait-for-responder=30s", status: 400, slug: "invalid-parameter", detail: "plus wait-for-responder 30s is above the maximum of 1m0s"},
		{name: "400 wait-for-responder twice", target: "/rpc/a?wait-for-responder=1s&wait-for-responder=2s", status: 400, slug: "invalid-parameter", detail: "once"},
		{name: "400 qos 3", target: "/rpc/a?qos=3", status: 400, slug: "invalid-parameter", detail: "0, 1 or 2", specRejects: true},
		{name: "400 qos word", target: "/rpc/a?qos=one", status: 400, slug: "invalid-parameter", detail: "0, 1 or 2", specRejects: true},
		{name: "400 qos twice", target: "/rpc/a?qos=1&qos=1", status: 400, slug: "invalid-parameter", detail: "once"},

		// 400 invalid-header
		{
			name: "400 user property without =", target: "/rpc/a",
			header: [][2]string{{"Mqtt-User-Property", "novalue"}},
			status: 400, slug: "invalid-header", detail: "key=value", specRejects: true,
		},
		{
			name: "400 user property with empty key", target: "/rpc/a",
			header: [][2]string{{"Mqtt-User-Property", "=v"}},
			status: 400, slug: "invalid-header", detail: "key=value", specRejects: true,
		},
		{
			name: "400 user property with a control character", target: "/rpc/a",
			header:  [][2]string{{"Mqtt-User-Property", "k=a\tb"}},
			request: checkStrings,
			status:  400, slug: "invalid-header", detail: "user property", specRejects: true,
		},
		{
			name: "400 content type with a control character", target: "/rpc/a",
			header:  [][2]string{{"Content-Type", "text/plain;\tcharset=utf-8"}},
			reqBody: []byte("x"),
			request: checkStrings,
			status:  400, slug: "invalid-header", detail: "content type",
		},

		// 404, 405: no operation of the spec.
		{name: "404 unknown path", method: http.MethodGet, target: "/nope", status: 404, slug: "not-found", unrouted: true},
		{name: "404 /rpc without slash", target: "/rpc", status: 404, slug: "not-found", unrouted: true},
		{name: "405 GET /rpc", method: http.MethodGet, target: "/rpc/a", status: 405, slug: "method-not-allowed", unrouted: true,
			hdr: map[string][]string{"Allow": {"POST"}}},
		{name: "405 POST /healthz", target: "/healthz", status: 405, slug: "method-not-allowed", unrouted: true,
			hdr: map[string][]string{"Allow": {"GET"}}},
		{name: "405 DELETE /readyz", method: http.MethodDelete, target: "/readyz", status: 405, slug: "method-not-allowed", unrouted: true,
			hdr: map[string][]string{"Allow": {"GET"}}},

		// 413
		{
			name: "401 no API key", target: "/rpc/devices/1/get", reqBody: []byte("x"),
			cfg:    withAuth,
			status: 401, slug: "unauthorized", hdr: map[string][]string{"Www-Authenticate": {`Bearer realm="mqttgw"`}},
		},
		{
			name: "401 unknown API key", target: "/rpc/devices/1/get", reqBody: []byte("x"),
			header: [][2]string{{"Authorization", "Bearer not-a-key"}},
			cfg:    withAuth,
			status: 401, slug: "unauthorized", hdr: map[string][]string{"Www-Authenticate": {`Bearer realm="mqttgw"`}},
		},
		{
			name: "403 topic outside the key's filters", target: "/rpc/admin/shutdown", reqBody: []byte("x"),
			header: [][2]string{{"X-API-Key", testAPIKey}},
			cfg:    withAuth,
			status: 403, slug: "forbidden", detail: "admin/shutdown",
		},
		{
			name: "200 with an API key", target: "/rpc/devices/1/get", reqBody: []byte("x"),
			header:  [][2]string{{"Authorization", "Bearer " + testAPIKey}},
			cfg:     withAuth,
			request: replyWith(gateway.Reply{Payload: []byte("ok")}),
			status:  200, ctype: "application/octet-stream", wantBody: "ok",
		},
		{
			name: "408 body stalls", target: "/rpc/a", reqBody: []byte("x"), stall: true,
			cfg:    func(_ *testing.T, c *Config) { c.BodyReadTimeout = 100 * time.Millisecond },
			status: 408, slug: "body-timeout", detail: "100ms",
		},
		{
			// A bound of 0 puts every request beyond it; the e2e tests
			// fill a real bound with waiting requests.
			name: "503 overloaded", target: "/rpc/a", reqBody: []byte("x"),
			cfg:    func(_ *testing.T, c *Config) { c.MaxInflight = 0 },
			status: 503, slug: "overloaded", detail: "max-inflight", hdr: retryAfter1,
		},
		{name: "413 Content-Length", target: "/rpc/a", reqBody: tooLargeBody, status: 413, slug: "body-too-large", detail: fmt.Sprint(testCfg.MaxBody)},
		{name: "413 chunked", target: "/rpc/a", reqBody: tooLargeBody, chunked: true, status: 413, slug: "body-too-large", detail: fmt.Sprint(testCfg.MaxBody)},

		// 500
		{name: "500 internal", target: "/rpc/a", request: failWith(errors.New("secret internals")), status: 500, slug: "internal"},

		// 502
		{
			name: "502 broker rejected", target: "/rpc/a",
			request: failWith(&gateway.PublishError{ReasonCode: 0x87, Reason: "Not authorized"}),
			status:  502, slug: "broker-rejected", detail: "0x87",
		},
		{
			name: "502 http-status not a number", target: "/rpc/a",
			request: replyWith(gateway.Reply{Payload: []byte("x"), UserProperties: []gateway.UserProperty{{Key: "http-status", Value: "abc"}}}),
			status:  502, slug: "bad-reply", detail: "http-status",
		},
		{
			name: "502 http-status out of range", target: "/rpc/a",
			request: replyWith(gateway.Reply{UserProperties: []gateway.UserProperty{{Key: "http-status", Value: "600"}}}),
			status:  502, slug: "bad-reply", detail: "200 to 599",
		},
		{
			name: "502 http-status with a sign", target: "/rpc/a",
			request: replyWith(gateway.Reply{UserProperties: []gateway.UserProperty{{Key: "http-status", Value: "+201"}}}),
			status:  502, slug: "bad-reply", detail: `"+201"`,
		},

		{
			name: "502 reply too large", target: "/rpc/a",
			request: failWith(fmt.Errorf("%w: the reply is 5 bytes; at most 4 are allowed", gateway.ErrReplyTooLarge)),
			status:  502, slug: "reply-too-large", detail: "at most 4",
		},

		{
			name: "413 larger than the broker accepts", target: "/rpc/a",
			request: failWith(fmt.Errorf("%w: the PUBLISH would be about 3000 bytes; the broker accepts at most 2000", gateway.ErrTooLarge)),
			status:  413, slug: "body-too-large", detail: "at most 2000",
		},

		// 503
		{
			name: "503 no responder within the wait", target: "/rpc/a?wait-for-responder=1s",
			request: failWith(fmt.Errorf("%w: nobody subscribed to %q within the 1s waited for a responder", gateway.ErrNoResponders, "a")),
			status:  503, slug: "no-responders", detail: "within the 1s waited",
		},
		{
			name: "503 no responders", target: "/rpc/a",
			request: failWith(fmt.Errorf("%w on %q", gateway.ErrNoResponders, "a")),
			status:  503, slug: "no-responders",
		},
		{
			name: "503 broker unavailable", target: "/rpc/a",
			request: failWith(fmt.Errorf("%w: connection lost", gateway.ErrNotConnected)),
			status:  503, slug: "broker-unavailable", hdr: retryAfter1,
		},
		{
			name: "503 shutting down", target: "/rpc/a",
			request: failWith(gateway.ErrClosed),
			status:  503, slug: "shutting-down", hdr: retryAfter1,
		},

		// 504
		{
			name: "504 timeout", target: "/rpc/a?timeout=50ms",
			request: func(t *testing.T, ctx context.Context, _ gateway.Request) (gateway.Reply, error) {
				wantDeadline(t, ctx, 50*time.Millisecond)
				<-ctx.Done()
				return gateway.Reply{}, fmt.Errorf("%w: no reply", gateway.ErrTimeout)
			},
			status: 504, slug: "timeout",
		},

		// health
		{
			name: "healthz ignores the broker", method: http.MethodGet, target: "/healthz",
			ready:  func() error { return gateway.ErrNotConnected },
			status: 200, ctype: plainTextCT, wantBody: "ok\n", sniffable: true,
		},
		{
			name: "readyz ready", method: http.MethodGet, target: "/readyz", ready: ready,
			status: 200, ctype: plainTextCT, wantBody: "ready\n", sniffable: true,
		},
		{
			name: "readyz broker unavailable", method: http.MethodGet, target: "/readyz",
			ready:  func() error { return gateway.ErrNotConnected },
			status: 503, slug: "broker-unavailable", hdr: retryAfter1,
		},
		{
			name: "readyz shutting down", method: http.MethodGet, target: "/readyz",
			ready:  func() error { return gateway.ErrClosed },
			status: 503, slug: "shutting-down", hdr: retryAfter1,
		},
		{
			name: "readyz internal", method: http.MethodGet, target: "/readyz",
			ready:  func() error { return errors.New("secret internals") },
			status: 500, slug: "internal",
		},
	}
	cases = append(cases, publishCases()...)
	cases = append(cases, asyncCases()...)
	cases = append(cases, requestsCases()...)
	cases = append(cases, streamCases()...)
	// Headers beyond the limit: net/http's own plain-text 431, before any
	// handler, on every operation.
	for _, route := range [][2]string{
		{http.MethodPost, "/rpc/a"}, {http.MethodPost, "/publish/a"}, {http.MethodGet, "/healthz"}, {http.MethodGet, "/readyz"}, {http.MethodGet, "/metrics"},
		{http.MethodGet, testRequestPath}, {http.MethodDelete, testRequestPath}, {http.MethodGet, testRequestPath + "/reply"},
	} {
		cases = append(cases, liveCase{
			name: "431 " + route[0] + " " + route[1], method: route[0], target: route[1],
			header: [][2]string{{"X-Padding", strings.Repeat("x", http.DefaultMaxHeaderBytes+8<<10)}},
			status: 431, ctype: "text/plain; charset=utf-8", wantBody: "431 Request Header Fields Too Large", sniffable: true,
		})
	}
	return cases
}

func TestOpenAPILiveResponses(t *testing.T) {
	doc := loadSpec(t)
	// Route by path alone: the spec's server is a template for where a
	// gateway listens, and the tests' servers listen on ports of their own.
	doc.Servers = nil
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	statuses := map[int]bool{}
	for _, c := range liveCases() {
		t.Run(c.name, func(t *testing.T) {
			runLiveCase(t, doc, router, c)
		})
		statuses[c.status] = true
	}
	// Every status the spec lists is produced by some case above.
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for code := range op.Responses.Map() {
				var n int
				if _, err := fmt.Sscan(code, &n); err == nil && !statuses[n] {
					t.Errorf("%s %s: no live case produces status %s", method, path, code)
				}
			}
		}
	}
}

func runLiveCase(t *testing.T, doc *openapi3.T, router routers.Router, c liveCase) {
	var calls, lookups atomic.Int32
	gw := &fakeGateway{
		RequestFn: func(ctx context.Context, req gateway.Request) (gateway.Reply, error) {
			calls.Add(1)
			if c.request == nil {
				t.Errorf("the gateway got %.200q; it should have been refused before", fmt.Sprintf("%+v", req))
				return gateway.Reply{}, errors.New("unexpected gateway call")
			}
			return c.request(t, ctx, req)
		},
		PublishFn: func(ctx context.Context, p gateway.Publication) error {
			calls.Add(1)
			if c.publish == nil {
				t.Errorf("the gateway got the publication %.200q; it should have been refused before", fmt.Sprintf("%+v", p))
				return errors.New("unexpected gateway call")
			}
			return c.publish(t, ctx, p)
		},
		SubmitFn: func(ctx context.Context, req gateway.Request, ttl time.Duration) (gateway.Record, error) {
			calls.Add(1)
			if c.submit == nil {
				t.Errorf("the gateway got the async request %.200q; it should have been refused before", fmt.Sprintf("%+v", req))
				return gateway.Record{}, errors.New("unexpected gateway call")
			}
			return c.submit(t, ctx, req, ttl)
		},
		LookupFn: func(owner, id string) (gateway.Record, error) {
			lookups.Add(1)
			if c.lookup == nil {
				t.Errorf("the gateway was asked for request %q of %q; it should have been refused before", id, owner)
				return gateway.Record{}, errors.New("unexpected gateway call")
			}
			return c.lookup(t, owner, id)
		},
		StreamFn: func(ctx context.Context, req gateway.Request, col gateway.Collect, sink gateway.StreamSink) (gateway.StreamEnd, error) {
			calls.Add(1)
			if c.stream == nil {
				t.Errorf("the gateway got the request for many replies %.200q; it should have been refused before", fmt.Sprintf("%+v", req))
				return gateway.StreamEnd{}, errors.New("unexpected gateway call")
			}
			return c.stream(t, ctx, req, col, sink)
		},
		ReadyFn: c.ready,
	}
	cfg := testCfg
	if c.cfg != nil {
		c.cfg(t, &cfg)
	}
	s := NewServer(nil, gw, cfg)
	srv := newLocalServer(t, s)

	method := c.method
	if method == "" {
		method = http.MethodPost
	}
	newRequest := func(base string, chunked, stall bool) *http.Request {
		var body io.Reader
		if c.reqBody != nil {
			body = bytes.NewReader(c.reqBody)
			if chunked {
				body = io.MultiReader(body) // unknown length: sent chunked
			}
		}
		if stall {
			body = io.MultiReader(body, stallReader{t.Context()})
		}
		req, err := http.NewRequestWithContext(t.Context(), method, base+c.target, body)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range c.header {
			req.Header.Add(h[0], h[1])
		}
		return req
	}

	// The live exchange.
	req := newRequest(srv.URL, c.chunked, c.stall)
	if c.chunked && req.ContentLength != 0 {
		t.Fatalf("chunked request has Content-Length %d", req.ContentLength)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}

	// What the test expects.
	if resp.StatusCode != c.status {
		t.Errorf("status %d, want %d; body %.300s", resp.StatusCode, c.status, body)
	}
	if (c.request != nil || c.publish != nil || c.submit != nil || c.stream != nil) && calls.Load() != 1 {
		t.Errorf("gateway called %d times, want once", calls.Load())
	}
	if c.lookup != nil && lookups.Load() == 0 {
		t.Errorf("the gateway was never asked for the request")
	}
	wantCT := c.ctype
	if c.slug != "" {
		wantCT = problemCT
	}
	if got := resp.Header.Get("Content-Type"); got != wantCT {
		t.Errorf("Content-Type %q, want %q", got, wantCT)
	}
	wantHdr := map[string][]string{
		"Mqtt-User-Property": nil, "Retry-After": nil, "X-Content-Type-Options": nosniff,
		"Location": nil, "Preference-Applied": nil, "Cache-Control": nil,
		"X-Accel-Buffering": nil, "Gather-End": nil, "Gather-Reached": nil,
	}
	if c.sniffable {
		wantHdr["X-Content-Type-Options"] = nil
	}
	for k, v := range c.hdr {
		wantHdr[k] = v
	}
	for k, want := range wantHdr {
		if got := resp.Header.Values(k); !slices.Equal(got, want) {
			t.Errorf("header %s: %q, want %q", k, got, want)
		}
	}
	if c.slug == "" {
		if string(body) != c.wantBody {
			t.Errorf("body %.300q, want %.300q", body, c.wantBody)
		}
	} else {
		var p Problem
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("problem body %.300q: %v", body, err)
		}
		if p.Type != ProblemTypeBase+c.slug || p.Status != c.status || p.Title == "" || p.Detail == "" {
			t.Errorf("problem %+v, want type %s, status %d, a title and a detail", p, ProblemTypeBase+c.slug, c.status)
		}
		if !strings.Contains(p.Detail, c.detail) {
			t.Errorf("problem detail %q does not mention %q", p.Detail, c.detail)
		}
		if strings.Contains(p.Detail, "secret internals") {
			t.Errorf("problem detail %q leaks the internal error", p.Detail)
		}
		// A problem names a request in its extension members exactly
		// when its Location header does.
		if loc := resp.Header.Get("Location"); p.Location != loc || (loc != "" && loc != requestsPrefix+p.ID) || (loc == "" && p.ID != "") {
			t.Errorf("problem id %q, location %q; Location header %q", p.ID, p.Location, loc)
		}
	}
	if c.after != nil {
		c.after(t, s)
	}

	// What the spec says about the same exchange.
	ctx := t.Context()
	opts := &openapi3filter.Options{
		AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
		IncludeResponseStatus: true,
		SkipSettingDefaults:   true,
	}
	specReq := newRequest("http://127.0.0.1", false, false)
	route, params, err := specRoute(doc, router, specReq)
	switch {
	case c.unrouted && err == nil:
		t.Errorf("%s %s matches spec operation %s %s; want none", method, c.target, route.Method, route.Path)
	case c.unrouted:
		route, params = unroutedRoute(t, doc, specReq), nil
	case err != nil:
		t.Fatalf("no spec operation for %s %s: %v", method, c.target, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: specReq, PathParams: params, Route: route, Options: opts}
	if !c.unrouted {
		err := openapi3filter.ValidateRequest(ctx, in)
		switch {
		case c.specRejects && err == nil:
			t.Errorf("the spec accepts the request; want it to flag what the gateway refuses")
		case !c.specRejects && err != nil:
			t.Errorf("the spec rejects the request: %v", err)
		case err != nil:
			t.Logf("the spec rejects the request, as it should: %.300v", err)
		}
	}
	// ValidateResponse would let a status fall back to the rpc operation's
	// default (a responder-chosen status): each gateway error and each
	// header it sends must be declared for its own status.
	specResp := route.Operation.Responses.Status(resp.StatusCode)
	if specResp == nil {
		specResp = route.Operation.Responses.Default()
	}
	switch {
	case specResp == nil || specResp.Value == nil:
		t.Errorf("the spec has no response %d for %s %s", resp.StatusCode, method, route.Path)
	case c.slug != "" && (route.Operation.Responses.Status(resp.StatusCode) == nil || specResp.Value.Content[problemCT] == nil):
		t.Errorf("the spec's response %d for %s %s has no %s content", resp.StatusCode, method, route.Path, problemCT)
	default:
		for _, h := range []string{"Mqtt-User-Property", "Retry-After", "X-Content-Type-Options", "Location", "Preference-Applied", "Cache-Control", "WWW-Authenticate", "Allow",
			"X-Accel-Buffering", "Gather-End", "Gather-Reached"} {
			if resp.Header.Get(h) != "" && specResp.Value.Headers[h] == nil {
				t.Errorf("the spec's response %d for %s %s does not declare header %s", resp.StatusCode, method, route.Path, h)
			}
		}
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                opts,
	}
	ct := resp.Header.Get("Content-Type")
	streamed := ct == eventStreamCT || ct == ndjsonCT
	if streamed {
		// kin-openapi decodes no stream; its events are checked one by
		// one below, its status and headers here.
		respOpts := *opts
		respOpts.ExcludeResponseBody = true
		out.Options = &respOpts
	}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Errorf("the response does not match the spec: %v", err)
	}
	if streamed && specResp != nil && specResp.Value != nil {
		checkStreamEvents(t, specResp.Value, ct, body)
	}
	if c.schema != "" {
		checkBodySchema(t, doc, c.schema, body)
	}
}

// schemaOpts validate a live response's JSON as openapi3filter does.
var schemaOpts = []openapi3.SchemaValidationOption{openapi3.EnableJSONSchema2020(), openapi3.VisitAsResponse(), openapi3.MultiErrors()}

// checkStreamEvents checks each event of a stream against the schema the
// spec's response gives its media type ct: one Server-Sent Event as
// {event, id, data} with data parsed as JSON (a comment is no event), or
// one NDJSON line.
func checkStreamEvents(t *testing.T, resp *openapi3.Response, ct string, body []byte) {
	t.Helper()
	mt := resp.Content.Get(ct)
	if mt == nil || mt.Schema == nil || mt.Schema.Value == nil {
		t.Errorf("the spec's response declares no %s content with a schema", ct)
		return
	}
	var events []any
	if ct == ndjsonCT {
		text, ok := strings.CutSuffix(string(body), "\n")
		if !ok {
			t.Errorf("NDJSON body %.300q does not end with a newline", body)
		}
		for line := range strings.SplitSeq(text, "\n") {
			var v any
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				t.Errorf("NDJSON line %.300q: %v", line, err)
				continue
			}
			events = append(events, v)
		}
	} else {
		text, ok := strings.CutSuffix(string(body), "\n\n")
		if !ok {
			t.Errorf("event stream %.300q does not end with a blank line", body)
		}
		for block := range strings.SplitSeq(text, "\n\n") {
			ev := map[string]any{}
			for line := range strings.SplitSeq(block, "\n") {
				field, value, _ := strings.Cut(line, ": ")
				switch field {
				case "":
					// A comment (": keep-alive"): no event.
				case "event", "id":
					ev[field] = value
				case "data":
					var v any
					if err := json.Unmarshal([]byte(value), &v); err != nil {
						t.Errorf("event data %.300q: %v", value, err)
					}
					ev[field] = v
				default:
					t.Errorf("event line %.300q is no event, id or data field", line)
				}
			}
			if len(ev) > 0 {
				events = append(events, ev)
			}
		}
	}
	if len(events) == 0 {
		t.Errorf("stream %.300q has no events", body)
	}
	for i, ev := range events {
		if err := mt.Schema.Value.VisitJSON(ev, schemaOpts...); err != nil {
			t.Errorf("event %d of the %s stream does not match the spec: %v", i+1, ct, err)
		}
	}
}

// checkBodySchema checks a JSON body against components schema name.
func checkBodySchema(t *testing.T, doc *openapi3.T, name string, body []byte) {
	t.Helper()
	ref := doc.Components.Schemas[name]
	if ref == nil || ref.Value == nil {
		t.Fatalf("%s has no components schema %s", specFile, name)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("body %.300q: %v", body, err)
	}
	if err := ref.Value.VisitJSON(v, schemaOpts...); err != nil {
		t.Errorf("body does not match schema %s: %v", name, err)
	}
}

// TestOpenAPIMalformedPercentEncoding: net/http refuses the request line
// itself with a plain 400, as the spec's description says.
func TestOpenAPIMalformedPercentEncoding(t *testing.T) {
	var calls atomic.Int32
	gw := &fakeGateway{
		RequestFn: func(context.Context, gateway.Request) (gateway.Reply, error) {
			calls.Add(1)
			return gateway.Reply{}, nil
		},
		ReadyFn: ready,
	}
	srv := newLocalServer(t, NewServer(nil, gw, DefaultConfig()))
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "POST /rpc/a%zz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d, want 400", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, problemCT) || !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want net/http's text/plain", ct)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("gateway called %d times", n)
	}
}

// publishCases are the live cases of POST /publish/{topic}.
func publishCases() []liveCase {
	published := func(want gateway.Publication) func(*testing.T, context.Context, gateway.Publication) error {
		return func(t *testing.T, ctx context.Context, p gateway.Publication) error {
			wantDeadline(t, ctx, testCfg.DefaultTimeout)
			if fmt.Sprintf("%+v", p) != fmt.Sprintf("%+v", want) {
				t.Errorf("gateway got %+v, want %+v", p, want)
			}
			return nil
		}
	}
	return []liveCase{
		{
			name: "202 publish", target: "/publish/devices/42/led?qos=0&retain=true&ttl=1h",
			header:  [][2]string{{"Content-Type", "text/plain"}, {"Mqtt-User-Property", "by=ops"}},
			reqBody: []byte("on"),
			publish: published(gateway.Publication{Topic: "devices/42/led", Payload: []byte("on"), ContentType: "text/plain",
				UserProperties: []gateway.UserProperty{{Key: "by", Value: "ops"}}, QoS: 0, Retain: true, TTL: time.Hour}),
			status: 202, ctype: "", wantBody: "", sniffable: true,
		},
		{
			name: "202 publish with defaults", target: "/publish/a%2Fb",
			publish: published(gateway.Publication{Topic: "a/b", Payload: []byte{}, QoS: testCfg.DefaultQoS}),
			status:  202, ctype: "", wantBody: "", sniffable: true,
		},
		{
			name: "401 publish without a key", target: "/publish/devices/1/get", reqBody: []byte("x"),
			cfg:    withAuth,
			status: 401, slug: "unauthorized", hdr: map[string][]string{"Www-Authenticate": {`Bearer realm="mqttgw"`}},
		},
		{
			name: "403 publish outside the key's filters", target: "/publish/admin/shutdown", reqBody: []byte("x"),
			header: [][2]string{{"X-API-Key", testAPIKey}},
			cfg:    withAuth,
			status: 403, slug: "forbidden", detail: "admin/shutdown",
		},
		{
			name: "202 publish with a key for the topic", target: "/publish/devices/1/get",
			header:  [][2]string{{"X-API-Key", testAPIKey}},
			cfg:     withAuth,
			publish: func(*testing.T, context.Context, gateway.Publication) error { return nil },
			status:  202, ctype: "", wantBody: "", sniffable: true,
		},
		{name: "400 publish wildcard", target: "/publish/a/%23", status: 400, slug: "invalid-topic", detail: "wildcard", specRejects: true},
		{name: "400 publish reserved topic", target: "/publish/mqttgw/reply/x", status: 400, slug: "invalid-topic", detail: "mqttgw/reply"},
		{name: "400 publish retain word", target: "/publish/a?retain=yes", status: 400, slug: "invalid-parameter", detail: "true or false", specRejects: true},
		{name: "400 publish ttl below 1s", target: "/publish/a?ttl=500ms", status: 400, slug: "invalid-parameter", detail: "minimum of 1s"},
		{name: "400 publish ttl unparsable", target: "/publish/a?ttl=forever", status: 400, slug: "invalid-parameter", detail: "ttl", specRejects: true},
		{name: "400 publish qos 3", target: "/publish/a?qos=3", status: 400, slug: "invalid-parameter", detail: "0, 1 or 2", specRejects: true},
		{name: "413 publish body", target: "/publish/a", reqBody: tooLargeBody, status: 413, slug: "body-too-large"},
		{
			name: "502 publish rejected", target: "/publish/a",
			publish: func(*testing.T, context.Context, gateway.Publication) error {
				return &gateway.PublishError{ReasonCode: 0x87, Reason: "not authorized"}
			},
			status: 502, slug: "broker-rejected", detail: "0x87",
		},
		{
			name: "503 publish broker unavailable", target: "/publish/a",
			publish: func(*testing.T, context.Context, gateway.Publication) error {
				return fmt.Errorf("%w: connection lost", gateway.ErrNotConnected)
			},
			status: 503, slug: "broker-unavailable", hdr: retryAfter1,
		},
		{
			name: "504 publish not acknowledged", target: "/publish/a",
			publish: func(*testing.T, context.Context, gateway.Publication) error {
				return fmt.Errorf("%w: publish not acknowledged in time", gateway.ErrTimeout)
			},
			status: 504, slug: "timeout",
		},
	}
}

// The request record that the async and /requests cases show.
const (
	testRequestID   = "0d1c5a3e-8f55-4a52-9b0e-2f6a3d7c9e41"
	testRequestPath = "/requests/" + testRequestID
	// testReplyPayload is the stored reply's payload, 14 bytes.
	testReplyPayload = `{"battery":87}`
)

var testCreated = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// testRecord is an async request to devices/7/get with a 5m ttl.
func testRecord(state gateway.State) gateway.Record {
	return gateway.Record{
		ID: testRequestID, Topic: "devices/7/get", State: state, Async: true,
		Created: testCreated, Expires: testCreated.Add(5 * time.Minute), Updated: testCreated.Add(time.Second),
	}
}

// answeredRecord is testRecord answered with testReplyPayload and props.
func answeredRecord(props ...gateway.UserProperty) gateway.Record {
	r := testRecord(gateway.StateAnswered)
	r.Reply = &gateway.Reply{Payload: []byte(testReplyPayload), ContentType: "application/json", UserProperties: props}
	return r
}

// statusJSON is the status document of testRecord in state, as written;
// extra are the members after location.
func statusJSON(state, extra string) string {
	return `{"id":"` + testRequestID + `","topic":"devices/7/get","state":"` + state + `","async":true,` +
		`"created":"2026-01-02T03:04:05Z","expires":"2026-01-02T03:09:05Z","updated":"2026-01-02T03:04:06Z",` +
		`"location":"` + testRequestPath + `"` + extra + "}\n"
}

// replyJSON is the reply member of answeredRecord's status document.
func replyJSON(status int) string {
	return fmt.Sprintf(`,"reply":{"status":%d,"content_type":"application/json","bytes":14,"location":"%s/reply"}`, status, testRequestPath)
}

// lookupSeq answers the gateway's Lookup, Watch and Cancel with recs in
// turn, and with the last one from then on, after checking that owner
// asks for testRequestID.
func lookupSeq(owner string, recs ...gateway.Record) func(*testing.T, string, string) (gateway.Record, error) {
	var n atomic.Int32
	return func(t *testing.T, gotOwner, id string) (gateway.Record, error) {
		if gotOwner != owner || id != testRequestID {
			t.Errorf("gateway asked for request %q of %q, want %q of %q", id, gotOwner, testRequestID, owner)
		}
		return recs[min(int(n.Add(1)), len(recs))-1], nil
	}
}

// lookupFail fails every Lookup, Watch and Cancel with err.
func lookupFail(err error) func(*testing.T, string, string) (gateway.Record, error) {
	return func(*testing.T, string, string) (gateway.Record, error) { return gateway.Record{}, err }
}

// timeoutKept is the gateway's timeout whose late reply is kept in record
// id. TimeoutError's message is unexported; wrapped, it reads as msg.
func timeoutKept(id, msg string) error {
	return fmt.Errorf("%s%w", msg, &gateway.TimeoutError{ID: id, Kept: true})
}

// asyncCases are the live cases of POST /rpc/{topic} with Prefer:
// respond-async, ttl and Idempotency-Key.
func asyncCases() []liveCase {
	accepted := func(applied ...string) map[string][]string {
		return map[string][]string{"Location": {testRequestPath}, "Preference-Applied": {strings.Join(applied, ", ")}, "Cache-Control": noStore}
	}
	return []liveCase{
		{
			name: "202 async", target: "/rpc/devices/7/get?ttl=5m&qos=2",
			header:  [][2]string{{"Prefer", "respond-async"}, {"Content-Type", "text/plain"}, {"Mqtt-User-Property", "by=ops"}},
			reqBody: []byte("status"),
			submit: func(t *testing.T, ctx context.Context, req gateway.Request, ttl time.Duration) (gateway.Record, error) {
				wantDeadline(t, ctx, testCfg.DefaultTimeout)
				want := []gateway.UserProperty{{Key: "by", Value: "ops"}}
				if ttl != 5*time.Minute || req.Topic != "devices/7/get" || req.QoS != 2 || string(req.Payload) != "status" ||
					req.ContentType != "text/plain" || !slices.Equal(req.UserProperties, want) || req.IdempotencyKey != "" || req.WaitForResponder != 0 {
					t.Errorf("gateway got %+v, ttl %s", req, ttl)
				}
				return testRecord(gateway.StatePublished), nil
			},
			status: 202, ctype: "application/json", wantBody: statusJSON("published", ""),
			hdr: accepted("respond-async"),
		},
		{
			name: "202 async with the default ttl, nobody subscribed yet", target: "/rpc/devices/7/get",
			header: [][2]string{{"Prefer", "respond-async"}},
			submit: func(t *testing.T, _ context.Context, req gateway.Request, ttl time.Duration) (gateway.Record, error) {
				if ttl != testCfg.DefaultTTL || req.QoS != testCfg.DefaultQoS {
					t.Errorf("gateway got %+v, ttl %s; want ttl %s", req, ttl, testCfg.DefaultTTL)
				}
				return testRecord(gateway.StateWaiting), nil
			},
			status: 202, ctype: "application/json", wantBody: statusJSON("waiting-for-responder", ""),
			hdr: accepted("respond-async"),
		},
		{
			// Two Prefer headers, an unknown preference ignored, and a
			// wait above --max-timeout applied as --max-timeout.
			name: "202 async answered within the wait", target: "/rpc/devices/7/get?ttl=90",
			header: [][2]string{{"Prefer", "respond-async, handling=lenient"}, {"Prefer", "wait=3600"}},
			submit: func(t *testing.T, _ context.Context, _ gateway.Request, ttl time.Duration) (gateway.Record, error) {
				if ttl != 90*time.Second {
					t.Errorf("gateway got ttl %s, want 90s", ttl)
				}
				return testRecord(gateway.StatePublished), nil
			},
			lookup: lookupSeq("", answeredRecord(gateway.UserProperty{Key: "http-status", Value: "201"})),
			status: 202, ctype: "application/json", wantBody: statusJSON("answered", replyJSON(201)),
			hdr: accepted("respond-async", "wait=60"),
		},
		{
			name: "202 async repeat under an idempotency key", target: "/rpc/devices/7/get",
			header: [][2]string{{"Prefer", "respond-async"}, {"Idempotency-Key", `"order-7"`}},
			submit: func(t *testing.T, _ context.Context, req gateway.Request, _ time.Duration) (gateway.Record, error) {
				if req.IdempotencyKey != "order-7" || req.Fingerprint == "" {
					t.Errorf("gateway got key %q, fingerprint %q", req.IdempotencyKey, req.Fingerprint)
				}
				// The first request's record, as it is now.
				return testRecord(gateway.StateCanceled), nil
			},
			status: 202, ctype: "application/json", wantBody: statusJSON("canceled", ""),
			hdr: accepted("respond-async"),
		},
		{
			name: "422 async idempotency key reused", target: "/rpc/devices/7/get",
			header: [][2]string{{"Prefer", "respond-async"}, {"Idempotency-Key", "order-7"}},
			submit: func(*testing.T, context.Context, gateway.Request, time.Duration) (gateway.Record, error) {
				return testRecord(gateway.StatePublished), fmt.Errorf("%w: key %q was first used for another request", gateway.ErrIdempotencyMismatch, "order-7")
			},
			status: 422, slug: "idempotency-key-reused", detail: "order-7",
		},
		{
			name: "503 async store full", target: "/rpc/devices/7/get",
			header: [][2]string{{"Prefer", "respond-async"}},
			submit: func(*testing.T, context.Context, gateway.Request, time.Duration) (gateway.Record, error) {
				return gateway.Record{}, fmt.Errorf("%w: 100000 records of at most 100000", gateway.ErrStoreFull)
			},
			status: 503, slug: "store-full", detail: "--max-records", hdr: map[string][]string{"Retry-After": {"5"}},
		},
		{
			name: "400 ttl on a synchronous request", target: "/rpc/a?ttl=5m",
			status: 400, slug: "invalid-parameter", detail: "ttl applies to async requests",
		},
		{
			name: "400 timeout on an async request", target: "/rpc/a?timeout=1s",
			header: [][2]string{{"Prefer", "respond-async"}},
			status: 400, slug: "invalid-parameter", detail: "timeout applies to synchronous requests",
		},
		{
			name: "400 wait-for-responder on an async request", target: "/rpc/a?wait-for-responder=5s",
			header: [][2]string{{"Prefer", "respond-async"}},
			status: 400, slug: "invalid-parameter", detail: "wait-for-responder applies to synchronous requests",
		},
		{
			name: "400 ttl below 1s", target: "/rpc/a?ttl=500ms",
			header: [][2]string{{"Prefer", "respond-async"}},
			status: 400, slug: "invalid-parameter", detail: "minimum of 1s",
		},
		{
			name: "400 ttl above max-ttl", target: "/rpc/a?ttl=169h",
			header: [][2]string{{"Prefer", "respond-async"}},
			status: 400, slug: "invalid-parameter", detail: "maximum of " + testCfg.MaxTTL.String(),
		},
		{
			name: "400 ttl unparsable", target: "/rpc/a?ttl=forever",
			header: [][2]string{{"Prefer", "respond-async"}},
			status: 400, slug: "invalid-parameter", detail: "ttl", specRejects: true,
		},
		{
			name: "400 Prefer wait not a number", target: "/rpc/a",
			header: [][2]string{{"Prefer", "respond-async, wait=soon"}},
			status: 400, slug: "invalid-header", detail: "wait",
		},
		{
			name: "400 Prefer wait negative", target: "/rpc/a",
			header: [][2]string{{"Prefer", "respond-async; wait=-1"}, {"Prefer", "wait=-1"}},
			status: 400, slug: "invalid-header", detail: `"-1"`,
		},
		{
			name: "400 Prefer wait on a synchronous request, malformed", target: "/rpc/a",
			header: [][2]string{{"Prefer", "wait=1.5"}},
			status: 400, slug: "invalid-header", detail: "wait",
		},

		// Idempotency keys on synchronous requests.
		{
			name: "200 idempotency key of 255 characters", target: "/rpc/a",
			header: [][2]string{{"Idempotency-Key", `"` + strings.Repeat("k", 255) + `"`}},
			request: func(t *testing.T, _ context.Context, req gateway.Request) (gateway.Reply, error) {
				if req.IdempotencyKey != strings.Repeat("k", 255) || req.Fingerprint == "" {
					t.Errorf("gateway got key %q, fingerprint %q", req.IdempotencyKey, req.Fingerprint)
				}
				return gateway.Reply{Payload: []byte("ok")}, nil
			},
			status: 200, ctype: octetStreamCT, wantBody: "ok",
		},
		{
			name: "422 idempotency key reused", target: "/rpc/a",
			header: [][2]string{{"Idempotency-Key", "k1"}},
			request: func(t *testing.T, _ context.Context, req gateway.Request) (gateway.Reply, error) {
				if req.IdempotencyKey != "k1" {
					t.Errorf("gateway got key %q", req.IdempotencyKey)
				}
				return gateway.Reply{}, fmt.Errorf("%w: key %q was first used for another request", gateway.ErrIdempotencyMismatch, "k1")
			},
			status: 422, slug: "idempotency-key-reused", detail: "new key",
		},
		{
			name: "409 idempotency key in flight", target: "/rpc/a",
			header:  [][2]string{{"Idempotency-Key", "k1"}},
			request: failWith(fmt.Errorf("%w: key %q", gateway.ErrIdempotencyInFlight, "k1")),
			status:  409, slug: "idempotency-key-in-flight", detail: "retry after it ends",
		},
		{
			name: "409 idempotency key of a canceled request", target: "/rpc/a",
			header:  [][2]string{{"Idempotency-Key", "k1"}},
			request: failWith(fmt.Errorf("%w: the first request with idempotency key %q is canceled", gateway.ErrRecordFinal, "k1")),
			status:  409, slug: "request-ended", detail: "canceled",
		},
		{
			name: "400 idempotency key twice", target: "/rpc/a",
			header: [][2]string{{"Idempotency-Key", "k1"}, {"Idempotency-Key", "k2"}},
			status: 400, slug: "invalid-header", detail: "once",
		},
		{
			name: "400 idempotency key with a space", target: "/rpc/a",
			header: [][2]string{{"Idempotency-Key", `"k 1"`}},
			status: 400, slug: "invalid-header", detail: "printable ASCII", specRejects: true,
		},
		{
			name: "400 idempotency key empty", target: "/rpc/a",
			header: [][2]string{{"Idempotency-Key", `""`}},
			status: 400, slug: "invalid-header", detail: "1 to 255", specRejects: true,
		},
		{
			name: "400 idempotency key too long", target: "/rpc/a",
			header: [][2]string{{"Idempotency-Key", strings.Repeat("k", 256)}},
			status: 400, slug: "invalid-header", detail: "1 to 255", specRejects: true,
		},

		// 504: a late reply is kept where Location says.
		{
			name: "504 timeout, late reply kept", target: "/rpc/a?timeout=50ms",
			request: func(t *testing.T, ctx context.Context, _ gateway.Request) (gateway.Reply, error) {
				wantDeadline(t, ctx, 50*time.Millisecond)
				<-ctx.Done()
				return gateway.Reply{}, timeoutKept(testRequestID, `gateway: timeout: no reply on "a" within 50ms`)
			},
			status: 504, slug: "timeout", detail: "kept at " + testRequestPath + " for " + testCfg.ResultTTL.String(),
			hdr: map[string][]string{"Location": {testRequestPath}},
		},
		{
			name: "504 timeout, no room to keep the reply", target: "/rpc/a",
			request: failWith(fmt.Errorf(`gateway: timeout: no reply on "a" within 10s%w`, &gateway.TimeoutError{ID: testRequestID})),
			status:  504, slug: "timeout", detail: "within 10s",
		},
	}
}

// requestsCases are the live cases of /requests/{id} and its reply.
func requestsCases() []liveCase {
	status := map[string][]string{"Cache-Control": noStore}
	failed := testRecord(gateway.StateFailed)
	failed.Error = "gateway: reply too large: the reply is 5000000 bytes; at most 4194304 are allowed"
	unauthorized := map[string][]string{"Www-Authenticate": {`Bearer realm="mqttgw"`}}
	return []liveCase{
		// GET /requests/{id}
		{
			name: "200 request status", method: http.MethodGet, target: testRequestPath,
			lookup: lookupSeq("", testRecord(gateway.StatePublished)),
			status: 200, ctype: "application/json", wantBody: statusJSON("published", ""), hdr: status,
		},
		{
			name: "200 request status after a wait", method: http.MethodGet, target: testRequestPath,
			header: [][2]string{{"Prefer", "wait=5"}},
			lookup: lookupSeq("", testRecord(gateway.StatePublished), answeredRecord()),
			status: 200, ctype: "application/json", wantBody: statusJSON("answered", replyJSON(200)),
			hdr: map[string][]string{"Cache-Control": noStore, "Preference-Applied": {"wait=5"}},
		},
		{
			name: "200 request status, ended: no wait", method: http.MethodGet, target: testRequestPath,
			header: [][2]string{{"Prefer", "wait=5"}},
			lookup: lookupSeq("", testRecord(gateway.StateExpired)),
			status: 200, ctype: "application/json", wantBody: statusJSON("expired", ""), hdr: status,
		},
		{
			name: "200 failed request status", method: http.MethodGet, target: testRequestPath,
			lookup: lookupSeq("", failed),
			status: 200, ctype: "application/json", wantBody: statusJSON("failed", `,"error":"`+failed.Error+`"`), hdr: status,
		},
		{
			name: "200 request status with a bad stored http-status", method: http.MethodGet, target: testRequestPath,
			lookup: lookupSeq("", answeredRecord(gateway.UserProperty{Key: "http-status", Value: "abc"})),
			status: 200, ctype: "application/json", wantBody: statusJSON("answered", replyJSON(502)), hdr: status,
		},
		{
			name: "200 request status with the API key that made it", method: http.MethodGet, target: testRequestPath,
			header: [][2]string{{"X-API-Key", testAPIKey}},
			cfg:    withAuth,
			lookup: lookupSeq("test", testRecord(gateway.StatePublished)),
			status: 200, ctype: "application/json", wantBody: statusJSON("published", ""), hdr: status,
		},
		{
			name: "401 request status without a key", method: http.MethodGet, target: testRequestPath,
			cfg:    withAuth,
			status: 401, slug: "unauthorized", hdr: unauthorized,
		},
		{
			name: "404 malformed request id", method: http.MethodGet, target: "/requests/nope",
			status: 404, slug: "request-not-found", detail: "not a request id", specRejects: true,
		},
		{
			name: "404 upper-case request id", method: http.MethodGet, target: "/requests/" + strings.ToUpper(testRequestID),
			status: 404, slug: "request-not-found", detail: "not a request id", specRejects: true,
		},
		{
			name: "404 unknown request", method: http.MethodGet, target: testRequestPath,
			lookup: lookupFail(gateway.ErrRecordNotFound),
			status: 404, slug: "request-not-found", detail: "--result-ttl",
		},
		{
			name: "400 Prefer wait not a number on GET", method: http.MethodGet, target: testRequestPath,
			header: [][2]string{{"Prefer", "wait=soon"}},
			lookup: lookupSeq("", testRecord(gateway.StatePublished)),
			status: 400, slug: "invalid-header", detail: "wait",
		},
		// POST /batch: what the whole batch is refused for.
		{name: "400 batch as text/plain", target: "/batch", header: [][2]string{{"Content-Type", "text/plain"}},
			reqBody: []byte(`[{"topic":"a"}]`), status: 400, slug: "invalid-header", detail: "application/x-ndjson", specRejects: true},
		{name: "400 empty batch", target: "/batch", header: [][2]string{{"Content-Type", "application/json"}},
			reqBody: []byte(`[]`), status: 400, slug: "invalid-batch", detail: "no requests"},
		{name: "400 batch with a stray parameter", target: "/batch?qos=1", header: [][2]string{{"Content-Type", "application/json"}},
			reqBody: []byte(`[{"topic":"a"}]`), status: 400, slug: "invalid-parameter", detail: "qos"},
		{name: "413 batch above --max-body", target: "/batch", header: [][2]string{{"Content-Type", "application/json"}},
			reqBody: tooLargeBody, status: 413, slug: "body-too-large", detail: "--max-body", specRejects: true},
		{name: "405 POST /requests/{id}", target: testRequestPath, status: 405, slug: "method-not-allowed", unrouted: true,
			hdr: map[string][]string{"Allow": {"GET, DELETE"}}},
		{name: "405 PUT /requests/{id}/reply", method: http.MethodPut, target: testRequestPath + "/reply", status: 405, slug: "method-not-allowed", unrouted: true,
			hdr: map[string][]string{"Allow": {"GET"}}},

		// GET /requests/{id}/reply
		{
			name: "200 stored reply", method: http.MethodGet, target: testRequestPath + "/reply",
			lookup: lookupSeq("", answeredRecord(gateway.UserProperty{Key: "unit", Value: "percent"})),
			status: 200, ctype: "application/json", wantBody: testReplyPayload,
			hdr: map[string][]string{"Cache-Control": noStore, "Mqtt-User-Property": {"unit=percent"}},
		},
		{
			name: "201 stored reply chosen by the responder", method: http.MethodGet, target: testRequestPath + "/reply",
			header: [][2]string{{"Authorization", "Bearer " + testAPIKey}},
			cfg:    withAuth,
			lookup: lookupSeq("test", answeredRecord(gateway.UserProperty{Key: "http-status", Value: "201"}, gateway.UserProperty{Key: "unit", Value: "percent"})),
			status: 201, ctype: "application/json", wantBody: testReplyPayload,
			hdr: map[string][]string{"Cache-Control": noStore, "Mqtt-User-Property": {"http-status=201", "unit=percent"}},
		},
		{
			name: "409 reply not there yet", method: http.MethodGet, target: testRequestPath + "/reply",
			lookup: lookupSeq("", testRecord(gateway.StatePublished)),
			status: 409, slug: "not-answered", detail: "Prefer: wait=N",
		},
		{
			name: "409 reply of an expired request", method: http.MethodGet, target: testRequestPath + "/reply",
			lookup: lookupSeq("", testRecord(gateway.StateExpired)),
			status: 409, slug: "not-answered", detail: "is expired and has no reply",
		},
		{
			name: "409 reply of a failed request", method: http.MethodGet, target: testRequestPath + "/reply",
			lookup: lookupSeq("", failed),
			status: 409, slug: "not-answered", detail: "reply too large",
		},
		{
			name: "502 stored reply with a bad http-status", method: http.MethodGet, target: testRequestPath + "/reply",
			lookup: lookupSeq("", answeredRecord(gateway.UserProperty{Key: "http-status", Value: "abc"})),
			status: 502, slug: "bad-reply", detail: "http-status",
		},
		{
			name: "404 reply of an unknown request", method: http.MethodGet, target: testRequestPath + "/reply",
			lookup: lookupFail(gateway.ErrRecordNotFound),
			status: 404, slug: "request-not-found",
		},
		{
			name: "404 reply of a malformed request id", method: http.MethodGet, target: "/requests/nope/reply",
			status: 404, slug: "request-not-found", specRejects: true,
		},
		{
			name: "401 reply without a key", method: http.MethodGet, target: testRequestPath + "/reply",
			header: [][2]string{{"X-API-Key", "not-a-key"}},
			cfg:    withAuth,
			status: 401, slug: "unauthorized", hdr: unauthorized,
		},

		// DELETE /requests/{id}
		{
			name: "200 cancel", method: http.MethodDelete, target: testRequestPath,
			lookup: lookupSeq("", testRecord(gateway.StateCanceled)),
			status: 200, ctype: "application/json", wantBody: statusJSON("canceled", ""), hdr: status,
		},
		{
			name: "409 cancel an ended request", method: http.MethodDelete, target: testRequestPath,
			lookup: lookupFail(fmt.Errorf("%w: it is answered", gateway.ErrRecordFinal)),
			status: 409, slug: "request-ended", detail: "answered",
		},
		{
			name: "404 cancel an unknown request", method: http.MethodDelete, target: testRequestPath,
			lookup: lookupFail(gateway.ErrRecordNotFound),
			status: 404, slug: "request-not-found",
		},
		{
			name: "404 cancel a malformed request id", method: http.MethodDelete, target: "/requests/0d1c5a3e8f554a529b0e2f6a3d7c9e41",
			status: 404, slug: "request-not-found", detail: "not a request id", specRejects: true,
		},
		{
			name: "401 cancel without a key", method: http.MethodDelete, target: testRequestPath,
			cfg:    withAuth,
			status: 401, slug: "unauthorized", hdr: unauthorized,
		},
	}
}

// streamStep is one thing a fake Stream does with its sink once the
// request is published.
type streamStep func(gateway.StreamSink) error

// replyStep hands the sink a reply; keepaliveStep tells it of a quiet
// interval.
func replyStep(ev gateway.Event) streamStep {
	return func(sink gateway.StreamSink) error { return sink.Reply(ev) }
}

func keepaliveStep(sink gateway.StreamSink) error { return sink.Keepalive() }

// refusedStep hands the sink a reply it must refuse as one too many
// bytes (ErrStreamFull).
func refusedStep(ev gateway.Event) streamStep {
	return func(sink gateway.StreamSink) error {
		if err := sink.Reply(ev); !errors.Is(err, gateway.ErrStreamFull) {
			return fmt.Errorf("reply %d: sink said %v, want ErrStreamFull", ev.Seq, err)
		}
		return nil
	}
}

// streamWith is a gateway's Stream: it checks the request's deadline and
// how it collects, publishes it to reached subscribers (-1: not known),
// takes the steps and ends with end.
func streamWith(timeout time.Duration, want gateway.Collect, reached int, end gateway.StreamEnd, steps ...streamStep) func(*testing.T, context.Context, gateway.Request, gateway.Collect, gateway.StreamSink) (gateway.StreamEnd, error) {
	return func(t *testing.T, ctx context.Context, _ gateway.Request, c gateway.Collect, sink gateway.StreamSink) (gateway.StreamEnd, error) {
		wantDeadline(t, ctx, timeout)
		if c != want {
			t.Errorf("gateway got %+v, want %+v", c, want)
		}
		if err := sink.Published(reached); err != nil {
			t.Errorf("Published: %v", err)
		}
		for i, step := range steps {
			if err := step(sink); err != nil {
				t.Errorf("step %d: %v", i+1, err)
			}
		}
		end.Reached = reached
		return end, nil
	}
}

// failStream fails a request for many replies before it is published.
func failStream(err error) func(*testing.T, context.Context, gateway.Request, gateway.Collect, gateway.StreamSink) (gateway.StreamEnd, error) {
	return func(*testing.T, context.Context, gateway.Request, gateway.Collect, gateway.StreamSink) (gateway.StreamEnd, error) {
		return gateway.StreamEnd{}, err
	}
}

// The replies of the stream and gather cases, and their JSON.
var (
	progressEvent = gateway.Event{Seq: 1, Received: testCreated, Reply: gateway.Reply{
		Payload: []byte("charging"), ContentType: "text/plain",
		UserProperties: []gateway.UserProperty{{Key: "progress", Value: "40%"}},
	}}
	finalEvent = gateway.Event{Seq: 2, Final: true, Received: testCreated.Add(1500 * time.Millisecond), Reply: gateway.Reply{
		Payload: []byte(testReplyPayload), ContentType: "application/json",
		UserProperties: []gateway.UserProperty{{Key: "http-status", Value: "201"}, {Key: "unit", Value: "percent"}},
	}}
	// binaryEvent's payload is no UTF-8: base64 in JSON.
	binaryEvent = gateway.Event{Seq: 3, Final: true, Received: testCreated.Add(2 * time.Second), Reply: gateway.Reply{
		Payload: []byte{0xff, 0xfe, 0},
	}}
	// badStatusEvent's http-status is no status: 502 in JSON.
	badStatusEvent = gateway.Event{Seq: 2, Final: true, Received: testCreated.Add(time.Second), Reply: gateway.Reply{
		Payload: []byte("ok"), UserProperties: []gateway.UserProperty{{Key: "http-status", Value: "abc"}},
	}}
)

const (
	progressJSON  = `{"type":"reply","seq":1,"final":false,"status":200,"content_type":"text/plain","payload":"charging","user_properties":[{"key":"progress","value":"40%"}],"received":"2026-01-02T03:04:05Z"}`
	finalJSON     = `{"type":"reply","seq":2,"final":true,"status":201,"content_type":"application/json","payload":"{\"battery\":87}","user_properties":[{"key":"http-status","value":"201"},{"key":"unit","value":"percent"}],"received":"2026-01-02T03:04:06.5Z"}`
	binaryJSON    = `{"type":"reply","seq":3,"final":true,"status":200,"content_type":"","payload":"//4A","payload_encoding":"base64","user_properties":[],"received":"2026-01-02T03:04:07Z"}`
	badStatusJSON = `{"type":"reply","seq":2,"final":true,"status":502,"content_type":"","payload":"ok","user_properties":[{"key":"http-status","value":"abc"}],"received":"2026-01-02T03:04:06Z"}`
)

// streamCases are the live cases of POST /rpc/{topic} that take many
// replies: streams (Accept: text/event-stream or application/x-ndjson)
// and gathers (?collect, ?max-replies).
func streamCases() []liveCase {
	streaming := func(ct string) [][2]string { return [][2]string{{"Accept", ct}} }
	streamHdr := map[string][]string{"Cache-Control": noStore, "X-Accel-Buffering": {"no"}}
	gathered := func(end, reached string) map[string][]string {
		h := map[string][]string{"Gather-End": {end}}
		if reached != "" {
			h["Gather-Reached"] = []string{reached}
		}
		return h
	}
	sse := func(name, id, data string) string {
		if id != "" {
			id = "id: " + id + "\n"
		}
		return "event: " + name + "\n" + id + "data: " + data + "\n\n"
	}
	return []liveCase{
		// Streams
		{
			name: "200 event stream", target: "/rpc/devices/7/charge?max-replies=5",
			header:  [][2]string{{"Accept", "text/event-stream"}, {"Content-Type", "text/plain"}},
			reqBody: []byte("full"),
			stream: func(t *testing.T, ctx context.Context, req gateway.Request, c gateway.Collect, sink gateway.StreamSink) (gateway.StreamEnd, error) {
				if req.Topic != "devices/7/charge" || string(req.Payload) != "full" || req.ContentType != "text/plain" {
					t.Errorf("gateway got %+v", req)
				}
				return streamWith(testCfg.DefaultTimeout, gateway.Collect{MaxReplies: 5, Keepalive: keepaliveInterval}, 2,
					gateway.StreamEnd{Reason: gateway.EndComplete, Replies: 3},
					replyStep(progressEvent), keepaliveStep, replyStep(finalEvent), replyStep(binaryEvent),
				)(t, ctx, req, c, sink)
			},
			status: 200, ctype: "text/event-stream", hdr: streamHdr,
			wantBody: sse("reply", "1", progressJSON) + ": keep-alive\n\n" + sse("reply", "2", finalJSON) + sse("reply", "3", binaryJSON) +
				sse("end", "", `{"type":"end","reason":"complete","replies":3,"reached":2}`),
		},
		{
			// An external broker: how many subscribers is not known.
			name: "200 NDJSON stream, gathering for a window", target: "/rpc/devices/all/battery?collect=2s",
			header: [][2]string{{"Accept", "application/json;q=0.5, application/x-ndjson"}},
			stream: streamWith(2*time.Second, gateway.Collect{Window: true, MaxReplies: testCfg.MaxReplies, Keepalive: keepaliveInterval}, -1,
				gateway.StreamEnd{Reason: gateway.EndWindow, Replies: 2},
				replyStep(progressEvent), keepaliveStep, replyStep(badStatusEvent),
			),
			status: 200, ctype: "application/x-ndjson", hdr: streamHdr,
			wantBody: progressJSON + "\n" + `{"type":"keepalive"}` + "\n" + badStatusJSON + "\n" +
				`{"type":"end","reason":"window","replies":2,"reached":null}` + "\n",
		},
		{
			name: "200 event stream that timed out", target: "/rpc/devices/7/charge?timeout=1s",
			header: streaming("text/event-stream"),
			stream: streamWith(time.Second, gateway.Collect{MaxReplies: testCfg.MaxReplies, Keepalive: keepaliveInterval}, 1,
				gateway.StreamEnd{Reason: gateway.EndTimeout, Replies: 1, Detail: "no final reply within 1s"},
				replyStep(progressEvent),
			),
			status: 200, ctype: "text/event-stream", hdr: streamHdr,
			wantBody: sse("reply", "1", progressJSON) +
				sse("end", "", `{"type":"end","reason":"timeout","replies":1,"reached":1,"detail":"no final reply within 1s"}`),
		},
		{
			name: "503 event stream nobody subscribed", target: "/rpc/devices/7/charge",
			header: streaming("text/event-stream"),
			stream: failStream(fmt.Errorf("%w on %q", gateway.ErrNoResponders, "devices/7/charge")),
			status: 503, slug: "no-responders",
		},

		// Gathers
		{
			name: "200 gather for a window", target: "/rpc/devices/all/battery?collect=2s&max-replies=10",
			stream: streamWith(2*time.Second, gateway.Collect{Window: true, MaxReplies: 10}, 3,
				gateway.StreamEnd{Reason: gateway.EndWindow, Replies: 3},
				replyStep(progressEvent), replyStep(finalEvent), replyStep(binaryEvent),
			),
			status: 200, ctype: "application/json", hdr: gathered("window", "3"), schema: "GatherReplies",
			wantBody: "[" + progressJSON + "," + finalJSON + "," + binaryJSON + "]\n",
		},
		{
			// An external broker; the timeout bounds the gather.
			name: "200 gather of max-replies", target: "/rpc/devices/all/battery?max-replies=2&timeout=3s",
			header: [][2]string{{"Accept", "application/json"}},
			stream: streamWith(3*time.Second, gateway.Collect{MaxReplies: 2}, -1,
				gateway.StreamEnd{Reason: gateway.EndMaxReplies, Replies: 2},
				replyStep(progressEvent), replyStep(badStatusEvent),
			),
			status: 200, ctype: "application/json", hdr: gathered("max-replies", ""), schema: "GatherReplies",
			wantBody: "[" + progressJSON + "," + badStatusJSON + "]\n",
		},
		{
			// The replies together may be at most --max-reply bytes: the
			// first two take 8+10+8+3 and 14+16+11+3+4+7 (84), the third
			// 3 more.
			name: "200 gather ended by max-reply", target: "/rpc/devices/all/battery?collect=2s",
			cfg: func(_ *testing.T, c *Config) { c.MaxReply = 85 },
			stream: streamWith(2*time.Second, gateway.Collect{Window: true, MaxReplies: testCfg.MaxReplies}, 3,
				gateway.StreamEnd{Reason: gateway.EndMaxBytes, Replies: 2},
				replyStep(progressEvent), replyStep(finalEvent), refusedStep(binaryEvent),
			),
			status: 200, ctype: "application/json", hdr: gathered("max-bytes", "3"), schema: "GatherReplies",
			wantBody: "[" + progressJSON + "," + finalJSON + "]\n",
		},
		{
			name: "504 gather without a reply", target: "/rpc/devices/all/battery?collect=100ms",
			stream: streamWith(100*time.Millisecond, gateway.Collect{Window: true, MaxReplies: testCfg.MaxReplies}, 2,
				gateway.StreamEnd{Reason: gateway.EndWindow}),
			status: 504, slug: "timeout", detail: "reached 2 subscriber(s) and none replied within 100ms",
		},
		{
			name: "503 gather nobody subscribed", target: "/rpc/devices/all/battery?collect=2s",
			stream: failStream(fmt.Errorf("%w on %q", gateway.ErrNoResponders, "devices/all/battery")),
			status: 503, slug: "no-responders",
		},

		// Refused before they reach the gateway.
		{name: "400 collect above max-timeout", target: "/rpc/a?collect=61s", status: 400, slug: "invalid-parameter", detail: "collect \"61s\" is above the maximum of 1m0s"},
		{name: "400 collect below 1ms", target: "/rpc/a?collect=0", status: 400, slug: "invalid-parameter", detail: "minimum of 1ms"},
		{name: "400 collect unparsable", target: "/rpc/a?collect=soon", status: 400, slug: "invalid-parameter", detail: "collect", specRejects: true},
		{name: "400 collect with timeout", target: "/rpc/a?collect=2s&timeout=1s", status: 400, slug: "invalid-parameter", detail: "collect or timeout, not both"},
		{name: "400 collect and wait-for-responder above max-timeout", target: "/rpc/a?collect=40s&wait-for-responder=30s", status: 400, slug: "invalid-parameter", detail: "above the maximum of 1m0s"},
		{name: "400 max-replies 0", target: "/rpc/a?max-replies=0", status: 400, slug: "invalid-parameter", detail: "from 1 to 1000 (--max-replies)", specRejects: true},
		{name: "400 max-replies not a number", target: "/rpc/a?max-replies=all", status: 400, slug: "invalid-parameter", detail: `"all"`, specRejects: true},
		{name: "400 max-replies above --max-replies", target: "/rpc/a?max-replies=1001", status: 400, slug: "invalid-parameter", detail: "from 1 to 1000"},
		{name: "400 max-replies with a leading zero", target: "/rpc/a?max-replies=05", status: 400, slug: "invalid-parameter", detail: `"05"`},
		{name: "400 max-replies twice", target: "/rpc/a?max-replies=1&max-replies=2", status: 400, slug: "invalid-parameter", detail: "once"},
		{
			name: "400 max-replies above a lower --max-replies", target: "/rpc/a?max-replies=11",
			cfg:    func(_ *testing.T, c *Config) { c.MaxReplies = 10 },
			status: 400, slug: "invalid-parameter", detail: "from 1 to 10 (--max-replies)",
		},
		{
			name: "400 Accept names both streams", target: "/rpc/a",
			header: [][2]string{{"Accept", "text/event-stream, application/x-ndjson"}},
			status: 400, slug: "invalid-header", detail: "names both",
		},
		{
			name: "400 Accept names both streams in two headers", target: "/rpc/a",
			header: [][2]string{{"Accept", "application/x-ndjson"}, {"Accept", "text/event-stream;q=0.1"}},
			status: 400, slug: "invalid-header", detail: "names both",
		},
		{
			name: "400 async stream", target: "/rpc/a",
			header: [][2]string{{"Accept", "text/event-stream"}, {"Prefer", "respond-async"}},
			status: 400, slug: "invalid-header", detail: "can't be async",
		},
		{
			name: "400 collect on an async request", target: "/rpc/a?collect=2s",
			header: [][2]string{{"Prefer", "respond-async"}},
			status: 400, slug: "invalid-parameter", detail: "collect applies to synchronous requests",
		},
		{
			name: "400 max-replies on an async request", target: "/rpc/a?max-replies=3",
			header: [][2]string{{"Prefer", "respond-async"}},
			status: 400, slug: "invalid-parameter", detail: "max-replies applies to synchronous requests",
		},
		{
			name: "400 idempotency key on a stream", target: "/rpc/a",
			header: [][2]string{{"Accept", "application/x-ndjson"}, {"Idempotency-Key", `"k1"`}},
			status: 400, slug: "invalid-header", detail: "not to streams and gathers",
		},
		{
			name: "400 idempotency key on a gather", target: "/rpc/a?max-replies=3",
			header: [][2]string{{"Idempotency-Key", "k1"}},
			status: 400, slug: "invalid-header", detail: "not to streams and gathers",
		},
		{
			name: "400 reserved user property", target: "/rpc/a",
			header: [][2]string{{"Mqtt-User-Property", "mqttgw-seq=1"}},
			status: 400, slug: "invalid-header", detail: "mqttgw-",
		},

		// A stream that is not asked for: one reply, progress or not.
		{
			name: "200 Accept without a stream", target: "/rpc/a",
			header:  [][2]string{{"Accept", "text/event-stream;q=0, */*"}},
			request: replyWith(gateway.Reply{Payload: []byte("ok")}),
			status:  200, ctype: octetStreamCT, wantBody: "ok",
		},
	}
}
