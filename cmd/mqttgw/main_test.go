package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func TestMain(m *testing.M) { gatewaytest.Main(m) }

// testConfig is the default configuration on loopback ports chosen by the OS.
func testConfig(t testing.TB, args ...string) config {
	t.Helper()
	cfg, err := parseConfig(append([]string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"}, args...),
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// launch starts the whole gateway as main does. stop ends it as a signal
// would and returns wait's error; it runs at cleanup too, and only once.
func launch(t testing.TB, cfg config, log *slog.Logger) (a *app, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := start(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.wait(ctx) }()
	stop = sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("wait: %v", err)
		}
	})
	return a, stop
}

// mustStart starts the gateway, waits until it is ready, and returns it
// with its base URL.
func mustStart(t testing.TB, cfg config) (*app, string) {
	t.Helper()
	a, _ := launch(t, cfg, slog.New(slog.DiscardHandler))
	base := "http://" + a.httpAddr
	waitReady(t, base)
	return a, base
}

// waitReady polls /readyz until it answers 200.
func waitReady(t testing.TB, base string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz not 200 within 10s (last: %v)", base, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEndToEnd(t *testing.T) {
	a, base := mustStart(t, testConfig(t, "--max-body", "1KiB"))
	brokerURL := "mqtt://" + a.broker.Addr()
	gatewaytest.StartResponder(t, brokerURL, "svc/echo", 1, gatewaytest.Echo)
	gatewaytest.StartResponder(t, brokerURL, "svc/created", 1, func(req *paho.Publish) *paho.Publish {
		return &paho.Publish{QoS: 1, Payload: []byte(`{"id":7}`), Properties: &paho.PublishProperties{
			ContentType: "application/json",
			User:        paho.UserProperties{{Key: "http-status", Value: "201"}, {Key: "bad", Value: "a\r\nInjected: yes"}},
		}}
	})
	gatewaytest.StartResponder(t, brokerURL, "svc/silent", 1, func(*paho.Publish) *paho.Publish { return nil })
	gatewaytest.StartResponder(t, brokerURL, "svc/broken", 1, func(*paho.Publish) *paho.Publish {
		return &paho.Publish{QoS: 1, Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "http-status", Value: "abc"}}}}
	})
	gatewaytest.StartResponder(t, brokerURL, "svc/bare", 0, func(*paho.Publish) *paho.Publish {
		return &paho.Publish{Payload: []byte{0, 1, 2}}
	})

	t.Run("200 echo with properties both ways", func(t *testing.T) {
		r := gatewaytest.Post(t, base+"/rpc/svc/echo?qos=2&timeout=5", strings.NewReader("hello"),
			"Content-Type", "text/plain; charset=utf-8",
			"Mqtt-User-Property", "trace=abc=def", "Mqtt-User-Property", "trace=2")
		if r.Status != 200 || string(r.Body) != "hello" || r.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("got %d %q %q", r.Status, r.Body, r.Header.Get("Content-Type"))
		}
		if got := r.Header.Values("Mqtt-User-Property"); fmt.Sprint(got) != "[trace=abc=def trace=2]" {
			t.Fatalf("user properties %q", got)
		}
	})
	t.Run("responder sets status; unsafe property dropped", func(t *testing.T) {
		r := gatewaytest.Post(t, base+"/rpc/svc/created", nil)
		if r.Status != 201 || string(r.Body) != `{"id":7}` || r.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("got %d %q %q", r.Status, r.Body, r.Header.Get("Content-Type"))
		}
		if got := r.Header.Values("Mqtt-User-Property"); fmt.Sprint(got) != "[http-status=201]" || r.Header.Get("Injected") != "" {
			t.Fatalf("headers %v", r.Header)
		}
	})
	t.Run("200 without content type at qos 0", func(t *testing.T) {
		r := gatewaytest.Post(t, base+"/rpc/svc/bare?qos=0", nil)
		if r.Status != 200 || !bytes.Equal(r.Body, []byte{0, 1, 2}) || r.Header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("got %d %q %q", r.Status, r.Body, r.Header.Get("Content-Type"))
		}
	})
	t.Run("percent-encoded slash is a level separator", func(t *testing.T) {
		r := gatewaytest.Post(t, base+"/rpc/svc%2Fecho", strings.NewReader("x"))
		if r.Status != 200 || string(r.Body) != "x" {
			t.Fatalf("got %d %q", r.Status, r.Body)
		}
	})
	t.Run("504 after the asked timeout", func(t *testing.T) {
		start := time.Now()
		r := gatewaytest.Post(t, base+"/rpc/svc/silent?timeout=300ms", nil)
		gatewaytest.WantProblem(t, r, 504, "timeout", "300ms")
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("answered after %s, before the timeout", d)
		}
	})
	t.Run("503 at once without responders", func(t *testing.T) {
		start := time.Now()
		r := gatewaytest.Post(t, base+"/rpc/nobody/listens?timeout=30s", nil)
		gatewaytest.WantProblem(t, r, 503, "no-responders", "subscribed")
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("took %s", d)
		}
	})
	t.Run("502 bad http-status", func(t *testing.T) {
		gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/rpc/svc/broken", nil), 502, "bad-reply", `"abc"`)
	})

	for _, tt := range []struct {
		name, path, slug, detail string
		header                   []string
	}{
		{"plus", "/rpc/svc/%2B/x", "invalid-topic", "wildcard", nil},
		{"literal plus", "/rpc/svc/+", "invalid-topic", "wildcard", nil},
		{"hash", "/rpc/svc/%23", "invalid-topic", "wildcard", nil},
		{"dollar", "/rpc/$SYS/x", "invalid-topic", "'$'", nil},
		{"empty", "/rpc/", "invalid-topic", "empty", nil},
		{"NUL", "/rpc/a%00b", "invalid-topic", "NUL", nil},
		{"control", "/rpc/a%01b", "invalid-topic", "control", nil},
		{"invalid utf8", "/rpc/a%FFb", "invalid-topic", "UTF-8", nil},
		{"noncharacter", "/rpc/a%EF%BF%BF", "invalid-topic", "non-character", nil},
		{"response prefix", "/rpc/mqttgw/reply/x", "invalid-topic", "mqttgw/reply", nil},
		{"zero timeout", "/rpc/svc/echo?timeout=0", "invalid-parameter", "minimum of 1ms", nil},
		{"negative timeout", "/rpc/svc/echo?timeout=-1s", "invalid-parameter", "from 1ms", nil},
		{"empty timeout", "/rpc/svc/echo?timeout=", "invalid-parameter", "timeout", nil},
		{"garbage timeout", "/rpc/svc/echo?timeout=soon", "invalid-parameter", "timeout", nil},
		{"NaN timeout", "/rpc/svc/echo?timeout=NaN", "invalid-parameter", "timeout", nil},
		{"timeout above max", "/rpc/svc/echo?timeout=61s", "invalid-parameter", "1m0s", nil},
		{"huge timeout", "/rpc/svc/echo?timeout=1e300", "invalid-parameter", "1m0s", nil},
		{"twice", "/rpc/svc/echo?timeout=1&timeout=2", "invalid-parameter", "once", nil},
		{"qos 3", "/rpc/svc/echo?qos=3", "invalid-parameter", "qos", nil},
		{"qos word", "/rpc/svc/echo?qos=one", "invalid-parameter", "qos", nil},
		{"property without =", "/rpc/svc/echo", "invalid-header", "key=value", []string{"Mqtt-User-Property", "novalue"}},
		{"property empty key", "/rpc/svc/echo", "invalid-header", "key=value", []string{"Mqtt-User-Property", "=v"}},
		{"property control char", "/rpc/svc/echo", "invalid-header", "control", []string{"Mqtt-User-Property", "k=a\tb"}},
		{"property bad utf8", "/rpc/svc/echo", "invalid-header", "UTF-8", []string{"Mqtt-User-Property", "k=\xff"}},
		{"content type bad utf8", "/rpc/svc/echo", "invalid-header", "content type", []string{"Content-Type", "text/plain\xff"}},
	} {
		t.Run("400 "+tt.name, func(t *testing.T) {
			gatewaytest.WantProblem(t, gatewaytest.Post(t, base+tt.path, strings.NewReader("x"), tt.header...), 400, tt.slug, tt.detail)
		})
	}

	t.Run("413 with Content-Length", func(t *testing.T) {
		gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader(strings.Repeat("x", 1025))), 413, "body-too-large", "1024")
	})
	t.Run("413 chunked", func(t *testing.T) {
		body := io.MultiReader(strings.NewReader(strings.Repeat("x", 2000))) // unknown length: chunked
		gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/rpc/svc/echo", body), 413, "body-too-large", "1024")
	})
	t.Run("exactly max body", func(t *testing.T) {
		if r := gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader(strings.Repeat("x", 1024))); r.Status != 200 || len(r.Body) != 1024 {
			t.Fatalf("got %d, %d bytes", r.Status, len(r.Body))
		}
	})
	t.Run("404", func(t *testing.T) {
		gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/nope", nil), 404, "not-found", "/nope")
	})
	t.Run("405", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, base+"/rpc/svc/echo", nil)
		gatewaytest.WantProblem(t, gatewaytest.Do(t, nil, req), 405, "method-not-allowed", "GET")
	})
	t.Run("healthz and readyz", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz"} {
			req, _ := http.NewRequest(http.MethodGet, base+p, nil)
			if r := gatewaytest.Do(t, nil, req); r.Status != 200 {
				t.Fatalf("%s: %d", p, r.Status)
			}
		}
	})
	t.Run("still works after all that", func(t *testing.T) {
		if r := gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader("alive")); r.Status != 200 || string(r.Body) != "alive" {
			t.Fatalf("got %d %q", r.Status, r.Body)
		}
		if n := a.gw.Stats().Pending; n != 0 {
			t.Fatalf("%d pending entries left", n)
		}
	})
}

