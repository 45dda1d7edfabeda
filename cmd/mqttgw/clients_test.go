package main

// Interoperability with the MQTT clients users actually run: Python
// paho-mqtt (Debian's 1.6 API), MQTT.js v5 over TCP and WebSocket,
// mosquitto_rr and the project's own temperature-service binary, each as a
// real process talking to the gateway's embedded broker or to mosquitto
// over 127.0.0.1. The Python and JavaScript programs are files in
// testdata; each one's header says what it does and what it prints.

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// The scripts the tests run. Go runs a package's tests in the package's
// directory, so these relative paths hold.
const (
	// pahoTemperatureResponder HOST PORT: the temperature service in
	// paho-mqtt 1.6; prints "subscribed: ..." once it can take requests.
	pahoTemperatureResponder = "testdata/paho_temperature_responder.py"
	// pahoRequester HOST PORT tcp|websockets REQUEST-TOPIC RESPONSE-TOPIC
	// LOCATION...: asks for each location and exits once all are answered.
	pahoRequester = "testdata/paho_requester.py"
	// mqttjsEchoResponder BROKER-URL TOPIC-FILTER: MQTT.js echoing each
	// request; prints "subscribed [...]" once it can take requests.
	mqttjsEchoResponder = "testdata/mqttjs_echo_responder.js"
)

// pythonCommand runs a script with the paho-capable interpreter,
// unbuffered and in UTF-8, so that every print reaches the test at once.
func pythonCommand(py, script string, args ...string) *exec.Cmd {
	cmd := exec.Command(py, append([]string{"-u", script}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONIOENCODING=utf-8")
	return cmd
}

// watched is a long-running process, started by startWatched, whose
// output the test waits on.
type watched struct {
	name           string
	stdout, stderr *gatewaytest.Buffer
	done           chan struct{} // closed when the process has exited and its output is read
}

// startWatched is gatewaytest.StartProcess for a process the test talks
// to: it keeps standard error apart from standard output, and lets the
// test notice that the process has exited (waitFor, alive), which
// StartProcess can't. It kills the process at cleanup and logs its output
// if the test failed.
func startWatched(t testing.TB, cmd *exec.Cmd) *watched {
	t.Helper()
	w := &watched{
		name:   filepath.Base(cmd.Path),
		stdout: &gatewaytest.Buffer{},
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
// exits first or nothing matches within timeout; startWatched's cleanup
// then logs the output.
func (w *watched) waitFor(t testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var m []string
	gatewaytest.Eventually(t, timeout, fmt.Sprintf("%s printing %q", w.name, re), func() bool {
		exited := w.exited() // first: once it has, the output read next is all of it
		m = re.FindStringSubmatch(w.stdout.String())
		return m != nil || exited
	})
	if m == nil {
		t.Fatalf("%s exited before printing %q", w.name, re)
	}
	return m
}

// alive fails the test if the process has exited.
func (w *watched) alive(t testing.TB) {
	t.Helper()
	if w.exited() {
		t.Fatalf("%s exited", w.name)
	}
}

func (w *watched) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// runBounded runs cmd to completion within timeout and returns its
// standard output; a non-zero exit fails the test.
func runBounded(t testing.TB, timeout time.Duration, cmd *exec.Cmd) string {
	t.Helper()
	stdout, stderr, err := runWithin(t, timeout, cmd)
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), err, stdout, stderr)
	}
	return stdout
}

// runWithin runs cmd to completion and returns its output and how it
// exited. If it runs longer than timeout, it is killed and the test fails.
func runWithin(t testing.TB, timeout time.Duration, cmd *exec.Cmd) (stdout, stderr string, err error) {
	t.Helper()
	var outBuf, errBuf gatewaytest.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s: still running after %s, killed\nstdout:\n%s\nstderr:\n%s",
			strings.Join(cmd.Args, " "), timeout, outBuf.String(), errBuf.String())
	}
	return outBuf.String(), errBuf.String(), err
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

