package gateway_test

// The external-broker transport (Dial) against real brokers: mosquitto,
// and mqttgw's embedded broker where mosquitto 2.0 can't play the part.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// testGateway is a gateway on an external broker, with its transport and
// its JSON log.
type testGateway struct {
	*gateway.Gateway
	transport gateway.Transport
	logs      *gatewaytest.Buffer
}

// startGateway dials the broker at rawURL with bc's settings (URL,
// ClientID and Logger are set here) and starts a gateway on it. The
// client id is derived from the instance id as the command does, so that
// a test can take it over. The test's cleanup closes the gateway.
func startGateway(t *testing.T, rawURL, instanceID string, bc gateway.BrokerConfig) *testGateway {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	logs := &gatewaytest.Buffer{}
	bc.URL, bc.ClientID = u, "mqttgw-"+instanceID
	bc.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	tr, err := gateway.Dial(bc)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(gateway.Config{InstanceID: instanceID, Logger: bc.Logger}, tr)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := g.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("log of gateway %s:\n%s", instanceID, logs.String())
		}
	})
	return &testGateway{g, tr, logs}
}

// waitReady waits until the response subscription is up.
func (g *testGateway) waitReady(t *testing.T) {
	t.Helper()
	gatewaytest.Eventually(t, 10*time.Second, "the gateway is ready", func() bool { return g.Ready() == nil })
}

// ask sends payload to topic at qos and waits for the reply, timeout at
// most.
func (g *testGateway) ask(topic string, qos byte, payload string, timeout time.Duration) (gateway.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return g.Request(ctx, gateway.Request{Topic: topic, QoS: qos, Payload: []byte(payload)})
}

// logged returns the JSON log records whose msg is msg.
func (g *testGateway) logged(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(g.logs.String()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// publicFile writes data to a file mosquitto can read after dropping
// root to a user of its own.
func publicFile(t *testing.T, name, data string) string {
	t.Helper()
	path := filepath.Join(gatewaytest.PublicTempDir(t), name)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Content type and user properties make the trip both ways at every QoS,
// and the request carries what a responder needs to answer it in time.
func TestMosquittoRoundTrip(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "roundtrip", gateway.BrokerConfig{})
	seen := make(chan *paho.Publish, 1)
	gatewaytest.StartResponder(t, m.URL(), "svc/echo", 2, func(req *paho.Publish) *paho.Publish {
		seen <- req
		return gatewaytest.Echo(req)
	})
	g.waitReady(t)

	// Repeated keys and their order must survive both ways.
	props := []gateway.UserProperty{{Key: "k", Value: "v"}, {Key: "a", Value: "x=y"}, {Key: "k", Value: "w"}}
	for qos := byte(0); qos <= 2; qos++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := g.Request(ctx, gateway.Request{Topic: "svc/echo", QoS: qos, Payload: []byte("via mosquitto"),
			ContentType: "text/plain", UserProperties: props})
		cancel()
		if err != nil || string(r.Payload) != "via mosquitto" || r.ContentType != "text/plain" || !slices.Equal(r.UserProperties, props) {
			t.Fatalf("qos %d: got %q %q %v, %v", qos, r.Payload, r.ContentType, r.UserProperties, err)
		}
		req := <-seen
		p := req.Properties
		if req.QoS != qos || p.ResponseTopic != g.ResponseTopic() || len(p.CorrelationData) == 0 ||
			p.MessageExpiry == nil || *p.MessageExpiry == 0 || *p.MessageExpiry > 5 {
			t.Fatalf("qos %d: the responder got qos %d, properties %+v", qos, req.QoS, p)
		}
	}
	if n := g.Stats().Pending; n != 0 {
		t.Fatalf("%d pending entries left", n)
	}
}

// At QoS 1 mosquitto's PUBACK says "no matching subscribers" (0x10), so
// the request fails at once; at QoS 0 nothing can say so, and it times
// out.
func TestMosquittoNoResponders(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "noresponders", gateway.BrokerConfig{})
	g.waitReady(t)

	start := time.Now()
	if _, err := g.ask("nobody/home", 1, "x", 30*time.Second); !errors.Is(err, gateway.ErrNoResponders) {
		t.Fatalf("qos 1: %v, want ErrNoResponders", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("qos 1: ErrNoResponders took %s", d)
	}
	if _, err := g.ask("nobody/home", 0, "x", 300*time.Millisecond); !errors.Is(err, gateway.ErrTimeout) {
		t.Fatalf("qos 0: %v, want ErrTimeout", err)
	}
	if n := g.Stats().Pending; n != 0 {
		t.Fatalf("%d pending entries left", n)
	}
}

// With a wait for a responder, a PUBACK 0x10 is retried until a responder
// has subscribed; without one in time, the error says how long it waited.
func TestMosquittoWaitForResponder(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "waitforresponder", gateway.BrokerConfig{})
	g.waitReady(t)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		r, err := g.Request(ctx, gateway.Request{Topic: "late/svc", Payload: []byte("hi"), QoS: 1, WaitForResponder: 10 * time.Second})
		if err == nil && string(r.Payload) != "hi" {
			err = fmt.Errorf("reply %q", r.Payload)
		}
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	gatewaytest.StartResponder(t, m.URL(), "late/svc", 1, gatewaytest.Echo)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reply after the responder subscribed")
	}

	_, err := g.Request(context.Background(), gateway.Request{Topic: "nobody/home", QoS: 1, WaitForResponder: 500 * time.Millisecond})
	if !errors.Is(err, gateway.ErrNoResponders) || !strings.Contains(err.Error(), "within the 500ms waited") {
		t.Fatalf("got %v, want no responders naming the wait", err)
	}
	if n := g.Stats().Pending; n != 0 {
		t.Fatalf("%d pending entries left", n)
	}
}

