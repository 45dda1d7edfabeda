package api

// /requests and async requests over HTTP, on a real gateway and embedded
// broker: what each bad input gets, that a record shows only to the API
// key that made it, and that the store's limit is a clear 503.

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// asyncServer serves the API on a gateway over an embedded broker, with
// two API keys, and returns its URL and the broker's.
func asyncServer(t *testing.T, gcfg gateway.Config) (base, brokerURL string) {
	t.Helper()
	b, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	gcfg.SoleGateway = true
	g, err := gateway.New(gcfg, b.Transport())
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(context.Background()) })
	path := filepath.Join(t.TempDir(), "keys.yaml")
	gatewaytest.WriteKeys(t, path,
		gatewaytest.Key{Name: "alice", Key: "alice-key-0123456789abcdef", Topics: []string{"#"}},
		gatewaytest.Key{Name: "bob", Key: "bob-key-0123456789abcdef01", Topics: []string{"#"}},
		gatewaytest.Key{Name: "carol", Key: carol, Topics: []string{"allowed/#"}})
	auth, err := NewAuthenticator(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testCfg
	cfg.Auth = auth
	srv := newLocalServer(t, NewServer(nil, g, cfg))
	return srv.URL, "mqtt://" + b.Addr()
}

const (
	alice = "alice-key-0123456789abcdef"
	bob   = "bob-key-0123456789abcdef01"
	carol = "carol-key-0123456789abcdef" // may publish under allowed/ only
)

// call sends method url with key and headers (name, value, ...).
func call(t *testing.T, method, url, key string, header ...string) gatewaytest.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return gatewaytest.Do(t, nil, req)
}