// TestPythonResponder: the temperature service as a Python user writes it
// with paho-mqtt answers gateway requests, behind the embedded broker and
// behind mosquitto.
func TestPythonResponder(t *testing.T) {
	t.Parallel()
	py := gatewaytest.PythonWithPaho(t)

	check := func(t *testing.T, a *app, base, brokerAddr string) {
		host, port := hostPort(t, brokerAddr)
		resp := startWatched(t, pythonCommand(py, pahoTemperatureResponder, host, port))
		resp.waitFor(t, subscribedLine, 10*time.Second)

		for _, city := range []string{"Vienna", "Berlin"} {
			r := gatewaytest.Post(t, base+"/rpc/service/temperature/query?timeout=5s", strings.NewReader("query:"+city),
				"Content-Type", "text/plain")
			want := map[string]string{"Vienna": "Temperature in Vienna: 22.5°C", "Berlin": "Temperature in Berlin: 18.3°C"}[city]
			if r.Status != 200 || string(r.Body) != want || r.Header.Get("Content-Type") != "text/plain" {
				t.Fatalf("%s: got %d %q Content-Type %q, want 200 %q text/plain", city, r.Status, r.Body, r.Header.Get("Content-Type"), want)
			}
			if got := r.Header.Values("Mqtt-User-Property"); len(got) != 0 {
				t.Errorf("%s: unexpected user properties %q", city, got)
			}
		}
		// The responder decoded our correlation data as UTF-8 text, as
		// Python code is apt to (although the README asks responders to
		// echo it byte for byte): that works, as it is a UUID string.
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
	js := startWatched(t, exec.Command(node, mqttjsEchoResponder, "mqtt://"+a.broker.Addr(), "svc/js"))
	js.waitFor(t, subscribedLine, 10*time.Second)

	// Repeated keys, and a value containing "=": MQTT.js turns a repeated
	// key into an array, {"a":["1","2"]}, and sends each element as its
	// own property again, grouped by key.
	props := []string{"Mqtt-User-Property", "a=1", "Mqtt-User-Property", "b=x=y", "Mqtt-User-Property", "a=2"}
	const wantProps = "[a=1 a=2 b=x=y]"

	r := gatewaytest.Post(t, base+"/rpc/svc/js?qos=1&timeout=5s", strings.NewReader(`{"n":0}`),
		append([]string{"Content-Type", "application/json"}, props...)...)
	if r.Status != 200 || string(r.Body) != `{"n":0}` || r.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %q Content-Type %q", r.Status, r.Body, r.Header.Get("Content-Type"))
	}
	if got := fmt.Sprint(r.Header.Values("Mqtt-User-Property")); got != wantProps {
		t.Fatalf("Mqtt-User-Property %s, want %s", got, wantProps)
	}
	// What MQTT.js saw: the request at QoS 1 with the three properties in
	// order (so grouped as above) and a UUID as correlation data.
	js.waitFor(t, regexp.MustCompile(`(?m)^request \{"topic":"svc/js","qos":1,"contentType":"application/json","userProperties":\{"a":\["1","2"\],"b":"x=y"\},"correlationData":"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"\}$`), 5*time.Second)

	// Many QoS 1 round trips with user properties both ways: one
	// unparsable PUBACK and MQTT.js would drop the connection.
	for i := 1; i <= 50; i++ {
		body := fmt.Sprintf(`{"n":%d}`, i)
		r := gatewaytest.Post(t, base+"/rpc/svc/js?qos=1&timeout=5s", strings.NewReader(body),
			append([]string{"Content-Type", "application/json"}, props...)...)
		if r.Status != 200 || string(r.Body) != body || r.Header.Get("Content-Type") != "application/json" ||
			fmt.Sprint(r.Header.Values("Mqtt-User-Property")) != wantProps {
			t.Fatalf("request %d: got %d %q Content-Type %q properties %q", i, r.Status, r.Body,
				r.Header.Get("Content-Type"), r.Header.Values("Mqtt-User-Property"))
		}
	}
	// A request without content type or properties: none come back.
	r = gatewaytest.Post(t, base+"/rpc/svc/js?qos=2&timeout=5s", strings.NewReader("plain"))
	if r.Status != 200 || string(r.Body) != "plain" || r.Header.Get("Content-Type") != "application/octet-stream" ||
		len(r.Header.Values("Mqtt-User-Property")) != 0 {
		t.Fatalf("bare request: got %d %q Content-Type %q properties %q", r.Status, r.Body,
			r.Header.Get("Content-Type"), r.Header.Values("Mqtt-User-Property"))
	}
	js.alive(t)
	if s := js.stderr.String(); s != "" {
		t.Errorf("MQTT.js responder wrote to stderr: %s", s)
	}
	wantNoPending(t, a)
}

