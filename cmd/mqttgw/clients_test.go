package main

// Interoperability with the MQTT clients users actually run: Python
// paho-mqtt (Debian's 1.6 API), MQTT.js v5 over TCP and WebSocket,
// mosquitto_rr and the project's own temperature-service binary, each as a
// real process talking to the gateway's embedded broker or to mosquitto
// over 127.0.0.1.

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// pythonResponder is the reference guide's temperature service, in the
// paho-mqtt 1.6 API (on_connect with flags, rc, properties; no
// CallbackAPIVersion; PacketTypes from paho.mqtt.packettypes, as 1.6's
// client module does not export it). It prints "subscribed" once the SUBACK is in, so
// that the test knows when requests can reach it.
const pythonResponder = `
import random
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes  # paho 1.6: not mqtt.PacketTypes (2.x)

BROKER_HOST = sys.argv[1]
BROKER_PORT = int(sys.argv[2])
REQUEST_TOPIC = "service/temperature/query"

# Simulated temperature data
TEMPERATURE_DATA = {
    "Vienna": 22.5,
    "Berlin": 18.3,
    "London": 15.8,
    "Paris": 20.1
}

def on_connect(client, userdata, flags, reason_code, properties):
    print(f"Connected with reason code: {reason_code}")
    # Subscribe to request topic
    client.subscribe(REQUEST_TOPIC)
    print(f"Subscribing to request topic: {REQUEST_TOPIC}")

def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.value >= 0x80 for rc in reason_codes):
        print(f"subscription refused: {[str(rc) for rc in reason_codes]}", file=sys.stderr)
        sys.exit(1)
    print(f"subscribed: {[str(rc) for rc in reason_codes]}")

def on_message(client, userdata, msg):
    """Handle request messages"""
    print(f"Received request: topic={msg.topic}, payload={msg.payload.decode('utf-8')}")

    # Extract Response Topic and Correlation Data
    response_topic = None
    correlation_data = None
    content_type = None

    if hasattr(msg, 'properties') and msg.properties:
        response_topic = msg.properties.ResponseTopic
        correlation_data = msg.properties.CorrelationData
        content_type = getattr(msg.properties, 'ContentType', None)

    if not response_topic:
        print("No Response Topic - cannot send response")
        return

    # Process request
    payload_str = msg.payload.decode('utf-8')
    if payload_str.startswith("query:"):
        location = payload_str[6:]  # Remove "query:" prefix

        # Get temperature (or use random if not found)
        if location in TEMPERATURE_DATA:
            temperature = TEMPERATURE_DATA[location]
        else:
            temperature = random.uniform(10.0, 30.0)

        response_payload = f"Temperature in {location}: {temperature:.1f}°C"

        # Create response properties
        response_props = mqtt.Properties(PacketTypes.PUBLISH)
        if correlation_data:
            response_props.CorrelationData = correlation_data
        response_props.ContentType = "text/plain"

        # Send response
        client.publish(
            response_topic,
            response_payload,
            qos=1,
            properties=response_props
        )

        print(f"Sent response to {response_topic} (request content type {content_type})")
        if correlation_data:
            print(f"Correlation Data: {correlation_data.decode('utf-8')}")

client = mqtt.Client(
    client_id="responder_service_" + str(random.randrange(1 << 30)),
    protocol=mqtt.MQTTv5
)

client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message

client.connect(BROKER_HOST, BROKER_PORT, keepalive=60)

print("Temperature Service is running...")
client.loop_forever()
`

