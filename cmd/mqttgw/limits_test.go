package main

// The gateway process against peers that starve it: descriptors run out,
// the external broker takes the gateway's client id, secrets are offered
// to its logs.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// Once the process had run out of file descriptors, mochi's accept loop
// had returned for good: responders that reconnected were locked out while
// /readyz stayed 200.
func TestRecoversFromRunningOutOfFileDescriptors(t *testing.T) {
	bin := gatewaytest.Binary(t, "mqttgw")
	httpAddr, mqttAddr := gatewaytest.FreePort(t), gatewaytest.FreePort(t)
	logs := &gatewaytest.Buffer{}
	// sh sets the hard limit too, which the gateway can't raise past.
	cmd := exec.Command("sh", "-c", `ulimit -n 48 && exec "$0" "$@"`, bin,
		"--http-addr", httpAddr, "--mqtt-addr", mqttAddr, "--log-format", "json",
		"--mqtt-connect-timeout", "60s") // the silent connections stay until the test closes them
	cmd.Stdout = logs
	gatewaytest.StartProcess(t, cmd)
	base := "http://" + httpAddr
	waitReady(t, base)
	if !strings.Contains(logs.String(), `"msg":"open-file limit","soft":48,"hard":48`) {
		t.Fatalf("the open-file limits are not logged:\n%s", logs.String())
	}

	// Silent MQTT connections until the process has no descriptor left:
	// the kernel completes them all, the gateway can't accept the rest.
	var conns []net.Conn
	for range 80 {
		c, err := net.Dial("tcp", mqttAddr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool { return strings.Contains(logs.String(), "mqtt accept failed; retrying") })
	// HTTP clients now find no descriptor either.
	for range 10 {
		c, err := net.Dial("tcp", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool { return strings.Contains(logs.String(), "http: Accept error") })
	for _, c := range conns {
		c.Close()
	}

	// Both listeners serve again: HTTP, and MQTT for a responder that
	// connects now.
	waitReady(t, base)
	gatewaytest.StartResponder(t, "mqtt://"+mqttAddr, "svc/echo", 1, gatewaytest.Echo)
	r := gatewaytest.Post(t, base+"/rpc/svc/echo?timeout=5s", strings.NewReader("back"))
	if r.Status != 200 || string(r.Body) != "back" {
		t.Fatalf("after running out of descriptors: %d %q", r.Status, r.Body)
	}
	gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool { return strings.Contains(logs.String(), "mqtt accept recovered") })
}

// Anyone who may connect to the broker can read the gateway's client id
// from a request's Response Topic and take the session over; the log must
// say so (and the README what to do about it). An mqttgw with its
// embedded broker plays the external broker: it sends DISCONNECT 0x8E as
// MQTT v5 asks. (mosquitto 2.0 just closes the connection; package
// gateway tests what the transport logs then.)
func TestClientIDTakeoverIsLogged(t *testing.T) {
	ext, _ := mustStart(t, testConfig(t))
	brokerURL := "mqtt://" + ext.broker.Addr()
	// A prefix of its own: the embedded broker keeps its own response
	// prefix unreadable to network clients.
	cfg := testConfig(t, "--broker", brokerURL, "--response-prefix", "gw2/reply")
	_, base, logs := startLogged(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, _ := url.Parse(brokerURL)
	cm, err := autopaho.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls: []*url.URL{u}, KeepAlive: 30, CleanStartOnInitialConnection: true,
		ClientConfig: paho.ClientConfig{ClientID: "mqttgw-" + cfg.InstanceID},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cm.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	cm.Disconnect(ctx)

	gatewaytest.Eventually(t, 10*time.Second, "the takeover is logged", func() bool {
		for _, l := range logs.JSONLines(t, "broker disconnected the gateway") {
			if l["reason_code"] == "0x8E" && strings.Contains(fmt.Sprint(l["reason"]), "Session taken over") {
				return true
			}
		}
		return false
	})
	waitReady(t, base) // and it comes back
}

// A password is never logged, however often the connection fails.
func TestBrokerPasswordNeverLogged(t *testing.T) {
	dead := gatewaytest.FreePort(t) // nothing listens there
	cfg := testConfig(t, "--broker", "mqtt://"+dead, "--broker-username", "gw", "--broker-password", "pa55-w0rd-x", "--log-level", "debug")
	logs := &gatewaytest.Buffer{}
	launch(t, cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool {
		return len(logs.JSONLines(t, "broker connection attempt failed")) >= 2
	})
	if strings.Contains(logs.String(), "pa55-w0rd-x") {
		t.Fatalf("the password is in the log:\n%s", logs.String())
	}
}