// A publication nobody is subscribed to is taken (PUBACK 0x10 is a
// success code) and retained; a later subscriber gets it.
func TestMosquittoPublication(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "publication", gateway.BrokerConfig{})
	g.waitReady(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Publish(ctx, gateway.Publication{Topic: "lamps/1", Payload: []byte("on"), QoS: 1, Retain: true, TTL: time.Minute}); err != nil {
		t.Fatalf("publication with nobody subscribed: %v", err)
	}
	got := make(chan *paho.Publish, 1)
	cm := gatewaytest.Dial(t, m.URL(), gatewaytest.ClientOptions{}, func(p *paho.Publish) { got <- p })
	gatewaytest.Subscribe(t, cm, "lamps/1", 1)
	select {
	case p := <-got:
		if string(p.Payload) != "on" || !p.Retain || p.Properties.ResponseTopic != "" {
			t.Fatalf("got %+v", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the retained publication never came")
	}
}

// A PUBACK reason code of 0x80 or above, here 0x87 from an ACL, is a
// PublishError carrying it.
func TestMosquittoRejectsPublish(t *testing.T) {
	t.Parallel()
	acl := publicFile(t, "acl", "topic readwrite #\ntopic deny forbidden/#\n")
	m := gatewaytest.StartMosquitto(t, "acl_file "+acl)
	g := startGateway(t, m.URL(), "rejected", gateway.BrokerConfig{})
	g.waitReady(t)

	_, err := g.ask("forbidden/x", 1, "x", 5*time.Second)
	var perr *gateway.PublishError
	if !errors.As(err, &perr) || perr.ReasonCode != 0x87 || !strings.Contains(err.Error(), "0x87") {
		t.Fatalf("got %v, want a PublishError with reason code 0x87", err)
	}
}

// paho refuses a QoS above the broker's Maximum QoS before sending
// anything; the gateway reports it as the broker would, 0x9B.
func TestMosquittoMaxQoS(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t, "max_qos 1")
	g := startGateway(t, m.URL(), "maxqos", gateway.BrokerConfig{})
	g.waitReady(t)

	_, err := g.ask("svc/x", 2, "x", 5*time.Second)
	var perr *gateway.PublishError
	if !errors.As(err, &perr) || perr.ReasonCode != 0x9B {
		t.Fatalf("qos 2: %v, want a PublishError with reason code 0x9B", err)
	}
	if _, err := g.ask("svc/x", 1, "x", 5*time.Second); !errors.Is(err, gateway.ErrNoResponders) {
		t.Fatalf("qos 1 after the refused qos 2: %v, want ErrNoResponders", err)
	}
}

// A request larger than the broker's Maximum Packet Size is refused before
// it is sent: mosquitto would drop the connection for it, failing every
// other request in flight.
func TestMosquittoMaxPacketSize(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t, "max_packet_size 2000")
	g := startGateway(t, m.URL(), "maxpacket", gateway.BrokerConfig{})
	gatewaytest.StartResponder(t, m.URL(), "svc/echo", 1, gatewaytest.Echo)
	g.waitReady(t)

	_, err := g.ask("svc/echo", 1, strings.Repeat("x", 3000), 5*time.Second)
	if !errors.Is(err, gateway.ErrTooLarge) || !strings.Contains(err.Error(), "at most 2000") {
		t.Fatalf("3000 bytes: %v, want ErrTooLarge naming the limit", err)
	}
	if r, err := g.ask("svc/echo", 1, "small", 5*time.Second); err != nil || string(r.Payload) != "small" {
		t.Fatalf("after the refused request: %q, %v", r.Payload, err)
	}
	if l := g.logged(t, "broker connection down"); len(l) != 0 {
		t.Fatalf("the connection dropped: %v", l)
	}
}

