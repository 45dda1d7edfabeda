package main

// Operations: metrics, overload protection, request logs, TLS, and a
// bounded soak.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// startLogged is mustStart with the gateway's JSON log captured.
func startLogged(t *testing.T, cfg config) (*app, string, *gatewaytest.Buffer) {
	t.Helper()
	logs := &gatewaytest.Buffer{}
	a, _ := launch(t, cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: cfg.LogLevel})))
	base := "http://" + a.httpAddr
	if cfg.TLS == nil {
		waitReady(t, base)
	}
	return a, base, logs
}

func TestMetrics(t *testing.T) {
	a, base := mustStart(t, testConfig(t))
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/echo", 1, gatewaytest.Echo)
	gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader("x"))
	gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader("x"))
	gatewaytest.Post(t, base+"/rpc/nobody", nil)
	gatewaytest.Post(t, base+"/rpc/a/%23", nil)

	req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	r := gatewaytest.Do(t, nil, req)
	if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %q", r.Status, r.Header.Get("Content-Type"))
	}
	body := string(r.Body)
	for _, want := range []string{
		`mqttgw_rpc_requests_total{outcome="ok"} 2`,
		`mqttgw_rpc_requests_total{outcome="no_responders"} 1`,
		`mqttgw_rpc_requests_total{outcome="invalid"} 1`,
		`mqttgw_http_requests_total{code="200",method="POST",route="/rpc/*"} 2`,
		`mqttgw_http_requests_total{code="503",method="POST",route="/rpc/*"} 1`,
		`mqttgw_rpc_duration_seconds_count 3`,
		"mqttgw_rpc_inflight_requests 0",
		"mqttgw_pending_requests 0",
		"mqttgw_broker_connected 1",
		"mqttgw_broker_reconnects_total 0",
		"mqttgw_late_replies_total 0",
		"mqttgw_duplicate_replies_total 0",
		"mqttgw_unknown_replies_total 0",
		"mqttgw_dropped_user_properties_total 0",
		"mqttgw_embedded_broker_clients_connected 1",
		"mqttgw_embedded_broker_messages_received_total",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Topics are unbounded: no series may carry one.
	if strings.Contains(body, "svc/echo") || strings.Contains(body, `topic="`) {
		t.Error("a metric is labelled with a topic")
	}
}

// TestMaxInflight fills the bound with waiting requests: the next one is
// refused at once with 503 and Retry-After, not queued.
func TestMaxInflight(t *testing.T) {
	a, base := mustStart(t, testConfig(t, "--max-inflight", "2"))
	release := make(chan struct{})
	got := make(chan struct{}, 2)
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/hold", 1, func(req *paho.Publish) *paho.Publish {
		got <- struct{}{}
		<-release
		return gatewaytest.Echo(req)
	})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if r := gatewaytest.Post(t, base+"/rpc/svc/hold", strings.NewReader("held")); r.Status != 200 {
				t.Errorf("held request: %d", r.Status)
			}
		})
	}
	<-got
	<-got
	start := time.Now()
	r := gatewaytest.Post(t, base+"/rpc/svc/hold", nil)
	gatewaytest.WantProblem(t, r, 503, "overloaded", "max-inflight")
	if r.Header.Get("Retry-After") != "1" || time.Since(start) > 2*time.Second {
		t.Errorf("Retry-After %q after %s", r.Header.Get("Retry-After"), time.Since(start))
	}
	close(release)
	wg.Wait()
	if r := gatewaytest.Post(t, base+"/rpc/svc/hold", strings.NewReader("again")); r.Status != 200 {
		t.Fatalf("after the bound freed up: %d", r.Status)
	}
}

func TestRequestLogLine(t *testing.T) {
	cfg := testConfig(t, "--log-format", "json")
	a, base, logs := startLogged(t, cfg)
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/echo", 1, gatewaytest.Echo)
	gatewaytest.Post(t, base+"/rpc/svc%2Fecho", strings.NewReader("x"), "X-Request-Id", "req-42", "X-Forwarded-For", "203.0.113.9")

	var line map[string]any
	for _, l := range logs.JSONLines(t, "request") {
		if l["request_id"] == "req-42" {
			line = l
		}
	}
	if line == nil {
		t.Fatalf("no request line for req-42 in:\n%s", logs.String())
	}
	if line["level"] != "INFO" || line["method"] != "POST" || line["topic"] != "svc/echo" || line["status"] != float64(200) ||
		line["outcome"] != "ok" || line["duration"] == nil {
		t.Errorf("request line %v", line)
	}
	// No --trusted-proxies: a client's X-Forwarded-For is not believed.
	if line["client_ip"] != "127.0.0.1" {
		t.Errorf("client_ip %v, want 127.0.0.1", line["client_ip"])
	}
}

func TestHeaderLimit(t *testing.T) {
	_, base := mustStart(t, testConfig(t, "--max-header-bytes", "4KiB"))
	r := gatewaytest.Post(t, base+"/rpc/svc/x", nil, "Mqtt-User-Property", "k="+strings.Repeat("v", 8<<10))
	if r.Status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", r.Status)
	}
}