// pythonRequester is the reference guide's requester in the paho-mqtt 1.6
// API, event-driven instead of sleeping: it sends its requests once its
// response subscription is acknowledged and exits when all are answered
// (or with status 1 after 10 s).
//
// Arguments: host port transport(tcp|websockets) request-topic
// response-topic location...
const pythonRequester = `
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes  # paho 1.6: not mqtt.PacketTypes (2.x)

BROKER_HOST = sys.argv[1]
BROKER_PORT = int(sys.argv[2])
TRANSPORT = sys.argv[3]
REQUEST_TOPIC = sys.argv[4]
RESPONSE_TOPIC = sys.argv[5]
LOCATIONS = sys.argv[6:]

# Store pending requests
pending_requests = {}
finished = threading.Event()

def on_connect(client, userdata, flags, reason_code, properties):
    print(f"Connected with reason code: {reason_code}")
    # Subscribe to our response topic
    client.subscribe(RESPONSE_TOPIC, qos=1)

def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.value >= 0x80 for rc in reason_codes):
        print(f"subscription refused: {[str(rc) for rc in reason_codes]}", file=sys.stderr)
        sys.exit(1)
    print(f"Subscribed to response topic: {RESPONSE_TOPIC}")
    for location in LOCATIONS:
        send_request(client, location)

def on_message(client, userdata, msg):
    """Handle response messages"""
    # Extract correlation data
    correlation_data = None
    if hasattr(msg, 'properties') and msg.properties:
        correlation_data = msg.properties.CorrelationData

    if correlation_data:
        correlation_id = correlation_data.decode('utf-8')
        if correlation_id in pending_requests:
            print(f"Received response for request {correlation_id}")
            print(f"Response: {msg.payload.decode('utf-8')}")
            print(f"Content type: {getattr(msg.properties, 'ContentType', None)}")
            del pending_requests[correlation_id]
            if not pending_requests:
                finished.set()
        else:
            print(f"Unknown correlation ID: {correlation_id}")

def send_request(client, location):
    """Send temperature query request"""
    # Generate unique correlation ID
    correlation_id = str(uuid.uuid4())

    # Create properties for request
    properties = mqtt.Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = RESPONSE_TOPIC
    properties.CorrelationData = correlation_id.encode('utf-8')
    properties.ContentType = "text/plain"

    # Registered before the publish: the answer may be quick.
    pending_requests[correlation_id] = location
    payload = f"query:{location}"
    client.publish(
        REQUEST_TOPIC,
        payload,
        qos=1,
        properties=properties
    )
    print(f"Sent request {correlation_id}: {payload}")
    return correlation_id

client = mqtt.Client(
    client_id="requester_" + uuid.uuid4().hex[:8],
    protocol=mqtt.MQTTv5,
    transport=TRANSPORT
)
if TRANSPORT == "websockets":
    client.ws_set_options(path="/mqtt")

client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message

client.connect(BROKER_HOST, BROKER_PORT, keepalive=60)
client.loop_start()

if not finished.wait(10):
    print(f"timed out; unanswered: {pending_requests}", file=sys.stderr)
    sys.exit(1)

client.disconnect()
client.loop_stop()
print("Request/Response demo completed")
`

// jsResponder is an MQTT.js v5 responder: it answers every request on the
// topic filter with the request's payload, content type and user
// properties, at QoS 1. It prints "subscribed" from the SUBSCRIBE callback
// and one JSON line per request. It does not reconnect: if MQTT.js loses
// the connection (for instance because it can't parse a packet), the
// process exits and the test sees it.
//
// Arguments: broker-url topic-filter.
const jsResponder = `
const mqtt = require('mqtt');
const [url, filter] = process.argv.slice(2);

const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: 'js-responder-' + Math.random().toString(16).slice(2, 10),
  clean: true,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});

client.on('connect', () => {
  client.subscribe(filter, { qos: 1 }, (err, granted) => {
    if (err || granted.some((g) => g.qos >= 0x80)) {
      console.error('subscribe failed', err ? err.message : JSON.stringify(granted));
      process.exit(1);
    }
    console.log('subscribed ' + JSON.stringify(granted));
  });
});

client.on('message', (topic, payload, packet) => {
  const p = packet.properties || {};
  console.log('request ' + JSON.stringify({
    topic, qos: packet.qos, contentType: p.contentType, userProperties: p.userProperties,
    correlationData: p.correlationData ? p.correlationData.toString() : null,
  }));
  if (!p.responseTopic) {
    console.error('request without a response topic');
    return;
  }
  const props = { correlationData: p.correlationData };
  if (p.contentType !== undefined) props.contentType = p.contentType;
  if (p.userProperties !== undefined) props.userProperties = p.userProperties;
  client.publish(p.responseTopic, payload, { qos: 1, properties: props }, (err) => {
    if (err) console.error('reply failed: ' + err.message);
  });
});

client.on('error', (err) => {
  console.error('error: ' + err.message);
  process.exit(1);
});
client.on('close', () => {
  console.error('connection closed');
  process.exit(1);
});
`