// TestGracefulShutdown: a request that finishes within the grace period is
// answered; one that can't gets 503 when the grace period ends.
func TestGracefulShutdown(t *testing.T) {
	a, stop := launch(t, testConfig(t, "--shutdown-grace", "500ms"), slog.New(slog.DiscardHandler))
	base := "http://" + a.httpAddr
	waitReady(t, base)

	received := make(chan struct{}, 2)
	brokerURL := "mqtt://" + a.broker.Addr()
	gatewaytest.StartResponder(t, brokerURL, "svc/quick", 1, func(req *paho.Publish) *paho.Publish {
		received <- struct{}{}
		time.Sleep(200 * time.Millisecond)
		return gatewaytest.Echo(req)
	})
	gatewaytest.StartResponder(t, brokerURL, "svc/never", 1, func(*paho.Publish) *paho.Publish {
		received <- struct{}{}
		return nil
	})

	var wg sync.WaitGroup
	var quick, never gatewaytest.Response
	wg.Go(func() { quick = gatewaytest.Post(t, base+"/rpc/svc/quick?timeout=10s", strings.NewReader("q")) })
	wg.Go(func() { never = gatewaytest.Post(t, base+"/rpc/svc/never?timeout=30s", nil) })
	<-received
	<-received
	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	wg.Wait()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if quick.Status != 200 || string(quick.Body) != "q" {
		t.Errorf("in-flight request within grace: %d %q", quick.Status, quick.Body)
	}
	gatewaytest.WantProblem(t, never, 503, "shutting-down", "shutting down")
	if never.Header.Get("Retry-After") == "" {
		t.Error("503 shutting-down without Retry-After")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %s", d)
	}
	if _, err := net.DialTimeout("tcp", a.httpAddr, time.Second); err == nil {
		t.Error("HTTP still accepting after shutdown")
	}
}

