package main

// The gateway against an external broker (mosquitto), and two gateway
// processes scaled out on one broker.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func TestMosquittoRoundTrip(t *testing.T) {
	m := gatewaytest.StartMosquitto(t)
	_, base := mustStart(t, testConfig(t, "--broker", m.URL()))
	gatewaytest.StartResponder(t, m.URL(), "svc/echo", 2, gatewaytest.Echo)

	for _, qos := range []string{"0", "1", "2"} {
		r := post(t, base+"/rpc/svc/echo?qos="+qos, strings.NewReader("via mosquitto"),
			"Content-Type", "text/plain", "Mqtt-User-Property", "k=v", "Mqtt-User-Property", "k=w")
		if r.status != 200 || string(r.body) != "via mosquitto" || r.header.Get("Content-Type") != "text/plain" ||
			fmt.Sprint(r.header.Values("Mqtt-User-Property")) != "[k=v k=w]" {
			t.Fatalf("qos %s: %d %q %v", qos, r.status, r.body, r.header)
		}
	}
}

// TestMosquittoNoResponders: at QoS 1 mosquitto's PUBACK says "no matching
// subscribers" (0x10), so the answer is an immediate 503; at QoS 0 nothing
// can say so, and the request ends in 504.
func TestMosquittoNoResponders(t *testing.T) {
	m := gatewaytest.StartMosquitto(t)
	_, base := mustStart(t, testConfig(t, "--broker", m.URL()))

	start := time.Now()
	wantProblem(t, post(t, base+"/rpc/nobody/home?qos=1&timeout=30s", nil), 503, "no-responders", "subscribed")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("503 took %s", d)
	}
	wantProblem(t, post(t, base+"/rpc/nobody/home?qos=0&timeout=300ms", nil), 504, "timeout", "300ms")
}