// TestMosquittoRRAndPythonRequesterAgainstEmbeddedBroker: the embedded
// broker is an ordinary MQTT v5 broker for clients that don't go through
// HTTP: mosquitto_rr and a Python paho requester ask the real
// temperature-service binary directly.
func TestMosquittoRRAndPythonRequesterAgainstEmbeddedBroker(t *testing.T) {
	t.Parallel()
	rr := gatewaytest.Need(t, "mosquitto_rr", "apt-get install -y mosquitto-clients")
	py := gatewaytest.PythonWithPaho(t)
	a, base := mustStart(t, testConfig(t))
	host, port := hostPort(t, a.broker.Addr())

	gatewaytest.StartProcess(t, exec.Command(gatewaytest.Binary(t, "temperature-service"), "--broker", "mqtt://"+a.broker.Addr()))
	// Until it has subscribed, a request is refused at once as having
	// no responder.
	gatewaytest.Eventually(t, 15*time.Second, "temperature-service subscribed", func() bool {
		return gatewaytest.Post(t, base+"/rpc/service/temperature/query?timeout=2s", strings.NewReader("query:Vienna")).Status != http.StatusServiceUnavailable
	})

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
		stdout, stderr, _ := runWithin(t, 10*time.Second, cmd)
		if out := stdout + stderr; !strings.Contains(out, "Not authorized") || strings.Contains(out, "Temperature") {
			t.Fatalf("mosquitto_rr on a reserved response topic printed %q; want \"Not authorized\" and no answer", out)
		}
	})
	t.Run("python requester", func(t *testing.T) {
		out := runBounded(t, 15*time.Second, pythonCommand(py, pahoRequester, host, port, "tcp", "service/temperature/query", "response/client-"+rand.Text(), "Vienna", "Berlin"))
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
		r := gatewaytest.Post(t, base+"/rpc/service/temperature/query?timeout=5s", strings.NewReader("query:Paris"))
		if r.Status != 200 || string(r.Body) != "Temperature in Paris: 20.1°C" || r.Header.Get("Content-Type") != "text/plain" {
			t.Fatalf("got %d %q Content-Type %q", r.Status, r.Body, r.Header.Get("Content-Type"))
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
	js := startWatched(t, exec.Command(node, mqttjsEchoResponder, "ws://"+a.broker.WSAddr()+"/mqtt", "svc/ws"))
	js.waitFor(t, subscribedLine, 10*time.Second)

	r := gatewaytest.Post(t, base+"/rpc/svc/ws?timeout=5s", strings.NewReader("over websocket"),
		"Content-Type", "text/plain; charset=utf-8", "Mqtt-User-Property", "via=ws")
	if r.Status != 200 || string(r.Body) != "over websocket" || r.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("got %d %q Content-Type %q", r.Status, r.Body, r.Header.Get("Content-Type"))
	}
	if got := fmt.Sprint(r.Header.Values("Mqtt-User-Property")); got != "[via=ws]" {
		t.Fatalf("Mqtt-User-Property %s", got)
	}

	t.Run("python paho over websocket", func(t *testing.T) {
		py := gatewaytest.PythonWithPaho(t)
		host, port := hostPort(t, a.broker.WSAddr())
		out := runBounded(t, 15*time.Second, pythonCommand(py, pahoRequester, host, port, "websockets", "svc/ws", "response/ws-"+rand.Text(), "Graz"))
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
