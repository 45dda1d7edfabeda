package broker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/broker/brokertest"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// connectOnce sends one CONNECT to the plain MQTT listener at addr and
// returns the CONNACK; on success it disconnects again.
func connectOnce(t *testing.T, addr string, cp *paho.Connect) (*paho.Connack, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cp.KeepAlive, cp.CleanStart = 30, true
	ca, err := c.Connect(ctx, cp)
	if err == nil {
		_ = c.Disconnect(&paho.Disconnect{})
		<-c.Done()
	}
	return ca, err
}

func login(user, password string) *paho.Connect {
	return &paho.Connect{Username: user, UsernameFlag: true, Password: []byte(password), PasswordFlag: true}
}

// publish publishes at QoS 1 and returns the PUBACK's reason code.
func publish(t *testing.T, cm *autopaho.ConnectionManager, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if pr == nil {
		t.Fatalf("publish %q: %v", topic, err)
	}
	return pr.ReasonCode
}

// startEchoResponder subscribes a client connected as o says to filter and
// echoes each request's payload to its response topic. Unlike
// gatewaytest.StartResponder it can use TLS, and it returns its
// connection, whose own publishes the tests order after the replies.
func startEchoResponder(t *testing.T, serverURL string, o gatewaytest.ClientOptions, filter string) *autopaho.ConnectionManager {
	t.Helper()
	var (
		cm      atomic.Pointer[autopaho.ConnectionManager]
		mu      sync.Mutex
		stopped bool // Lock should be held.
		wg      sync.WaitGroup
	)
	c := gatewaytest.Dial(t, serverURL, o, func(req *paho.Publish) {
		if req.Properties == nil || req.Properties.ResponseTopic == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		wg.Add(1)
		// paho reads the next packet only once this returns.
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = cm.Load().Publish(ctx, &paho.Publish{
				Topic: req.Properties.ResponseTopic, QoS: 1, Payload: req.Payload,
				Properties: &paho.PublishProperties{CorrelationData: req.Properties.CorrelationData},
			})
		}()
	})
	cm.Store(c)
	// Cleanups run last-in first-out: this one before Dial's disconnects.
	t.Cleanup(func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		wg.Wait()
	})
	if code := gatewaytest.Subscribe(t, c, filter, 1); code >= 0x80 {
		t.Fatalf("responder subscribe %q refused: 0x%02x", filter, code)
	}
	return c
}

// recorder collects the topics a client receives.
type recorder struct {
	mu     sync.Mutex
	topics []string
}

func (r *recorder) record(p *paho.Publish) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, p.Topic)
}

func (r *recorder) seen(topic string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tp := range r.topics {
		if tp == topic {
			return true
		}
	}
	return false
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.topics...)
}

const (
	notAuthorized     = 0x87 // mochi's PUBACK and SUBACK reason for an ACL refusal
	badUserOrPassword = 0x86 // and its CONNACK reason for a failed login
)

func TestUsersFileAuthentication(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.yaml")
	gatewaytest.WriteUsers(t, path,
		gatewaytest.User{Name: "alice", Password: "alice-pw", Publish: []string{"alice/#"}, Subscribe: []string{"alice/#"}},
		gatewaytest.User{Name: "bob", Password: "bob-pw", Publish: []string{"bob/#"}},
	)
	b, _ := brokertest.Start(t, broker.Config{UsersFile: path})

	for name, cp := range map[string]*paho.Connect{
		"anonymous":              {},
		"username only":          {Username: "alice", UsernameFlag: true},
		"wrong password":         login("alice", "bob-pw"),
		"unknown user":           login("mallory", "alice-pw"),
		"empty username":         login("", "alice-pw"),
		"other user's password":  login("bob", "alice-pw"),
		"password case differs":  login("alice", "Alice-pw"),
		"will topic not allowed": withWill(login("alice", "alice-pw"), "bob/status"),
		"will under the prefix":  withWill(login("alice", "alice-pw"), gateway.DefaultResponsePrefix+"/x/y"),
	} {
		ca, err := connectOnce(t, b.Addr(), cp)
		if err == nil || ca == nil || ca.ReasonCode != badUserOrPassword {
			t.Errorf("%s: CONNACK %+v, %v; want refused with 0x86", name, ca, err)
		}
	}
	for name, cp := range map[string]*paho.Connect{
		"right password":  login("alice", "alice-pw"),
		"other user":      login("bob", "bob-pw"),
		"will allowed":    withWill(login("alice", "alice-pw"), "alice/status"),
		"no subscribe ok": login("bob", "bob-pw"),
	} {
		if ca, err := connectOnce(t, b.Addr(), cp); err != nil || ca.ReasonCode != 0 {
			t.Errorf("%s: CONNACK %+v, %v; want success", name, ca, err)
		}
	}

	// A client id in use belongs to its user: another user can neither
	// take the session over (and with it, messages in flight) nor kick
	// the owner off. The owner itself may.
	owner := gatewaytest.Dial(t, "mqtt://"+b.Addr(), gatewaytest.ClientOptions{User: "alice", Password: "alice-pw", ClientID: "shared-id"}, nil)
	cp := login("bob", "bob-pw")
	cp.ClientID = "shared-id"
	if ca, err := connectOnce(t, b.Addr(), cp); err == nil || ca == nil || ca.ReasonCode != badUserOrPassword {
		t.Errorf("other user took client id over: CONNACK %+v, %v", ca, err)
	}
	if code := publish(t, owner, "alice/still-here", "x"); code != 0 {
		t.Errorf("owner's publish after the refused takeover: 0x%02x", code)
	}
}