// writeScript writes a script into a fresh temporary directory.
func writeScript(t testing.TB, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pythonCommand runs a script with the paho-capable interpreter,
// unbuffered and in UTF-8, so that every print reaches the test at once.
func pythonCommand(py, script string, args ...string) *exec.Cmd {
	cmd := exec.Command(py, append([]string{"-u", script}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONIOENCODING=utf-8")
	return cmd
}

// watched is a long-running process, started by startWatched, whose
// standard output the test waits on.
type watched struct {
	name   string
	stdout *notifyBuffer
	stderr *gatewaytest.Buffer
	done   chan struct{} // closed when the process has exited and its output is read
}

// startWatched is startProcess for processes whose output the test reads:
// it starts cmd, kills it at cleanup, and logs its output if the test
// failed.
func startWatched(t testing.TB, cmd *exec.Cmd) *watched {
	t.Helper()
	w := &watched{
		name:   filepath.Base(cmd.Path),
		stdout: newNotifyBuffer(),
		stderr: &gatewaytest.Buffer{},
		done:   make(chan struct{}),
	}
	for _, arg := range cmd.Args[1:] {
		if strings.HasSuffix(arg, ".py") || strings.HasSuffix(arg, ".js") {
			w.name += " " + filepath.Base(arg) // which script
		}
	}
	// exec copies from the pipes in goroutines that Wait waits for;
	// WaitDelay bounds that should a grandchild hold them open.
	cmd.Stdout, cmd.Stderr = w.stdout, w.stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(w.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-w.done
		if t.Failed() {
			t.Logf("output of %s:\nstdout:\n%s\nstderr:\n%s", w.name, w.stdout.String(), w.stderr.String())
		}
	})
	return w
}

// waitFor waits until the process's standard output matches re and
// returns the match and its submatches. It fails the test when the process
// exits first or nothing matches within timeout.
func (w *watched) waitFor(t testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		out, changed := w.stdout.snapshot()
		if m := re.FindStringSubmatch(out); m != nil {
			return m
		}
		select {
		case <-changed:
		case <-w.done:
			out, _ := w.stdout.snapshot() // all of it now
			if m := re.FindStringSubmatch(out); m != nil {
				return m
			}
			t.Fatalf("%s exited before printing %q\nstdout:\n%s\nstderr:\n%s", w.name, re, out, w.stderr.String())
		case <-timer.C:
			t.Fatalf("%s printed no %q within %s\nstdout:\n%s\nstderr:\n%s", w.name, re, timeout, out, w.stderr.String())
		}
	}
}

// alive fails the test if the process has exited.
func (w *watched) alive(t testing.TB) {
	t.Helper()
	select {
	case <-w.done:
		t.Fatalf("%s exited\nstdout:\n%s\nstderr:\n%s", w.name, w.stdout.String(), w.stderr.String())
	default:
	}
}

// notifyBuffer collects output and wakes whoever waits for more.
type notifyBuffer struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{} // closed and replaced on every write
}

func newNotifyBuffer() *notifyBuffer { return &notifyBuffer{changed: make(chan struct{})} }

func (n *notifyBuffer) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.b.Write(p)
	close(n.changed)
	n.changed = make(chan struct{})
	return len(p), nil
}

// snapshot returns the output so far and a channel closed at the next write.
func (n *notifyBuffer) snapshot() (string, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.b.String(), n.changed
}

func (n *notifyBuffer) String() string {
	s, _ := n.snapshot()
	return s
}