// TestTLSFlags: --tls-cert and --tls-key serve HTTPS (and the healthcheck
// speaks it), and --mqtt-tls-addr serves MQTT over TLS, with certificates
// made here.
func TestTLSFlags(t *testing.T) {
	pki := gatewaytest.NewPKI(t)
	cfg := testConfig(t, "--tls-cert", pki.ServerCert, "--tls-key", pki.ServerKey, "--mqtt-tls-addr", "127.0.0.1:0")
	a, _, _ := startLogged(t, cfg)

	tlsCfg := pki.ClientTLS(t, false)
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/echo", 1, gatewaytest.Echo)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer client.CloseIdleConnections()
	resp, err := client.Post("https://"+a.httpAddr+"/rpc/svc/echo", "text/plain", strings.NewReader("over https"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "over https" {
		t.Fatalf("https: %d %q", resp.StatusCode, body)
	}

	// The container healthcheck speaks HTTPS when the gateway does.
	env := func(k string) string {
		return map[string]string{"MQTTGW_HTTP_ADDR": a.httpAddr, "MQTTGW_TLS_CERT": pki.ServerCert}[k]
	}
	if err := run(context.Background(), []string{"healthcheck"}, env, io.Discard, io.Discard); err != nil {
		t.Errorf("healthcheck of an HTTPS gateway: %v", err)
	}

	// A real MQTT client over mqtts:// answers a request.
	gatewaytest.StartResponderWith(t, "mqtts://"+a.broker.TLSAddr(), gatewaytest.ClientOptions{TLS: tlsCfg}, "svc/tls", 1,
		func(*paho.Publish) *paho.Publish { return &paho.Publish{QoS: 1, Payload: []byte("via mqtts")} })
	resp, err = client.Post("https://"+a.httpAddr+"/rpc/svc/tls", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "via mqtts" {
		t.Fatalf("responder over mqtts: %d %q", resp.StatusCode, body)
	}
}

// TestSoak sends many requests with a mix of outcomes — answered, timed
// out, and abandoned by clients hanging up — and checks that nothing is
// left behind: the pending map is empty, goroutines are back to the
// baseline, and resident memory has not grown. MQTTGW_SOAK_REQUESTS sets
// the count (default 10,000; CI runs 100,000 without -race).
func TestSoak(t *testing.T) {
	n := 10_000
	if v := os.Getenv("MQTTGW_SOAK_REQUESTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("MQTTGW_SOAK_REQUESTS=%q: %v", v, err)
		}
	}
	if testing.Short() {
		n = 1000
	}
	a, base := mustStart(t, testConfig(t, "--log-level", "error"))
	broker := "mqtt://" + a.broker.Addr()
	gatewaytest.StartResponder(t, broker, "soak/echo", 1, gatewaytest.Echo)
	gatewaytest.StartResponder(t, broker, "soak/silent", 1, func(*paho.Publish) *paho.Publish { return nil })
	gatewaytest.StartResponder(t, broker, "soak/slow", 1, func(req *paho.Publish) *paho.Publish {
		time.Sleep(50 * time.Millisecond)
		return gatewaytest.Echo(req)
	})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()

	var ok, timedOut, hungUp, other atomic.Int64
	run := func(count int) {
		sem := make(chan struct{}, 64)
		var wg sync.WaitGroup
		for i := range count {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				target, body := base+"/rpc/soak/echo", fmt.Sprintf("req-%d", i)
				switch i % 20 {
				case 0, 1: // 10% run into their timeout
					target = base + "/rpc/soak/silent?timeout=50ms"
				case 2: // 5% hang up while the gateway waits
					target = base + "/rpc/soak/slow"
					time.AfterFunc(10*time.Millisecond, cancel)
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(body))
				resp, err := client.Do(req)
				if errors.Is(err, context.Canceled) {
					hungUp.Add(1)
					return
				}
				if err != nil {
					other.Add(1)
					t.Errorf("request %d: %v", i, err)
					return
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == 200 && bytes.Equal(got, []byte(body)):
					ok.Add(1)
				case resp.StatusCode == 504:
					timedOut.Add(1)
				default:
					other.Add(1)
					t.Errorf("request %d to %s: %d %q", i, target, resp.StatusCode, got)
				}
			})
		}
		wg.Wait()
	}

	settle := func() (goroutines int, rss uint64) {
		client.CloseIdleConnections()
		gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool { return a.gw.Stats().Pending == 0 })
		runtime.GC()
		debug.FreeOSMemory()
		return runtime.NumGoroutine(), residentBytes(t)
	}
	run(min(2000, n)) // warm up: pools, buffers, connections
	baseG, baseRSS := settle()
	ok.Store(0)
	timedOut.Store(0)
	hungUp.Store(0)
	start := time.Now()
	run(n)
	elapsed := time.Since(start)
	var afterG int
	var afterRSS uint64
	// Goroutines of hung-up connections end shortly after; wait for them.
	gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool {
		afterG, afterRSS = settle()
		return afterG <= baseG+5
	})
	t.Logf("%d requests in %s: %d ok, %d timed out, %d hung up, %d other; goroutines %d → %d; RSS %d → %d MiB",
		n, elapsed.Round(time.Millisecond), ok.Load(), timedOut.Load(), hungUp.Load(), other.Load(), baseG, afterG, baseRSS>>20, afterRSS>>20)

	if st := a.gw.Stats(); st.Pending != 0 {
		t.Errorf("%d pending entries left", st.Pending)
	}
	if got := ok.Load() + timedOut.Load() + hungUp.Load(); got != int64(n) {
		t.Errorf("%d of %d requests accounted for", got, n)
	}
	if timedOut.Load() < int64(n/10)-int64(n/100) {
		t.Errorf("only %d timed out; the mix should time out 10%%", timedOut.Load())
	}
	// RSS may wobble with the GC; growth proportional to the request count
	// would be a leak (100k leaked entries are far more than this).
	if afterRSS > baseRSS+48<<20 {
		t.Errorf("resident memory grew from %d to %d MiB", baseRSS>>20, afterRSS>>20)
	}
}

// residentBytes is this process's resident set size, from /proc.
func residentBytes(t *testing.T) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Skip("no VmRSS in /proc/self/status")
	return 0
}
