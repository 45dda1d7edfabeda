package main

// Devices that are offline, asleep or slow, end to end: async requests to
// a Python paho device with a persistent session, on the embedded broker
// and on mosquitto; late replies; idempotency keys; and records that
// survive a kill -9, of the embedded gateway (with --data-dir) and of one
// of two replicas on mosquitto.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// pahoSleepyDevice HOST PORT CLIENT-ID TOPIC subscribe|wake: a device
// with a persistent session; see the script's header.
const pahoSleepyDevice = "testdata/paho_sleepy_device.py"

// device runs the sleepy device script once, to completion.
func device(t *testing.T, py, brokerAddr, clientID, topic, mode string) string {
	t.Helper()
	host, port := hostPort(t, brokerAddr)
	return runBounded(t, 20*time.Second, pythonCommand(py, pahoSleepyDevice, host, port, clientID, topic, mode))
}

// statusDoc is the part of a request's status document the tests read.
type statusDoc struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Location string `json:"location"`
	Reply    *struct {
		Status   int    `json:"status"`
		Location string `json:"location"`
	} `json:"reply"`
}

func decodeStatus(t *testing.T, r gatewaytest.Response) statusDoc {
	t.Helper()
	var d statusDoc
	if err := json.Unmarshal(r.Body, &d); err != nil || d.ID == "" {
		t.Fatalf("not a status document (%d): %q %v", r.Status, r.Body, err)
	}
	return d
}

// submitAsync posts an async request and checks the 202.
func submitAsync(t *testing.T, base, topic, query, body string, header ...string) statusDoc {
	t.Helper()
	r := gatewaytest.Post(t, base+"/rpc/"+topic+query, strings.NewReader(body), append([]string{"Prefer", "respond-async"}, header...)...)
	d := decodeStatus(t, r)
	if r.Status != http.StatusAccepted || r.Header.Get("Location") != "/requests/"+d.ID || d.Location != "/requests/"+d.ID {
		t.Fatalf("async request: %d, Location %q, %+v", r.Status, r.Header.Get("Location"), d)
	}
	return d
}

// getStatus reads a request's status document, long-polling with wait.
func getStatus(t *testing.T, base, id string, wait int) statusDoc {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/requests/"+id, nil)
	if wait > 0 {
		req.Header.Set("Prefer", "wait="+strconv.Itoa(wait))
	}
	r := gatewaytest.Do(t, http.DefaultClient, req)
	if r.Status != 200 {
		t.Fatalf("GET /requests/%s: %d %s", id, r.Status, r.Body)
	}
	return decodeStatus(t, r)
}

// waitState long-polls until the request is in state want.
func waitState(t *testing.T, base, id, want string) statusDoc {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		d := getStatus(t, base, id, 5)
		if d.State == want {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s is %s, want %s", id, d.State, want)
		}
	}
}

var receivedLine = regexp.MustCompile(`(?m)^received: (.*) expiry=(\d+|None)$`)

// wantAnswered checks a device's reply as GET …/reply serves it: 201 and
// the body byte for byte.
func wantAnswered(t *testing.T, base, id, request string) {
	t.Helper()
	d := waitState(t, base, id, "answered")
	if d.Reply == nil || d.Reply.Status != 201 || d.Reply.Location != "/requests/"+id+"/reply" {
		t.Fatalf("status document %+v, want the reply's 201 and location", d)
	}
	req, _ := http.NewRequest(http.MethodGet, base+d.Reply.Location, nil)
	r := gatewaytest.Do(t, http.DefaultClient, req)
	want := "\x00\xff done: " + request
	if r.Status != 201 || string(r.Body) != want || r.Header.Get("Content-Type") != "application/octet-stream" ||
		r.Header.Get("Mqtt-User-Property") != "http-status=201" {
		t.Fatalf("reply: %d %q %v; want 201 %q", r.Status, r.Body, r.Header, want)
	}
}

// brokers runs test against the embedded broker and against mosquitto,
// each with a fresh gateway: base is its HTTP URL, brokerAddr the MQTT
// address devices connect to.
func brokers(t *testing.T, test func(t *testing.T, base, brokerAddr string)) {
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		a, base := mustStart(t, testConfig(t))
		test(t, base, a.broker.Addr())
	})
	t.Run("mosquitto", func(t *testing.T) {
		t.Parallel()
		m := gatewaytest.StartMosquitto(t)
		_, base := mustStart(t, testConfig(t, "--broker", m.URL()))
		test(t, base, m.Addr)
	})
}