// runBounded runs a program to completion within timeout (killing it
// after that) and returns its standard output; a non-zero exit fails the
// test.
func runBounded(t testing.TB, timeout time.Duration, cmd *exec.Cmd) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr gatewaytest.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		err = fmt.Errorf("killed after %s", timeout)
	}
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// hostPort splits a loopback address for programs that take them apart.
func hostPort(t testing.TB, addr string) (string, string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

var (
	subscribedLine = regexp.MustCompile(`(?m)^subscribed`)
	uuidLine       = regexp.MustCompile(`(?m)^Correlation Data: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$`)
)

// wantNoPending checks that the gateway forgot every request it answered.
func wantNoPending(t *testing.T, a *app) {
	t.Helper()
	if n := a.gw.Stats().Pending; n != 0 {
		t.Errorf("%d pending entries left", n)
	}
}

// TestPythonResponder: the reference guide's Python paho responder answers
// gateway requests, behind the embedded broker and behind mosquitto.
func TestPythonResponder(t *testing.T) {
	t.Parallel()
	py := gatewaytest.PythonWithPaho(t)
	script := writeScript(t, "responder.py", pythonResponder)

	check := func(t *testing.T, a *app, base, brokerAddr string) {
		host, port := hostPort(t, brokerAddr)
		resp := startWatched(t, pythonCommand(py, script, host, port))
		resp.waitFor(t, subscribedLine, 10*time.Second)

		for _, city := range []string{"Vienna", "Berlin"} {
			r := post(t, base+"/rpc/service/temperature/query?timeout=5s", strings.NewReader("query:"+city),
				"Content-Type", "text/plain")
			want := map[string]string{"Vienna": "Temperature in Vienna: 22.5°C", "Berlin": "Temperature in Berlin: 18.3°C"}[city]
			if r.status != 200 || string(r.body) != want || r.header.Get("Content-Type") != "text/plain" {
				t.Fatalf("%s: got %d %q Content-Type %q, want 200 %q text/plain", city, r.status, r.body, r.header.Get("Content-Type"), want)
			}
			if got := r.header.Values("Mqtt-User-Property"); len(got) != 0 {
				t.Errorf("%s: unexpected user properties %q", city, got)
			}
		}
		// The responder decoded our correlation data as UTF-8, as the
		// guide does: it is a UUID string.
		resp.waitFor(t, uuidLine, 5*time.Second)
		resp.waitFor(t, regexp.MustCompile(`(?m)^Sent response to mqttgw/reply/\S+ \(request content type text/plain\)$`), 5*time.Second)
		resp.alive(t)
		wantNoPending(t, a)
	}

	t.Run("embedded broker", func(t *testing.T) {
		t.Parallel()
		a, base := mustStart(t, testConfig(t))
		check(t, a, base, a.broker.Addr())
	})
	t.Run("mosquitto", func(t *testing.T) {
		t.Parallel()
		m := gatewaytest.StartMosquitto(t)
		a, base := mustStart(t, testConfig(t, "--broker", m.URL()))
		check(t, a, base, m.Addr)
	})
}

// TestMQTTJSResponder: an MQTT.js v5 responder gets the request's content
// type and user properties and echoes them; its QoS 1 replies carry user
// properties, whose PUBACKs MQTT.js must be able to parse (mochi puts the
// publish's user properties into the PUBACK unless told not to, and MQTT.js
// then loses packet sync and drops the connection).
func TestMQTTJSResponder(t *testing.T) {
	t.Parallel()
	node := gatewaytest.NodeWithMQTT(t)
	a, base := mustStart(t, testConfig(t))
	js := startWatched(t, exec.Command(node, writeScript(t, "responder.js", jsResponder), "mqtt://"+a.broker.Addr(), "svc/js"))
	js.waitFor(t, subscribedLine, 10*time.Second)

	// Repeated keys, and a value containing "=": MQTT.js turns a repeated
	// key into an array, {"a":["1","2"]}, and sends each element as its
	// own property again, grouped by key.
	props := []string{"Mqtt-User-Property", "a=1", "Mqtt-User-Property", "b=x=y", "Mqtt-User-Property", "a=2"}
	const wantProps = "[a=1 a=2 b=x=y]"

	r := post(t, base+"/rpc/svc/js?qos=1&timeout=5s", strings.NewReader(`{"n":0}`),
		append([]string{"Content-Type", "application/json"}, props...)...)
	if r.status != 200 || string(r.body) != `{"n":0}` || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %q Content-Type %q", r.status, r.body, r.header.Get("Content-Type"))
	}
	if got := fmt.Sprint(r.header.Values("Mqtt-User-Property")); got != wantProps {
		t.Fatalf("Mqtt-User-Property %s, want %s", got, wantProps)
	}
	// What MQTT.js saw: the request at QoS 1 with the three properties in
	// order (so grouped as above) and a UUID as correlation data.
	js.waitFor(t, regexp.MustCompile(`(?m)^request \{"topic":"svc/js","qos":1,"contentType":"application/json","userProperties":\{"a":\["1","2"\],"b":"x=y"\},"correlationData":"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"\}$`), 5*time.Second)

	// Many QoS 1 round trips with user properties both ways: one
	// unparsable PUBACK and MQTT.js would drop the connection.
	for i := 1; i <= 50; i++ {
		body := fmt.Sprintf(`{"n":%d}`, i)
		r := post(t, base+"/rpc/svc/js?qos=1&timeout=5s", strings.NewReader(body),
			append([]string{"Content-Type", "application/json"}, props...)...)
		if r.status != 200 || string(r.body) != body || r.header.Get("Content-Type") != "application/json" ||
			fmt.Sprint(r.header.Values("Mqtt-User-Property")) != wantProps {
			t.Fatalf("request %d: got %d %q Content-Type %q properties %q", i, r.status, r.body,
				r.header.Get("Content-Type"), r.header.Values("Mqtt-User-Property"))
		}
	}
	// A request without content type or properties: none come back.
	r = post(t, base+"/rpc/svc/js?qos=2&timeout=5s", strings.NewReader("plain"))
	if r.status != 200 || string(r.body) != "plain" || r.header.Get("Content-Type") != "application/octet-stream" ||
		len(r.header.Values("Mqtt-User-Property")) != 0 {
		t.Fatalf("bare request: got %d %q Content-Type %q properties %q", r.status, r.body,
			r.header.Get("Content-Type"), r.header.Values("Mqtt-User-Property"))
	}
	js.alive(t)
	if s := js.stderr.String(); s != "" {
		t.Errorf("MQTT.js responder wrote to stderr: %s", s)
	}
	wantNoPending(t, a)
}