// A broker that refuses the response subscription leaves the gateway
// unready, and the log says why. mosquitto 2.0's acl_file grants any
// subscription (it filters deliveries instead); mqttgw's embedded broker
// refuses its own response prefix to network clients.
func TestResponseSubscriptionRefused(t *testing.T) {
	t.Parallel()
	b, _ := brokertest.Start(t, broker.Config{})
	g := startGateway(t, "mqtt://"+b.Addr(), "refused", gateway.BrokerConfig{})

	gatewaytest.Eventually(t, 10*time.Second, "the refusal is logged", func() bool {
		for _, l := range g.logged(t, "response subscription refused; the gateway stays unready") {
			if e, _ := l["error"].(string); strings.Contains(e, "for "+g.ResponseTopic()) {
				return true
			}
		}
		return false
	})
	if err := g.Ready(); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("Ready: %v, want ErrNotConnected", err)
	}
}

// mqtts:// with a client certificate and a username and password; a wrong
// password never gets the gateway ready.
func TestMosquittoTLSAndPassword(t *testing.T) {
	t.Parallel()
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

	g := startGateway(t, "mqtts://"+tlsAddr, "tls", gateway.BrokerConfig{
		TLS: pki.ClientTLS(t, true), Username: "gateway", Password: "s3cret"})
	g.waitReady(t)
	if r, err := g.ask("svc/tls", 1, "secure", 5*time.Second); err != nil || string(r.Payload) != "secure" {
		t.Fatalf("over TLS: %q, %v", r.Payload, err)
	}

	wrong := startGateway(t, "mqtts://"+tlsAddr, "wrong", gateway.BrokerConfig{
		TLS: pki.ClientTLS(t, true), Username: "gateway", Password: "wrong", MinBackoff: 20 * time.Millisecond})
	gatewaytest.Eventually(t, 10*time.Second, "several refused connection attempts", func() bool {
		return len(wrong.logged(t, "broker connection attempt failed")) >= 3
	})
	if err := wrong.Ready(); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("with a wrong password: Ready %v, want ErrNotConnected", err)
	}
}

// The broker killed with requests in flight: they fail at once instead of
// running into their timeout, and once the broker is back the same
// gateway serves again.
func TestMosquittoKilledAndRestarted(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "killed", gateway.BrokerConfig{})
	release := make(chan struct{})
	var releaseOnce sync.Once
	// Before the responder's cleanup, which waits for its handlers.
	defer releaseOnce.Do(func() { close(release) })
	resp := gatewaytest.StartResponder(t, m.URL(), "svc/slow", 1, func(req *paho.Publish) *paho.Publish {
		<-release // hold every request until the broker is gone
		return gatewaytest.Echo(req)
	})
	g.waitReady(t)

	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := g.ask("svc/slow", 1, "x", 30*time.Second)
			errs <- err
		})
	}
	gatewaytest.Eventually(t, 10*time.Second, "the responder has every request", func() bool { return resp.Handled() == n })

	killed := time.Now()
	m.Kill()
	wg.Wait()
	close(errs)
	if d := time.Since(killed); d > 5*time.Second {
		t.Fatalf("in-flight requests took %s to fail; they should fail at once, not at their 30s timeout", d)
	}
	for err := range errs {
		if !errors.Is(err, gateway.ErrNotConnected) || !strings.Contains(err.Error(), "connection lost") {
			t.Fatalf("in flight: %v, want ErrNotConnected for the lost connection", err)
		}
	}
	if st := g.Stats(); st.Pending != 0 {
		t.Fatalf("%d pending entries left after the connection dropped", st.Pending)
	}
	if err := g.Ready(); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("Ready with the broker gone: %v", err)
	}
	if _, err := g.ask("svc/slow", 1, "x", 5*time.Second); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("with the broker gone: %v, want ErrNotConnected", err)
	}
	// The gateway checks readiness first; the transport must say so too,
	// for a publish that races the connection going down.
	if err := g.transport.Publish(context.Background(), &gateway.Message{Topic: "svc/slow", QoS: 1}); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("transport Publish with the broker gone: %v, want ErrNotConnected", err)
	}

	releaseOnce.Do(func() { close(release) })
	m.Start()
	g.waitReady(t)
	// The responder reconnects on its own; wait until it has resubscribed.
	gatewaytest.Eventually(t, 20*time.Second, "a request is answered again", func() bool {
		r, err := g.ask("svc/slow", 1, "back", 5*time.Second)
		return err == nil && string(r.Payload) == "back"
	})
}