func withWill(cp *paho.Connect, topic string) *paho.Connect {
	cp.WillMessage = &paho.WillMessage{Topic: topic, QoS: 1, Payload: []byte("gone")}
	return cp
}

func TestUsersFilePublishAndSubscribe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.yaml")
	gatewaytest.WriteUsers(t, path,
		gatewaytest.User{Name: "limited", Password: "pw", Publish: []string{"allowed/#"}, Subscribe: []string{"allowed/#", "jobs/+/status"}},
		gatewaytest.User{Name: "monitor", Password: "pw", Subscribe: []string{"#"}},
	)
	b, _ := brokertest.Start(t, broker.Config{UsersFile: path})
	u := "mqtt://" + b.Addr()

	var mon recorder
	monitor := gatewaytest.Dial(t, u, gatewaytest.ClientOptions{User: "monitor", Password: "pw"}, mon.record)
	if code := gatewaytest.Subscribe(t, monitor, "#", 1); code >= 0x80 {
		t.Fatalf("monitor subscribe #: 0x%02x", code)
	}
	limited := gatewaytest.Dial(t, u, gatewaytest.ClientOptions{User: "limited", Password: "pw"}, nil)

	if code := publish(t, limited, "forbidden/x", "no"); code != notAuthorized {
		t.Errorf("publish outside the filters: PUBACK 0x%02x, want 0x87", code)
	}
	if code := publish(t, limited, "allowed/x", "yes"); code != 0 {
		t.Errorf("publish inside the filters: PUBACK 0x%02x", code)
	}
	if code := publish(t, monitor, "allowed/x", "no"); code != notAuthorized {
		t.Errorf("publish without publish filters: PUBACK 0x%02x, want 0x87", code)
	}
	// mochi delivers one client's publishes in order, so once "allowed/x"
	// has arrived, "forbidden/x" would have too.
	gatewaytest.Eventually(t, 5*time.Second, "allowed/x delivered", func() bool { return mon.seen("allowed/x") })
	if mon.seen("forbidden/x") {
		t.Error("a refused publish was delivered")
	}

	for filter, want := range map[string]bool{
		"allowed/#":             true,
		"allowed/+/x":           true,
		"allowed":               true, // "allowed/#" matches its parent
		"$share/g/allowed/#":    true,
		"jobs/7/status":         true,
		"jobs/+/status":         true,
		"#":                     false,
		"+/x":                   false,
		"forbidden/#":           false,
		"jobs/#":                false, // wider than jobs/+/status
		"jobs/7/+":              false,
		"$share/g/forbidden/x":  false,
		"$SYS/#":                false,
		"mqttgw/reply/#":        false,
		"allowed/../forbidden":  true, // levels are not paths: a topic under allowed/
		"$share/g/jobs/+/statu": false,
	} {
		code := gatewaytest.Subscribe(t, limited, filter, 1)
		if want && code >= 0x80 || !want && code != notAuthorized {
			t.Errorf("subscribe %q: SUBACK 0x%02x, want allowed=%v (0x87 when refused)", filter, code, want)
		}
	}
}

