package main

// The command with an external broker (mosquitto). Package gateway tests
// the transport itself; what only the whole command shows is here: that
// the --broker-* flags reach the transport, and two gateway processes
// sharing one broker.

import (
	"context"
	"fmt"
	"io"
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

// TestExternalBroker runs run() against mosquitto over mqtts. Each broker
// flag must reach the transport: a CA, certificate or password lost on
// the way would leave the gateway unready, and mosquitto's log of the
// connection it accepted shows the client id, keep-alive and username. A
// request then goes from HTTP through the broker to a responder and back.
func TestExternalBroker(t *testing.T) {
	passwd := gatewaytest.Need(t, "mosquitto_passwd", "apt-get install -y mosquitto")
	pki := gatewaytest.NewPKI(t)
	dir := gatewaytest.PublicTempDir(t)
	pwfile, brokerLog := filepath.Join(dir, "passwd"), filepath.Join(dir, "mosquitto.log")
	if out, err := exec.Command(passwd, "-c", "-b", pwfile, "gateway", "s3cret").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v: %s", err, out)
	}
	// mosquitto reads and writes these after dropping root for a user of
	// its own.
	if err := os.WriteFile(brokerLog, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{pwfile: 0o644, brokerLog: 0o666} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	tlsAddr := gatewaytest.FreePort(t)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	// per_listener_settings: the plain listener stays anonymous for the
	// responder; the TLS one demands a certificate and a password.
	m := gatewaytest.StartMosquitto(t, "per_listener_settings true", "log_dest stderr", "log_dest file "+brokerLog,
		"listener "+tlsPort+" 127.0.0.1", "allow_anonymous false", "password_file "+pwfile,
		"cafile "+pki.CA, "certfile "+pki.ServerCert, "keyfile "+pki.ServerKey, "require_certificate true")
	gatewaytest.WaitListening(t, tlsAddr)
	gatewaytest.StartResponder(t, m.URL(), "svc/echo", 1, gatewaytest.Echo)

	args := []string{"--http-addr", "127.0.0.1:0", "--log-format", "json", "--instance-id", "wired",
		"--broker", "mqtts://" + tlsAddr, "--broker-ca", pki.CA, "--broker-cert", pki.ClientCert, "--broker-key", pki.ClientKey,
		"--broker-username", "gateway", "--broker-keepalive", "7s"}
	env := map[string]string{"MQTTGW_BROKER_PASSWORD": "s3cret"}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &gatewaytest.Buffer{}
	var runErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runErr = run(ctx, args, func(k string) string { return env[k] }, io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if runErr != nil {
			t.Errorf("run: %v", runErr)
		}
	})

	var base string
	gatewaytest.Eventually(t, 10*time.Second, "the start-up line", func() bool {
		select {
		case <-done:
			t.Fatalf("run ended: %v\n%s", runErr, logs.String())
		default:
		}
		if l := logs.JSONLines(t, "mqttgw started"); len(l) > 0 {
			base = fmt.Sprint("http://", l[0]["http_addr"])
		}
		return base != ""
	})
	waitReady(t, base)
	r := gatewaytest.Post(t, base+"/rpc/svc/echo?qos=2", strings.NewReader("via mosquitto"),
		"Content-Type", "text/plain", "Mqtt-User-Property", "k=v", "Mqtt-User-Property", "k=w")
	if r.Status != 200 || string(r.Body) != "via mosquitto" || r.Header.Get("Content-Type") != "text/plain" ||
		fmt.Sprint(r.Header.Values("Mqtt-User-Property")) != "[k=v k=w]" {
		t.Fatalf("round trip: %d %q %v", r.Status, r.Body, r.Header)
	}
	gatewaytest.Eventually(t, 5*time.Second, "mosquitto logs the gateway's connection", func() bool {
		b, err := os.ReadFile(brokerLog)
		return err == nil && strings.Contains(string(b), " as mqttgw-wired (p5, c1, k7, u'gateway').")
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