// A frozen broker (SIGSTOP) keeps its TCP connections open: only the
// keep-alive notices. A request waiting on it fails within two
// keep-alives, not at its own timeout.
func TestMosquittoFrozen(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "frozen", gateway.BrokerConfig{KeepAlive: 1})
	gatewaytest.StartResponder(t, m.URL(), "svc/echo", 1, gatewaytest.Echo)
	g.waitReady(t)
	if _, err := g.ask("svc/echo", 1, "x", 5*time.Second); err != nil {
		t.Fatalf("before the freeze: %v", err)
	}

	m.Freeze()
	frozen := time.Now()
	// Well within the first keep-alive: the PUBACK never comes.
	if _, err := g.ask("svc/echo", 1, "x", 300*time.Millisecond); !errors.Is(err, gateway.ErrTimeout) ||
		!strings.Contains(err.Error(), "not acknowledged") {
		t.Fatalf("a short request to the frozen broker: %v, want ErrTimeout for the missing PUBACK", err)
	}
	_, err := g.ask("svc/echo", 1, "x", 30*time.Second)
	// Two keep-alives, and a little for the scheduler.
	if d := time.Since(frozen); d > 4*time.Second {
		t.Fatalf("a request to a frozen broker took %s; it should fail within two keep-alives", d)
	}
	if !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("a request to the frozen broker: %v, want ErrNotConnected", err)
	}
	if err := g.Ready(); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("Ready with the broker frozen: %v", err)
	}

	m.Thaw()
	g.waitReady(t)
	if _, err := g.ask("svc/echo", 1, "x", 5*time.Second); err != nil {
		t.Fatalf("after the thaw: %v", err)
	}
}

// Anyone who may connect to the broker can read the gateway's client id
// from a request's Response Topic and take its connection over. mosquitto
// 2.0 then closes the gateway's connection without a DISCONNECT, so the
// log has to guess; it names the client id to look for.
func TestMosquittoClientIDTakeoverIsLogged(t *testing.T) {
	t.Parallel()
	m := gatewaytest.StartMosquitto(t)
	g := startGateway(t, m.URL(), "takeover", gateway.BrokerConfig{})
	g.waitReady(t)

	intruder := gatewaytest.Dial(t, m.URL(), gatewaytest.ClientOptions{ClientID: "mqttgw-takeover"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Gone at once, so that the two don't keep taking the id from each
	// other.
	if err := intruder.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}

	gatewaytest.Eventually(t, 10*time.Second, "the takeover is logged", func() bool {
		for _, l := range g.logged(t, "broker connection failed") {
			if strings.Contains(fmt.Sprint(l["error"]), "is another client using client id mqttgw-takeover") {
				return true
			}
		}
		return false
	})
	g.waitReady(t) // and it comes back
}

func TestDialValidatesItsConfig(t *testing.T) {
	for _, tt := range []struct {
		url, clientID, want string
	}{
		{"", "x", "needs a host"},
		{"mqtt://", "x", "needs a host"},
		{"http://broker:1883", "x", `scheme "http"`},
		{"mqtt://broker:1883", "", "client id is empty"},
	} {
		var u *url.URL
		if tt.url != "" {
			u, _ = url.Parse(tt.url)
		}
		if _, err := gateway.Dial(gateway.BrokerConfig{URL: u, ClientID: tt.clientID}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Dial(%q, %q): %v, want an error saying %q", tt.url, tt.clientID, err, tt.want)
		}
	}
}

// Until Connect there is nothing to publish on and nothing to close.
func TestTransportBeforeConnect(t *testing.T) {
	u, _ := url.Parse("mqtt://broker:1883")
	tr, err := gateway.Dial(gateway.BrokerConfig{URL: u, ClientID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(context.Background(), &gateway.Message{Topic: "t"}); !errors.Is(err, gateway.ErrNotConnected) {
		t.Fatalf("Publish before Connect: %v, want ErrNotConnected", err)
	}
	if err := tr.Close(context.Background()); err != nil {
		t.Fatalf("Close before Connect: %v", err)
	}
}