// A device with a persistent session is offline when an async request
// with ttl=5m comes; it wakes 3 s later, gets the request with its Message
// Expiry counted down, and replies 201; the client fetches the reply.
func TestSleepingDevice(t *testing.T) {
	t.Parallel()
	py := gatewaytest.PythonWithPaho(t)
	brokers(t, func(t *testing.T, base, brokerAddr string) {
		device(t, py, brokerAddr, "sensor-1", "devices/sensor-1/cmd", "subscribe")
		d := submitAsync(t, base, "devices/sensor-1/cmd", "?ttl=5m", "read-meter")
		if d.State != "published" {
			// The offline session's subscription counts as a responder:
			// the request is queued there, not kept waiting.
			t.Fatalf("state %q, want published", d.State)
		}
		time.Sleep(3 * time.Second)
		out := device(t, py, brokerAddr, "sensor-1", "devices/sensor-1/cmd", "wake")
		m := receivedLine.FindStringSubmatch(out)
		if !strings.Contains(out, "session present: True") || m == nil || m[1] != "read-meter" {
			t.Fatalf("the device did not get the request from its session:\n%s", out)
		}
		if expiry, err := strconv.Atoi(m[2]); err != nil || expiry < 290 || expiry > 297 {
			t.Fatalf("Message Expiry %s, want 300 s counted down by the 3 s asleep", m[2])
		}
		wantAnswered(t, base, d.ID, "read-meter")
	})
}

// A device that wakes after the TTL never sees the request, which has
// expired.
func TestSleepingDeviceTooLate(t *testing.T) {
	t.Parallel()
	py := gatewaytest.PythonWithPaho(t)
	brokers(t, func(t *testing.T, base, brokerAddr string) {
		device(t, py, brokerAddr, "sensor-2", "devices/sensor-2/cmd", "subscribe")
		d := submitAsync(t, base, "devices/sensor-2/cmd", "?ttl=2s", "read-meter")
		waitState(t, base, d.ID, "expired")
		time.Sleep(1500 * time.Millisecond) // the brokers drop expired messages once a second
		out := device(t, py, brokerAddr, "sensor-2", "devices/sensor-2/cmd", "wake")
		if !strings.Contains(out, "session present: True") || receivedLine.MatchString(out) {
			t.Fatalf("the device woke after the TTL and got:\n%s", out)
		}
		r := gatewaytest.Do(t, http.DefaultClient, mustRequest(t, http.MethodGet, base+"/requests/"+d.ID+"/reply"))
		gatewaytest.WantProblem(t, r, http.StatusConflict, "not-answered", "is expired")
	})
}

func mustRequest(t *testing.T, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// A synchronous request that times out names its record; the reply that
// comes later is served there.
func TestLateReply(t *testing.T) {
	t.Parallel()
	a, base := mustStart(t, testConfig(t))
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/slow", 1, func(req *paho.Publish) *paho.Publish {
		time.Sleep(700 * time.Millisecond)
		return &paho.Publish{QoS: 1, Payload: []byte("worth the wait"), Properties: &paho.PublishProperties{ContentType: "text/plain"}}
	})
	r := gatewaytest.Post(t, base+"/rpc/svc/slow?timeout=200ms", nil)
	gatewaytest.WantProblem(t, r, http.StatusGatewayTimeout, "timeout", "a reply that arrives later is kept at /requests/")
	loc := r.Header.Get("Location")
	var p struct{ ID, Location string }
	if err := json.Unmarshal(r.Body, &p); err != nil || loc == "" || p.Location != loc || loc != "/requests/"+p.ID {
		t.Fatalf("504 names %+v, Location %q", p, loc)
	}
	d := waitState(t, base, p.ID, "answered")
	if d.Reply.Status != 200 {
		t.Fatalf("status document %+v", d)
	}
	rr := gatewaytest.Do(t, http.DefaultClient, mustRequest(t, http.MethodGet, base+loc+"/reply"))
	if rr.Status != 200 || string(rr.Body) != "worth the wait" || rr.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("late reply: %d %q", rr.Status, rr.Body)
	}
}