// TestRun drives run() itself: flags, logging of the bound addresses, a
// request, and a clean stop when the context ends.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--log-format", "json"}, func(k string) string {
			return map[string]string{"MQTTGW_HTTP_ADDR": "127.0.0.1:0", "MQTTGW_MQTT_ADDR": "127.0.0.1:0"}[k]
		}, io.Discard, pw)
		pw.Close()
	}()
	var httpAddr string
	sc := bufio.NewScanner(pr)
	for httpAddr == "" && sc.Scan() {
		var line struct {
			Msg      string `json:"msg"`
			HTTPAddr string `json:"http_addr"`
			MQTTAddr string `json:"mqtt_addr"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		if line.Msg == "mqttgw started" {
			if strings.HasSuffix(line.MQTTAddr, ":0") || line.MQTTAddr == "" {
				t.Errorf("mqtt_addr %q is not the bound address", line.MQTTAddr)
			}
			httpAddr = line.HTTPAddr
		}
	}
	go io.Copy(io.Discard, pr) // keep the logger from blocking
	if httpAddr == "" {
		t.Fatal("no start-up line with http_addr")
	}
	waitReady(t, "http://"+httpAddr)
	gatewaytest.WantProblem(t, gatewaytest.Post(t, "http://"+httpAddr+"/rpc/nobody", nil), 503, "no-responders", "")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestRunFailsOnAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, args := range [][]string{
		{"--http-addr", ln.Addr().String(), "--mqtt-addr", "127.0.0.1:0"},
		{"--http-addr", "127.0.0.1:0", "--mqtt-addr", ln.Addr().String()},
		{"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--ws-addr", ln.Addr().String()},
	} {
		err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("run(%v) = %v, want address already in use", args, err)
		}
	}
}

func TestConfig(t *testing.T) {
	env := map[string]string{
		"MQTTGW_TIMEOUT":     "3s",
		"MQTTGW_MAX_BODY":    "2MiB",
		"MQTTGW_QOS":         "0",
		"MQTTGW_INSTANCE_ID": "pod-1",
		"MQTTGW_HTTP_ADDR":   ":9999",
	}
	cfg, err := parseConfig([]string{"--http-addr", ":7000"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != ":7000" {
		t.Errorf("flag must win over env: %q", cfg.HTTPAddr)
	}
	if cfg.API.DefaultTimeout != 3*time.Second || cfg.API.MaxBody != 2<<20 || cfg.API.DefaultQoS != 0 || cfg.InstanceID != "pod-1" {
		t.Errorf("env not applied: %+v", cfg)
	}

	defaults, err := parseConfig(nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if defaults.HTTPAddr != ":8080" || defaults.MQTT.TCPAddr != ":1883" || defaults.Broker != "embedded" || defaults.MQTT.WSAddr != "" ||
		defaults.API.DefaultTimeout != 10*time.Second || defaults.API.MaxTimeout != 60*time.Second ||
		defaults.API.DefaultQoS != 1 || defaults.API.MaxBody != 1<<20 {
		t.Errorf("defaults differ from the README's table: %+v", defaults)
	}

	for _, tt := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--qos", "3"}, nil, "qos"},
		{[]string{"--timeout", "2m"}, nil, "max timeout"},
		{[]string{"--max-body", "lots"}, nil, "max-body"},
		{[]string{"--log-format", "xml"}, nil, "log-format"},
		{[]string{"--log-level", "loud"}, nil, "log-level"},
		{[]string{"--broker", "ftp://localhost:1883"}, nil, "embedded"},
		{[]string{"--broker", "localhost:1883"}, nil, "mqtt://"},
		{[]string{"--broker", "mqtts://localhost:8883", "--broker-cert", "c.pem"}, nil, "go together"},
		{[]string{"--broker", "mqtts://localhost:8883", "--broker-ca", "/nonexistent.pem"}, nil, "broker-ca"},
		{[]string{"--instance-id", "a/b"}, nil, ""},
		{[]string{"extra"}, nil, "unexpected argument"},
		{[]string{"--nope"}, nil, "nope"},
		{nil, map[string]string{"MQTTGW_TIMEOUT": "soon"}, "MQTTGW_TIMEOUT"},
		{[]string{"--mqtt-write-buffer", "64KiB"}, nil, "write buffer"},
		{[]string{"--mqtt-slow-subscriber", "ignore"}, nil, "slow subscriber"},
		{[]string{"--mqtt-max-keepalive", "0s"}, nil, "keep-alive"},
		{[]string{"--mqtt-max-keepalive", "100000s"}, nil, "keep-alive"},
		{[]string{"--broker-keepalive", "1500ms"}, nil, "broker-keepalive"},
		{[]string{"--broker-keepalive", "0s"}, nil, "broker-keepalive"},
		{[]string{"--max-reply", "0"}, nil, "max-reply"},
	} {
		_, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
		if tt.want == "" {
			continue // rejected later, by gateway.New: see TestInvalidInstanceID
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseConfig(%v, %v) = %v, want error mentioning %q", tt.args, tt.env, err, tt.want)
		}
	}
}

// A password given in --broker never shows in an error: such a URL is
// refused, and one that doesn't parse is not echoed.
func TestBrokerURLCredentialsAreRefused(t *testing.T) {
	for _, u := range []string{"mqtt://user:s3cret@broker:1883", "mqtt://user:s3cret@bro ker:1883", "mqtt://user:s3cret@%zz"} {
		_, err := parseConfig([]string{"--broker", u}, func(string) string { return "" }, io.Discard)
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("--broker %q: %v; want an error that does not show the password", u, err)
		}
	}
	_, err := parseConfig([]string{"--broker", "mqtt://user:s3cret@broker:1883"}, func(string) string { return "" }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--broker-username") {
		t.Errorf("got %v, want it to point at --broker-username", err)
	}
}

// The limits flags reach the embedded broker: the largest packet follows
// --max-body and --max-reply.
func TestBrokerLimitsFlags(t *testing.T) {
	cfg, err := parseConfig([]string{"--max-body", "2MiB", "--max-reply", "1MiB", "--mqtt-write-buffer", "3MiB",
		"--mqtt-slow-subscriber", "disconnect", "--mqtt-max-keepalive", "30s", "--mqtt-connect-timeout", "2s",
		"--mqtt-write-timeout", "9s", "--broker-keepalive", "3s"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.MQTT
	if m.MaxPacketSize != 2<<20+64<<10 || m.WriteBuffer != 3<<20 || m.SlowSubscribers != "disconnect" ||
		m.MaxKeepAlive != 30*time.Second || m.ConnectTimeout != 2*time.Second || m.WriteTimeout != 9*time.Second ||
		cfg.MaxReply != 1<<20 || cfg.BrokerKeepAlive != 3*time.Second {
		t.Fatalf("limits not applied: %+v, max reply %d, broker keep-alive %s", m, cfg.MaxReply, cfg.BrokerKeepAlive)
	}
}

func TestInvalidInstanceID(t *testing.T) {
	err := run(context.Background(), []string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--instance-id", "a/b"},
		func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "instance id") {
		t.Fatalf("got %v", err)
	}
}

func TestHelpListsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"http-addr", "broker", "mqtt-addr", "ws-addr", "timeout", "max-timeout", "qos", "max-body",
		"instance-id", "response-prefix", "shutdown-grace", "shutdown-delay", "log-level", "log-format",
		"broker-username", "broker-password", "broker-ca", "broker-cert", "broker-key", "max-header-bytes",
		"max-inflight", "trusted-proxies", "auth-file", "mqtt-users-file", "mqtt-tls-addr", "tls-cert", "tls-key",
		"max-reply", "broker-keepalive", "mqtt-connect-timeout", "mqtt-max-keepalive", "mqtt-write-buffer",
		"mqtt-write-timeout", "mqtt-slow-subscriber"} {
		if !strings.Contains(out.String(), "--"+f+" ") || !strings.Contains(out.String(), envName(f)) {
			t.Errorf("--help lacks --%s or %s:\n%s", f, envName(f), out.String())
		}
	}
}

func TestHealthcheck(t *testing.T) {
	a, _ := mustStart(t, testConfig(t))
	_, port, _ := net.SplitHostPort(a.httpAddr)
	var out bytes.Buffer
	// A wildcard host, as in the default ":8080", means this machine.
	if err := run(context.Background(), []string{"healthcheck", "--http-addr", ":" + port}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("healthcheck of a ready gateway: %v", err)
	}
	if out.String() != "ready\n" {
		t.Fatalf("printed %q", out.String())
	}
	env := func(k string) string { return map[string]string{"MQTTGW_HTTP_ADDR": "127.0.0.1:" + port}[k] }
	if err := run(context.Background(), []string{"healthcheck"}, env, io.Discard, io.Discard); err != nil {
		t.Fatalf("healthcheck with MQTTGW_HTTP_ADDR: %v", err)
	}
	err := run(context.Background(), []string{"healthcheck", "--http-addr", a.httpAddr, "--path", "/nope"}, env, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("healthcheck of a 404: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ln.Close() // nobody listens there now
	if err := run(context.Background(), []string{"healthcheck", "--http-addr", ln.Addr().String()}, env, io.Discard, io.Discard); err == nil {
		t.Fatal("healthcheck succeeded with no gateway")
	}
}

// TestShutdownDelay: after the signal, /readyz turns 503 while requests are
// still served, for --shutdown-delay; then the gateway stops.
func TestShutdownDelay(t *testing.T) {
	a, stop := launch(t, testConfig(t, "--shutdown-delay", "2s"), slog.New(slog.DiscardHandler))
	base := "http://" + a.httpAddr
	waitReady(t, base)
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/echo", 1, gatewaytest.Echo)

	done := make(chan error, 1)
	go func() { done <- stop() }()
	gatewaytest.Eventually(t, 5*time.Second, "the condition", func() bool {
		req, _ := http.NewRequest(http.MethodGet, base+"/readyz", nil)
		return gatewaytest.Do(t, nil, req).Status == 503
	})
	if r := gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader("still")); r.Status != 200 || string(r.Body) != "still" {
		t.Fatalf("during the delay: %d %q", r.Status, r.Body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no shutdown after the delay")
	}
}

// TestWaitForResponder: ?wait-for-responder holds a request until a
// responder subscribes, through the whole command.
func TestWaitForResponder(t *testing.T) {
	a, base := mustStart(t, testConfig(t))
	type answer struct {
		status int
		body   string
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := http.Post(base+"/rpc/devices/7/wake?wait-for-responder=10s&timeout=5s", "", strings.NewReader("up?"))
		if err != nil {
			done <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- answer{resp.StatusCode, string(b), err}
	}()
	time.Sleep(300 * time.Millisecond)
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "devices/+/wake", 1, gatewaytest.Echo)
	if r := <-done; r.err != nil || r.status != 200 || r.body != "up?" {
		t.Fatalf("got %d %q, %v", r.status, r.body, r.err)
	}
	r := gatewaytest.Post(t, base+"/rpc/devices/8/sleep?wait-for-responder=300ms", nil)
	gatewaytest.WantProblem(t, r, 503, "no-responders", "within the 300ms waited")
}

// TestPublish: POST /publish/{topic} through the whole command.
func TestPublish(t *testing.T) {
	a, base := mustStart(t, testConfig(t))
	got := make(chan *paho.Publish, 1)
	cm := gatewaytest.Dial(t, "mqtt://"+a.broker.Addr(), gatewaytest.ClientOptions{}, func(p *paho.Publish) { got <- p })
	gatewaytest.Subscribe(t, cm, "lamps/+", 1)
	r := gatewaytest.Post(t, base+"/publish/lamps/3?qos=1&ttl=30s", strings.NewReader("dim"), "Mqtt-User-Property", "level=40")
	if r.Status != http.StatusAccepted || len(r.Body) != 0 {
		t.Fatalf("got %d %q", r.Status, r.Body)
	}
	select {
	case p := <-got:
		if string(p.Payload) != "dim" || p.Properties.User.Get("level") != "40" || p.Properties.MessageExpiry == nil || *p.Properties.MessageExpiry > 30 {
			t.Fatalf("got %+v, properties %+v", p, p.Properties)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the publication never came")
	}
	gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/publish/lamps/%2B", nil), 400, "invalid-topic", "wildcard")
}