func TestRequestsBadInput(t *testing.T) {
	t.Parallel()
	base, brokerURL := asyncServer(t, gateway.Config{})
	got := make(chan struct{}, 10)
	gatewaytest.StartResponder(t, brokerURL, "hold/+", 1, func(*paho.Publish) *paho.Publish {
		got <- struct{}{}
		return nil
	})
	async := func(query string, header ...string) gatewaytest.Response {
		return gatewaytest.Post(t, base+"/rpc/hold/1"+query, strings.NewReader("x"),
			append([]string{"Authorization", "Bearer " + alice, "Prefer", "respond-async"}, header...)...)
	}
	r := async("?ttl=1m", "Prefer", "handling=lenient, foo")
	if r.Status != http.StatusAccepted {
		t.Fatalf("async with unknown preferences: %d %s", r.Status, r.Body)
	}
	<-got
	var doc struct{ ID, State string }
	if err := json.Unmarshal(r.Body, &doc); err != nil || doc.State != "published" {
		t.Fatalf("status document %s: %v", r.Body, err)
	}
	if pa := r.Header.Get("Preference-Applied"); pa != "respond-async" {
		t.Fatalf("Preference-Applied %q", pa)
	}
	url := base + "/requests/" + doc.ID

	for _, c := range []struct {
		name         string
		r            gatewaytest.Response
		status       int
		slug, detail string
	}{
		{"ttl zero", async("?ttl=0"), 400, "invalid-parameter", "below the minimum of 1s"},
		{"ttl not a duration", async("?ttl=soon"), 400, "invalid-parameter", `ttl "soon" is not a duration`},
		{"ttl above max-ttl", async("?ttl=200h"), 400, "invalid-parameter", "above the maximum of 168h"},
		{"ttl on a sync request", gatewaytest.Post(t, base+"/rpc/hold/1?ttl=5m", nil, "Authorization", "Bearer "+alice), 400, "invalid-parameter", "ttl applies to async requests"},
		{"timeout on an async request", async("?timeout=5s"), 400, "invalid-parameter", "timeout applies to synchronous requests"},
		{"qos 0 async", async("?qos=0"), 400, "invalid-parameter", "qos 0 can't wait"},
		{"bad Prefer wait", async("", "Prefer", "wait=soon"), 400, "invalid-header", `wait="soon"`},
		{"Idempotency-Key twice", async("", "Idempotency-Key", "a", "Idempotency-Key", "b"), 400, "invalid-header", "given 2 times"},
		{"Idempotency-Key with a space", async("", "Idempotency-Key", `"a b"`), 400, "invalid-header", "printable ASCII"},
		{"malformed id", call(t, "GET", base+"/requests/not-an-id", alice), 404, "request-not-found", "is not a request id"},
		{"unknown id", call(t, "GET", base+"/requests/0d1c5a3e-8f55-4a52-9b0e-2f6a3d7c9e41", alice), 404, "request-not-found", "no such request for this API key"},
		{"upper-case id", call(t, "GET", base+"/requests/"+strings.ToUpper(doc.ID), alice), 404, "request-not-found", "is not a request id"},
		{"another key's id", call(t, "GET", url, bob), 404, "request-not-found", "no such request for this API key"},
		{"another key's reply", call(t, "GET", url+"/reply", bob), 404, "request-not-found", "no such request"},
		{"another key cancels", call(t, "DELETE", url, bob), 404, "request-not-found", "no such request"},
		{"no key", call(t, "GET", url, ""), 401, "unauthorized", ""},
		{"reply before the answer", call(t, "GET", url+"/reply", alice), 409, "not-answered", "is published"},
		{"wildcard publish", gatewaytest.Post(t, base+"/publish/a/%2B/b", nil, "Authorization", "Bearer "+alice), 400, "invalid-topic", "wildcard"},
		{"reserved publish", gatewaytest.Post(t, base+"/publish/mqttgw/reply/records/x", nil, "Authorization", "Bearer "+alice), 400, "invalid-topic", "mqttgw/reply"},
	} {
		t.Run(c.name, func(t *testing.T) {
			gatewaytest.WantProblem(t, c.r, c.status, c.slug, c.detail)
		})
	}

	// Long-poll: the state doesn't change within wait=1, so the same
	// document comes back after a second, saying the preference applied.
	start := time.Now()
	r = call(t, "GET", url, alice, "Prefer", "wait=1")
	if r.Status != 200 || time.Since(start) < time.Second || r.Header.Get("Preference-Applied") != "wait=1" {
		t.Fatalf("long poll: %d after %s, Preference-Applied %q", r.Status, time.Since(start), r.Header.Get("Preference-Applied"))
	}
	// Cancel, then cancel again.
	r = call(t, "DELETE", url, alice)
	if r.Status != 200 || !strings.Contains(string(r.Body), `"state":"canceled"`) {
		t.Fatalf("cancel: %d %s", r.Status, r.Body)
	}
	gatewaytest.WantProblem(t, call(t, "DELETE", url, alice), 409, "request-ended", "canceled")
	gatewaytest.WantProblem(t, call(t, "GET", url+"/reply", alice), 409, "not-answered", "is canceled")
	if r := call(t, "GET", base+"/healthz", ""); r.Status != 200 {
		t.Fatalf("the gateway stopped serving: %d", r.Status)
	}
}

// A full store refuses new async requests with a 503 that says why, and
// a timed-out synchronous request then can't keep its late reply, which
// its 504 does not promise.
func TestRequestsStoreFull(t *testing.T) {
	t.Parallel()
	base, brokerURL := asyncServer(t, gateway.Config{MaxRecords: 1})
	gatewaytest.StartResponder(t, brokerURL, "hold/+", 1, func(*paho.Publish) *paho.Publish { return nil })
	post := func(query string, header ...string) gatewaytest.Response {
		return gatewaytest.Post(t, base+"/rpc/hold/1"+query, nil, append([]string{"Authorization", "Bearer " + alice}, header...)...)
	}
	if r := post("", "Prefer", "respond-async"); r.Status != 202 {
		t.Fatalf("first: %d %s", r.Status, r.Body)
	}
	r := post("", "Prefer", "respond-async")
	gatewaytest.WantProblem(t, r, 503, "store-full", "--max-records")
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("store-full without Retry-After")
	}
	r = post("?timeout=50ms")
	gatewaytest.WantProblem(t, r, 504, "timeout", "no reply")
	if r.Header.Get("Location") != "" || strings.Contains(string(r.Body), "kept at") {
		t.Fatalf("a 504 promised to keep a reply in a full store: %v %s", r.Header, r.Body)
	}
}