// TestUsersFileRepliesStayPrivate: whatever the users file grants, no
// network client reads the gateway's replies; responders may write them
// only if their publish filters say so.
func TestUsersFileRepliesStayPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.yaml")
	gatewaytest.WriteUsers(t, path,
		gatewaytest.User{Name: "responder", Password: "r", Publish: []string{"mqttgw/reply/#", "done/#"}, Subscribe: []string{"svc/#"}},
		gatewaytest.User{Name: "mute", Password: "m", Subscribe: []string{"svc/#"}},
		// The file tries to grant the replies: it can't.
		gatewaytest.User{Name: "spy", Password: "s", Subscribe: []string{"#", "mqttgw/reply/#", "mqttgw/#"}},
	)
	b, g := brokertest.Start(t, broker.Config{UsersFile: path})
	u := "mqtt://" + b.Addr()
	responder := startEchoResponder(t, u, gatewaytest.ClientOptions{User: "responder", Password: "r"}, "svc/echo")

	var spied recorder
	spy := gatewaytest.Dial(t, u, gatewaytest.ClientOptions{User: "spy", Password: "s"}, spied.record)
	for filter, want := range map[string]bool{
		"#":                             true,
		"mqttgw/#":                      true,
		"+/reply/#":                     true, // accepted, but delivers nothing under the prefix
		"mqttgw/reply/#":                false,
		g.ResponseTopic():               false,
		"$share/g/" + g.ResponseTopic(): false,
	} {
		code := gatewaytest.Subscribe(t, spy, filter, 1)
		if want && code >= 0x80 || !want && code != notAuthorized {
			t.Errorf("spy subscribe %q: SUBACK 0x%02x, want allowed=%v", filter, code, want)
		}
	}

	const n = 10
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		reply, err := g.Request(ctx, gateway.Request{Topic: "svc/echo", Payload: []byte(fmt.Sprint(i)), QoS: 1})
		cancel()
		if err != nil || string(reply.Payload) != fmt.Sprint(i) {
			t.Fatalf("request %d: %q, %v", i, reply.Payload, err)
		}
	}
	// The responder's publishes reach the spy in order: once "done/1" is
	// there, any reply that leaked would be too.
	if code := publish(t, responder, "done/1", ""); code != 0 {
		t.Fatalf("marker: 0x%02x", code)
	}
	gatewaytest.Eventually(t, 5*time.Second, "the marker reaches the spy", func() bool { return spied.seen("done/1") })
	requests := 0
	for _, tp := range spied.all() {
		if strings.HasPrefix(tp, gateway.DefaultResponsePrefix) {
			t.Fatalf("the spy read a reply on %q", tp)
		}
		if tp == "svc/echo" {
			requests++
		}
	}
	if requests != n {
		t.Errorf("the spy saw %d of %d requests; it should see them all", requests, n)
	}

	// A responder without the prefix in its publish filters can't answer.
	startEchoResponder(t, u, gatewaytest.ClientOptions{User: "mute", Password: "m"}, "svc/mute")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := g.Request(ctx, gateway.Request{Topic: "svc/mute", QoS: 1}); !errors.Is(err, gateway.ErrTimeout) {
		t.Fatalf("reply from a responder without publish rights: %v, want ErrTimeout", err)
	}
}

func TestReloadUsers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.yaml")
	pub := gatewaytest.User{Name: "pub", Password: "p", Publish: []string{"#"}}
	gatewaytest.WriteUsers(t, path, pub,
		gatewaytest.User{Name: "u", Password: "old", Publish: []string{"a/#"}, Subscribe: []string{"a/#"}},
		gatewaytest.User{Name: "gone", Password: "g", Publish: []string{"a/#"}},
	)
	b, _ := brokertest.Start(t, broker.Config{UsersFile: path})
	u := "mqtt://" + b.Addr()

	var got recorder
	sub := gatewaytest.Dial(t, u, gatewaytest.ClientOptions{User: "u", Password: "old"}, got.record)
	if code := gatewaytest.Subscribe(t, sub, "a/#", 1); code >= 0x80 {
		t.Fatalf("subscribe: 0x%02x", code)
	}
	gone := gatewaytest.Dial(t, u, gatewaytest.ClientOptions{User: "gone", Password: "g"}, nil)
	publisher := gatewaytest.Dial(t, u, gatewaytest.ClientOptions{User: "pub", Password: "p"}, nil)

	gatewaytest.WriteUsers(t, path, pub,
		gatewaytest.User{Name: "u", Password: "new", Publish: []string{"a/#"}, Subscribe: []string{"a/x/#"}},
	)
	if err := b.ReloadUsers(); err != nil {
		t.Fatal(err)
	}
	if ca, err := connectOnce(t, b.Addr(), login("u", "old")); err == nil || ca.ReasonCode != badUserOrPassword {
		t.Errorf("old password after reload: %+v, %v", ca, err)
	}
	if _, err := connectOnce(t, b.Addr(), login("u", "new")); err != nil {
		t.Errorf("new password after reload: %v", err)
	}
	// Connected clients keep their sessions, under the new rules: "a/#"
	// stays subscribed, but only a/x/... is delivered now.
	publish(t, publisher, "a/y", "")
	publish(t, publisher, "a/x/1", "")
	gatewaytest.Eventually(t, 5*time.Second, "a/x/1 delivered", func() bool { return got.seen("a/x/1") })
	if got.seen("a/y") {
		t.Error("a/y delivered after the reload narrowed the filters")
	}
	if code := publish(t, sub, "a/z", ""); code != 0 {
		t.Errorf("connected client's publish after reload: 0x%02x", code)
	}
	if code := publish(t, gone, "a/z", ""); code != notAuthorized {
		t.Errorf("removed user's publish: 0x%02x, want 0x87", code)
	}

	// A broken file: an error naming file and line, and the users stay.
	gatewaytest.WriteFile(t, path, "users:\n  - username: u\n    password_bcrypt: plain\n")
	err := b.ReloadUsers()
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("broken file: %v", err)
	}
	if _, err := connectOnce(t, b.Addr(), login("u", "new")); err != nil {
		t.Errorf("users lost after a failed reload: %v", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := b.ReloadUsers(); err == nil {
		t.Error("reloading a missing file succeeded")
	}
	if _, err := connectOnce(t, b.Addr(), login("u", "new")); err != nil {
		t.Errorf("users lost after a failed reload: %v", err)
	}
}

func TestUsersFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	gatewaytest.WriteFile(t, bad, "users:\n  - username: a\n    pasword_bcrypt: x\n")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	for _, cfg := range []broker.Config{
		{TCPAddr: addr, UsersFile: bad},
		{TCPAddr: addr, UsersFile: filepath.Join(dir, "missing.yaml")},
	} {
		b, err := broker.New(cfg)
		if err == nil {
			b.Close()
			t.Fatalf("New(%+v) succeeded", cfg)
		}
		if !strings.Contains(err.Error(), cfg.UsersFile) {
			t.Errorf("error %q doesn't name the file", err)
		}
	}
	// Without a users file, reloading does nothing.
	b, _ := brokertest.Start(t, broker.Config{})
	if err := b.ReloadUsers(); err != nil {
		t.Fatal(err)
	}
}