// Two concurrent identical requests with one Idempotency-Key publish
// once; the repeat after it gets the first reply; another request with
// the key is refused.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	a, base := mustStart(t, testConfig(t))
	var calls atomic.Int64
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/pay", 1, func(req *paho.Publish) *paho.Publish {
		n := calls.Add(1)
		time.Sleep(300 * time.Millisecond)
		return &paho.Publish{QoS: 1, Payload: fmt.Appendf(nil, "paid %s #%d", req.Payload, n),
			Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "http-status", Value: "201"}}}}
	})
	key := []string{"Idempotency-Key", `"order-42"`}
	var wg sync.WaitGroup
	results := make([]gatewaytest.Response, 2)
	for i := range results {
		wg.Go(func() { results[i] = gatewaytest.Post(t, base+"/rpc/svc/pay", strings.NewReader("10 EUR"), key...) })
	}
	wg.Wait()
	var ok, conflict int
	for _, r := range results {
		switch {
		case r.Status == 201 && string(r.Body) == "paid 10 EUR #1":
			ok++
		case r.Status == 409:
			gatewaytest.WantProblem(t, r, 409, "idempotency-key-in-flight", "order-42")
			conflict++
		default:
			t.Fatalf("concurrent request: %d %s", r.Status, r.Body)
		}
	}
	if ok != 1 || conflict != 1 {
		t.Fatalf("%d answered and %d conflicts, want one each", ok, conflict)
	}
	again := gatewaytest.Post(t, base+"/rpc/svc/pay", strings.NewReader("10 EUR"), key...)
	if again.Status != 201 || string(again.Body) != "paid 10 EUR #1" {
		t.Fatalf("repeat: %d %q, want the first reply", again.Status, again.Body)
	}
	other := gatewaytest.Post(t, base+"/rpc/svc/pay", strings.NewReader("99 EUR"), key...)
	gatewaytest.WantProblem(t, other, http.StatusUnprocessableEntity, "idempotency-key-reused", "order-42")
	if n := calls.Load(); n != 1 {
		t.Fatalf("the responder was called %d times, want once", n)
	}
}

// startBinary runs the mqttgw binary with args on a fresh HTTP port and
// waits until it is ready; kill ends it with SIGKILL.
func startBinary(t *testing.T, httpAddr string, args ...string) (base string, kill func()) {
	t.Helper()
	cmd := gatewaytest.StartProcess(t, exec.Command(gatewaytest.Binary(t, "mqttgw"), append([]string{"--http-addr", httpAddr, "--log-level", "warn"}, args...)...))
	base = "http://" + httpAddr
	waitReady(t, base)
	return base, func() {
		_ = cmd.Process.Kill()
		// StartProcess's cleanup reaps it; wait until the port is free.
		gatewaytest.Eventually(t, 5*time.Second, "the killed gateway's port is free", func() bool {
			_, err := http.Get(base + "/healthz")
			return err != nil
		})
	}
}

// kill -9 of the embedded gateway with --data-dir holding an async
// request for an offline device: after the restart the device gets the
// request from its restored session, and the reply is captured and
// served.
func TestKillNineWithDataDir(t *testing.T) {
	t.Parallel()
	py := gatewaytest.PythonWithPaho(t)
	dir, httpAddr, mqttAddr := t.TempDir(), gatewaytest.FreePort(t), gatewaytest.FreePort(t)
	args := []string{"--mqtt-addr", mqttAddr, "--data-dir", dir}
	base, kill := startBinary(t, httpAddr, args...)
	device(t, py, mqttAddr, "meter-9", "meters/9/cmd", "subscribe")
	d := submitAsync(t, base, "meters/9/cmd", "?ttl=5m", "reset")
	kill()

	base, _ = startBinary(t, httpAddr, args...)
	if got := getStatus(t, base, d.ID, 0); got.State != "published" {
		t.Fatalf("after the restart the request is %q, want published", got.State)
	}
	out := device(t, py, mqttAddr, "meter-9", "meters/9/cmd", "wake")
	if m := receivedLine.FindStringSubmatch(out); m == nil || m[1] != "reset" || m[2] == "None" {
		t.Fatalf("the device did not get the request after the restart:\n%s", out)
	}
	wantAnswered(t, base, d.ID, "reset")
}

// Two replicas on mosquitto: the one that accepted an async request is
// killed for good; the other captures the reply and serves it.
func TestKillNineReplica(t *testing.T) {
	t.Parallel()
	py := gatewaytest.PythonWithPaho(t)
	m := gatewaytest.StartMosquitto(t)
	baseA, killA := startBinary(t, gatewaytest.FreePort(t), "--broker", m.URL(), "--instance-id", "gw-a")
	baseB, _ := startBinary(t, gatewaytest.FreePort(t), "--broker", m.URL(), "--instance-id", "gw-b")
	device(t, py, m.Addr, "valve-3", "valves/3/cmd", "subscribe")
	d := submitAsync(t, baseA, "valves/3/cmd", "?ttl=5m", "close")
	// The record reaches the other replica through the broker, a moment
	// after the 202.
	gatewaytest.Eventually(t, 5*time.Second, "replica b knows the request", func() bool {
		r := gatewaytest.Do(t, nil, mustRequest(t, http.MethodGet, baseB+"/requests/"+d.ID))
		return r.Status == 200 && decodeStatus(t, r).State == "published"
	})
	killA()
	out := device(t, py, m.Addr, "valve-3", "valves/3/cmd", "wake")
	if !receivedLine.MatchString(out) {
		t.Fatalf("the device got nothing:\n%s", out)
	}
	wantAnswered(t, baseB, d.ID, "close")
}