// TestMosquittoRRAndPythonRequesterAgainstEmbeddedBroker: the embedded
// broker is an ordinary MQTT v5 broker for clients that don't go through
// HTTP: mosquitto_rr and the guide's Python requester ask the real
// temperature-service binary directly.
func TestMosquittoRRAndPythonRequesterAgainstEmbeddedBroker(t *testing.T) {
	t.Parallel()
	rr := gatewaytest.Need(t, "mosquitto_rr", "apt-get install -y mosquitto-clients")
	py := gatewaytest.PythonWithPaho(t)
	a, base := mustStart(t, testConfig(t))
	host, port := hostPort(t, a.broker.Addr())

	gatewaytest.StartProcess(t, exec.Command(gatewaytest.Binary(t, "temperature-service"), "--broker", "mqtt://"+a.broker.Addr()))
	deadline := time.Now().Add(15 * time.Second)
	for !a.broker.HasSubscribers("service/temperature/query") {
		if time.Now().After(deadline) {
			t.Fatal("temperature-service not subscribed within 15s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	t.Run("mosquitto_rr", func(t *testing.T) {
		out := runBounded(t, 10*time.Second, exec.Command(rr, "-V", "5", "-h", host, "-p", port,
			"-t", "service/temperature/query", "-e", "clients/rr/"+rand.Text(), "-m", "query:Berlin", "-W", "5"))
		if out != "Temperature in Berlin: 18.3°C\n" {
			t.Fatalf("mosquitto_rr printed %q", out)
		}
	})
	t.Run("mosquitto_rr cannot use the gateway's response topic", func(t *testing.T) {
		// The broker refuses a SUBSCRIBE under mqttgw/reply, so no client
		// can read other requests' replies. mosquitto_rr 2.0 reports the
		// refused SUBACK as "Not authorized", sends no request and (2.0.11)
		// exits with status 0; accept any status, but not an answer.
		cmd := exec.Command(rr, "-V", "5", "-h", host, "-p", port,
			"-t", "service/temperature/query", "-e", "mqttgw/reply/"+rand.Text(), "-m", "query:Berlin", "-W", "2")
		var out gatewaytest.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatal("mosquitto_rr -W 2 still running after 10s")
		}
		if !strings.Contains(out.String(), "Not authorized") || strings.Contains(out.String(), "Temperature") {
			t.Fatalf("mosquitto_rr on a reserved response topic printed %q; want \"Not authorized\" and no answer", out.String())
		}
	})
	t.Run("python requester", func(t *testing.T) {
		out := runBounded(t, 15*time.Second, pythonCommand(py, writeScript(t, "requester.py", pythonRequester),
			host, port, "tcp", "service/temperature/query", "response/client-"+rand.Text(), "Vienna", "Berlin"))
		for city, want := range map[string]string{"Vienna": "Temperature in Vienna: 22.5°C", "Berlin": "Temperature in Berlin: 18.3°C"} {
			sent := regexp.MustCompile(`(?m)^Sent request ([0-9a-f-]{36}): query:` + city + `$`).FindStringSubmatch(out)
			if sent == nil {
				t.Fatalf("no request for %s in:\n%s", city, out)
			}
			answer := "Received response for request " + sent[1] + "\nResponse: " + want + "\nContent type: text/plain\n"
			if !strings.Contains(out, answer) {
				t.Fatalf("no %q in:\n%s", answer, out)
			}
		}
		if !strings.HasSuffix(out, "Request/Response demo completed\n") {
			t.Fatalf("requester did not finish cleanly:\n%s", out)
		}
	})
	t.Run("gateway alongside", func(t *testing.T) {
		r := post(t, base+"/rpc/service/temperature/query?timeout=5s", strings.NewReader("query:Paris"))
		if r.status != 200 || string(r.body) != "Temperature in Paris: 20.1°C" || r.header.Get("Content-Type") != "text/plain" {
			t.Fatalf("got %d %q Content-Type %q", r.status, r.body, r.header.Get("Content-Type"))
		}
	})
	wantNoPending(t, a)
}