func TestTLSListeners(t *testing.T) {
	pki := gatewaytest.NewPKI(t)
	serverTLS, clientTLS := pki.ServerTLS(t), pki.ClientTLS(t, false)
	b, g := brokertest.Start(t, broker.Config{TCPAddr: "127.0.0.1:0", TLSAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", TLS: serverTLS})
	if b.TLSAddr() == "" || strings.HasSuffix(b.TLSAddr(), ":0") || b.TLSAddr() == b.Addr() {
		t.Fatalf("TLSAddr %q is not a bound address of its own", b.TLSAddr())
	}
	startEchoResponder(t, "mqtts://"+b.TLSAddr(), gatewaytest.ClientOptions{TLS: clientTLS}, "svc/tls")
	startEchoResponder(t, "wss://"+b.WSAddr()+"/mqtt", gatewaytest.ClientOptions{TLS: clientTLS}, "svc/wss")
	for _, topic := range []string{"svc/tls", "svc/wss"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		reply, err := g.Request(ctx, gateway.Request{Topic: topic, Payload: []byte("over " + topic), QoS: 1})
		cancel()
		if err != nil || string(reply.Payload) != "over "+topic {
			t.Fatalf("%s: %q, %v", topic, reply.Payload, err)
		}
	}

	// Plain MQTT to the TLS port gets no CONNACK.
	if ca, err := connectOnce(t, b.TLSAddr(), &paho.Connect{}); err == nil {
		t.Fatalf("plain MQTT on the TLS port connected: %+v", ca)
	}
	// Nor does a TLS client that doesn't trust the certificate.
	conn, err := tls.Dial("tcp", b.TLSAddr(), &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12})
	if err == nil {
		conn.Close()
		t.Fatal("TLS handshake succeeded without trusting the CA")
	}
	// The plain listener stays plain.
	if _, err := connectOnce(t, b.Addr(), &paho.Connect{}); err != nil {
		t.Fatalf("plain listener: %v", err)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	serverTLS := gatewaytest.NewPKI(t).ServerTLS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A port that was free a moment ago: New must release it when a later
	// listener fails.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	for _, cfg := range []broker.Config{
		{TLSAddr: "127.0.0.1:0"}, // no TLS configuration
		{TLSAddr: ln.Addr().String(), TLS: serverTLS},
		{TCPAddr: freeAddr, TLSAddr: ln.Addr().String(), TLS: serverTLS},
		{TCPAddr: freeAddr, TLSAddr: "127.0.0.1:0", WSAddr: ln.Addr().String(), TLS: serverTLS},
	} {
		b, err := broker.New(cfg)
		if err == nil {
			b.Close()
			t.Fatalf("New(TCP %q, TLS %q, WS %q) succeeded", cfg.TCPAddr, cfg.TLSAddr, cfg.WSAddr)
		}
		if cfg.TCPAddr != "" {
			l, err := net.Listen("tcp", freeAddr)
			if err != nil {
				t.Fatalf("TCP listener left bound after a failed New: %v", err)
			}
			l.Close()
		}
	}
}