// TestMosquittoRejectsPublish: a PUBACK reason code of 0x80 or above (here
// 0x87, not authorized, from an ACL) is a 502 naming the code.
func TestMosquittoRejectsPublish(t *testing.T) {
	acl := filepath.Join(gatewaytest.PublicTempDir(t), "acl")
	if err := os.WriteFile(acl, []byte("topic readwrite #\ntopic deny forbidden/#\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := gatewaytest.StartMosquitto(t, "acl_file "+acl)
	_, base := mustStart(t, testConfig(t, "--broker", m.URL()))
	wantProblem(t, post(t, base+"/rpc/forbidden/x?qos=1", nil), 502, "broker-rejected", "0x87")
}

// TestMosquittoTLSAndPassword connects over mqtts:// with a CA and a client
// certificate generated here, and a username and password.
func TestMosquittoTLSAndPassword(t *testing.T) {
	passwd := gatewaytest.Need(t, "mosquitto_passwd", "apt-get install -y mosquitto")
	pki := gatewaytest.NewPKI(t)
	pwfile := filepath.Join(gatewaytest.PublicTempDir(t), "passwd")
	if out, err := exec.Command(passwd, "-c", "-b", pwfile, "gateway", "s3cret").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v: %s", err, out)
	}
	if err := os.Chmod(pwfile, 0o644); err != nil {
		t.Fatal(err)
	}
	tlsAddr := gatewaytest.FreePort(t)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	// per_listener_settings: the plain listener stays anonymous for the
	// responder; the TLS one demands a certificate and a password.
	m := gatewaytest.StartMosquitto(t, "per_listener_settings true",
		"listener "+tlsPort+" 127.0.0.1", "allow_anonymous false", "password_file "+pwfile,
		"cafile "+pki.CA, "certfile "+pki.ServerCert, "keyfile "+pki.ServerKey, "require_certificate true")
	gatewaytest.WaitListening(t, tlsAddr)
	gatewaytest.StartResponder(t, m.URL(), "svc/tls", 1, gatewaytest.Echo)

	tlsArgs := []string{"--broker", "mqtts://" + tlsAddr, "--broker-ca", pki.CA, "--broker-cert", pki.ClientCert, "--broker-key", pki.ClientKey, "--broker-username", "gateway"}
	env := func(k string) string { return map[string]string{"MQTTGW_BROKER_PASSWORD": "s3cret"}[k] }
	cfg, err := parseConfig(append([]string{"--http-addr", "127.0.0.1:0"}, tlsArgs...), env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, base := mustStart(t, cfg)
	if r := post(t, base+"/rpc/svc/tls", strings.NewReader("secure")); r.status != 200 || string(r.body) != "secure" {
		t.Fatalf("over TLS: %d %q", r.status, r.body)
	}

	// A wrong password never gets ready, and says why with 503s.
	a, _ := launch(t, testConfig(t, append(tlsArgs, "--broker-password", "wrong")...), slog.New(slog.DiscardHandler))
	time.Sleep(500 * time.Millisecond) // several connection attempts, none may succeed
	req, _ := http.NewRequest(http.MethodGet, "http://"+a.httpAddr+"/readyz", nil)
	wantProblem(t, do(t, req), 503, "broker-unavailable", "")
}

// TestMosquittoMaxPacketSize: a body the broker would refuse (its CONNACK
// says how large a packet may be) is a 413, and the connection that other
// requests share is not dropped for it.
func TestMosquittoMaxPacketSize(t *testing.T) {
	m := gatewaytest.StartMosquitto(t, "max_packet_size 2000")
	_, base := mustStart(t, testConfig(t, "--broker", m.URL()))
	gatewaytest.StartResponder(t, m.URL(), "svc/echo", 1, gatewaytest.Echo)
	wantProblem(t, post(t, base+"/rpc/svc/echo", strings.NewReader(strings.Repeat("x", 3000))), 413, "body-too-large", "at most 2000")
	if r := post(t, base+"/rpc/svc/echo", strings.NewReader("small")); r.status != 200 || string(r.body) != "small" {
		t.Fatalf("after the refused body: %d %q", r.status, r.body)
	}
}

// TestMosquittoKilledAndRestarted kills the broker under load: requests in
// flight fail at once with 503 instead of running into their timeout, new
// ones get 503 with Retry-After, and once the broker is back the same
// gateway serves again.
func TestMosquittoKilledAndRestarted(t *testing.T) {
	m := gatewaytest.StartMosquitto(t)
	a, base := mustStart(t, testConfig(t, "--broker", m.URL()))
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	resp := gatewaytest.StartResponder(t, m.URL(), "svc/slow", 1, func(req *paho.Publish) *paho.Publish {
		<-release // hold every request until the broker is gone
		return gatewaytest.Echo(req)
	})

	const n = 100
	var wg sync.WaitGroup
	results := make(chan response, n)
	for range n {
		wg.Go(func() { results <- post(t, base+"/rpc/svc/slow?timeout=30s", strings.NewReader("x")) })
	}
	gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool { return resp.Handled() == n })

	killed := time.Now()
	m.Kill()
	wg.Wait()
	close(results)
	if d := time.Since(killed); d > 10*time.Second {
		t.Fatalf("in-flight requests took %s to fail; they should fail at once, not at their 30s timeout", d)
	}
	for r := range results {
		wantProblem(t, r, 503, "broker-unavailable", "connection lost")
	}
	if st := a.gw.Stats(); st.Pending != 0 {
		t.Fatalf("%d pending entries left after the connection dropped", st.Pending)
	}

	r := post(t, base+"/rpc/svc/slow", nil)
	wantProblem(t, r, 503, "broker-unavailable", "not connected")
	if r.header.Get("Retry-After") == "" {
		t.Error("503 broker-unavailable without Retry-After")
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/readyz", nil)
	wantProblem(t, do(t, req), 503, "broker-unavailable", "")

	releaseOnce.Do(func() { close(release) })
	m.Start()
	waitReady(t, base)
	// The responder reconnects on its own; wait until it has resubscribed.
	gatewaytest.Eventually(t, 20*time.Second, "the condition", func() bool {
		r := post(t, base+"/rpc/svc/slow?timeout=5s", strings.NewReader("back"))
		return r.status == 200 && string(r.body) == "back"
	})
}

// TestScaleOut runs two gateway processes on one mosquitto and three
// responders in one shared-subscription group, and sends 1,200 concurrent
// requests spread over both gateways.
func TestScaleOut(t *testing.T) {
	m := gatewaytest.StartMosquitto(t)
	bin := gatewaytest.Binary(t, "mqttgw")
	gateways := map[string]string{} // instance id → base URL
	for _, id := range []string{"gw-a", "gw-b"} {
		addr := gatewaytest.FreePort(t)
		gatewaytest.StartProcess(t, exec.Command(bin, "--broker", m.URL(), "--http-addr", addr, "--instance-id", id, "--log-level", "warn"))
		gateways[id] = "http://" + addr
		waitReady(t, gateways[id])
	}

	// Each request says which gateway it went through; a responder checks
	// that its Response Topic points back to that same gateway.
	var misrouted atomic.Int64
	handler := func(req *paho.Publish) *paho.Publish {
		id, _, _ := strings.Cut(string(req.Payload), "/")
		if req.Properties.ResponseTopic != "mqttgw/reply/"+id {
			misrouted.Add(1)
		}
		return gatewaytest.Echo(req)
	}
	var responders []*gatewaytest.Responder
	for range 3 {
		responders = append(responders, gatewaytest.StartResponder(t, m.URL(), "$share/workers/svc/scale", 1, handler))
	}

	const n = 1200
	sem := make(chan struct{}, 200) // concurrent requests at any moment
	var wg sync.WaitGroup
	errs := make(chan error, n)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200}}
	defer client.CloseIdleConnections()
	for i := range n {
		id := []string{"gw-a", "gw-b"}[i%2]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			want := fmt.Sprintf("%s/%d", id, i)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gateways[id]+"/rpc/svc/scale?timeout=20s", strings.NewReader(want))
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || string(body) != want {
				errs <- fmt.Errorf("request %s: %d %q %v", want, resp.StatusCode, body, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var total int64
	for i, r := range responders {
		if r.Handled() == 0 {
			t.Errorf("responder %d did no work", i)
		}
		total += r.Handled()
	}
	if total != n {
		t.Errorf("responders handled %d requests, want %d (each exactly once)", total, n)
	}
	if m := misrouted.Load(); m != 0 {
		t.Errorf("%d requests carried another gateway's response topic", m)
	}
}