// TestWebSocketClient: MQTT over WebSocket on the embedded broker's
// --ws-addr listener, with MQTT.js as the responder, answering the gateway
// and a Python paho requester that also connects over WebSocket.
func TestWebSocketClient(t *testing.T) {
	t.Parallel()
	node := gatewaytest.NodeWithMQTT(t)
	a, base := mustStart(t, testConfig(t, "--ws-addr", "127.0.0.1:0"))
	if a.broker.WSAddr() == "" || strings.HasSuffix(a.broker.WSAddr(), ":0") {
		t.Fatalf("WSAddr %q is not a bound address", a.broker.WSAddr())
	}
	js := startWatched(t, exec.Command(node, writeScript(t, "responder.js", jsResponder), "ws://"+a.broker.WSAddr()+"/mqtt", "svc/ws"))
	js.waitFor(t, subscribedLine, 10*time.Second)

	r := post(t, base+"/rpc/svc/ws?timeout=5s", strings.NewReader("over websocket"),
		"Content-Type", "text/plain; charset=utf-8", "Mqtt-User-Property", "via=ws")
	if r.status != 200 || string(r.body) != "over websocket" || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("got %d %q Content-Type %q", r.status, r.body, r.header.Get("Content-Type"))
	}
	if got := fmt.Sprint(r.header.Values("Mqtt-User-Property")); got != "[via=ws]" {
		t.Fatalf("Mqtt-User-Property %s", got)
	}

	t.Run("python paho over websocket", func(t *testing.T) {
		py := gatewaytest.PythonWithPaho(t)
		host, port := hostPort(t, a.broker.WSAddr())
		out := runBounded(t, 15*time.Second, pythonCommand(py, writeScript(t, "requester.py", pythonRequester),
			host, port, "websockets", "svc/ws", "response/ws-"+rand.Text(), "Graz"))
		sent := regexp.MustCompile(`(?m)^Sent request ([0-9a-f-]{36}): query:Graz$`).FindStringSubmatch(out)
		if sent == nil {
			t.Fatalf("no request in:\n%s", out)
		}
		// The MQTT.js responder echoes payload and content type.
		answer := "Received response for request " + sent[1] + "\nResponse: query:Graz\nContent type: text/plain\n"
		if !strings.Contains(out, answer) || !strings.HasSuffix(out, "Request/Response demo completed\n") {
			t.Fatalf("no %q, or no clean finish, in:\n%s", answer, out)
		}
	})
	js.alive(t)
	wantNoPending(t, a)
}
