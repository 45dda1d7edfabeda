package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"golang.org/x/crypto/bcrypt"

	"github.com/mqttgw/mqttgw/api"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

func writeKeys(t *testing.T, path string, keys map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("keys:\n")
	for name, key := range keys {
		b.WriteString("  - name: " + name + "\n    sha256: " + api.HashKey(key) + "\n    topics: [\"svc/+\"]\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAuthFile: API keys guard /rpc, topics are authorized per key, and
// SIGHUP reloads the file (a broken file keeps the old keys).
func TestAuthFile(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys.yaml")
	writeKeys(t, keys, map[string]string{"first": "first-key-0123456789abcdef"})
	a, base := mustStart(t, testConfig(t, "--auth-file", keys))
	gatewaytest.StartResponder(t, "mqtt://"+a.broker.Addr(), "svc/echo", 1, gatewaytest.Echo)

	r := gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader("x"))
	gatewaytest.WantProblem(t, r, 401, "unauthorized", "")
	if r.Header.Get("WWW-Authenticate") != `Bearer realm="mqttgw"` {
		t.Errorf("WWW-Authenticate %q", r.Header.Get("WWW-Authenticate"))
	}
	if r := gatewaytest.Post(t, base+"/rpc/svc/echo", strings.NewReader("x"), "Authorization", "Bearer first-key-0123456789abcdef"); r.Status != 200 || string(r.Body) != "x" {
		t.Fatalf("with the key: %d %q", r.Status, r.Body)
	}
	gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/rpc/other/topic", nil, "X-API-Key", "first-key-0123456789abcdef"), 403, "forbidden", "other/topic")
	// Health and readiness stay open for probes.
	req, _ := http.NewRequest(http.MethodGet, base+"/readyz", nil)
	if r := gatewaytest.Do(t, nil, req); r.Status != 200 {
		t.Fatalf("/readyz with auth on: %d", r.Status)
	}

	// Rotate: a real SIGHUP reaches the running gateway.
	writeKeys(t, keys, map[string]string{"second": "second-key-0123456789abcdef"})
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	gatewaytest.Eventually(t, 10*time.Second, "the condition", func() bool {
		return gatewaytest.Post(t, base+"/rpc/svc/echo", nil, "X-API-Key", "second-key-0123456789abcdef").Status == 200
	})
	gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/rpc/svc/echo", nil, "X-API-Key", "first-key-0123456789abcdef"), 401, "unauthorized", "")

	// A broken file is refused; the keys in force stay.
	if err := os.WriteFile(keys, []byte("keys: [{name: x, sha256: nothex, topics: [a]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.reload()
	if r := gatewaytest.Post(t, base+"/rpc/svc/echo", nil, "X-API-Key", "second-key-0123456789abcdef"); r.Status != 200 {
		t.Fatalf("after a broken reload: %d", r.Status)
	}
}

func TestAuthFileMissingFailsStart(t *testing.T) {
	cfg := testConfig(t, "--auth-file", filepath.Join(t.TempDir(), "nope.yaml"))
	if err := run(t.Context(), []string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--auth-file", cfg.AuthFile},
		func(string) string { return "" }, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("run with a missing auth file: %v", err)
	}
}

// TestMQTTUsersFile: with --mqtt-users-file the embedded broker turns
// anonymous clients away and lets the listed responder answer; SIGHUP
// reloads the file.
func TestMQTTUsersFile(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "users.yaml")
	write := func(subscribe string) {
		t.Helper()
		content := "users:\n  - username: responder\n    password_bcrypt: \"" + string(hash) + "\"\n" +
			"    publish: [\"mqttgw/reply/#\"]\n    subscribe: [\"" + subscribe + "\"]\n"
		if err := os.WriteFile(users, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("svc/a")
	a, base := mustStart(t, testConfig(t, "--mqtt-users-file", users))
	addr := a.broker.Addr()

	u, _ := url.Parse("mqtt://" + addr)
	anon, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	anonClient := paho.NewClient(paho.ClientConfig{Conn: anon})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ack, err := anonClient.Connect(ctx, &paho.Connect{ClientID: "anon", KeepAlive: 30, CleanStart: true}); err == nil && ack.ReasonCode < 0x80 {
		t.Fatal("an anonymous client connected despite --mqtt-users-file")
	}
	anon.Close()

	gatewaytest.StartResponder(t, "mqtt://responder:pw@"+addr, "svc/a", 1, gatewaytest.Echo)
	if r := gatewaytest.Post(t, base+"/rpc/svc/a", strings.NewReader("hi")); r.Status != 200 || string(r.Body) != "hi" {
		t.Fatalf("authenticated responder: %d %q", r.Status, r.Body)
	}

	// Narrow the user's grants and reload: deliveries on svc/a stop.
	write("svc/b")
	a.reload()
	gatewaytest.WantProblem(t, gatewaytest.Post(t, base+"/rpc/svc/a?timeout=300ms", nil), 504, "timeout", "")
}
