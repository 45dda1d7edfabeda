//go:build unix

package deploy_test

// nginx.conf, the load balancer of compose.yaml, is checked against
// compose's gateways. nginx-prefix.conf is run by a real nginx in front of
// the real gateway binary under a path prefix: long waits, percent-encoded
// topics, problem responses and client IPs must all come through as
// without nginx. (unix only: nginx's master and workers are stopped as one
// process group.)

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// TestNginx checks nginx.conf against the gateways of compose.yaml: every
// gateway is an upstream server, and nginx waits longer than a request may.
func TestNginx(t *testing.T) {
	ps := loadPrograms(t)
	b, err := os.ReadFile("nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	var conf strings.Builder
	for line := range strings.Lines(string(b)) {
		line, _, _ = strings.Cut(line, "#")
		conf.WriteString(line + "\n")
	}
	text := conf.String()

	// The longest a request may wait: the largest --max-timeout of the
	// gateways nginx proxies to.
	gateways := map[string]string{} // service → its HTTP port
	maxTimeout := time.Duration(0)
	for _, s := range composeServices(loadYAML(t)) {
		if p, _ := ps.program(s.run.argv); p != ps.gateway {
			continue
		}
		d, err := ps.duration(t, s.run, "max-timeout")
		if err != nil {
			t.Error(err)
		}
		maxTimeout = max(maxTimeout, d)
		_, args := ps.program(s.run.argv)
		addr, ok := flagValue(args, "http-addr")
		if !ok {
			addr = s.run.env["MQTTGW_HTTP_ADDR"]
		}
		if addr == "" {
			addr = ps.gateway.flags["http-addr"].def
		}
		_, port, _ := strings.Cut(addr, ":")
		gateways[s.name] = port
	}
	if len(gateways) < 2 {
		t.Errorf("compose.yaml runs %d gateway services, want at least 2 behind nginx", len(gateways))
	}

	timeouts := regexp.MustCompile(`\bproxy_read_timeout\s+(\S+?)\s*;`).FindAllStringSubmatch(text, -1)
	if len(timeouts) == 0 {
		t.Errorf("nginx.conf sets no proxy_read_timeout: nginx's default 60s is not above the gateways' --max-timeout %v", maxTimeout)
	}
	for _, m := range timeouts {
		d, err := nginxTime(m[1])
		if err != nil {
			t.Errorf("nginx.conf: proxy_read_timeout %s: %v", m[1], err)
			continue
		}
		if d <= maxTimeout {
			t.Errorf("nginx.conf: proxy_read_timeout %s is not above the gateways' --max-timeout %v: nginx would cut long ?timeout requests", m[1], maxTimeout)
		}
	}

	servers := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*server\s+([\w.-]+):(\d+)\b`).FindAllStringSubmatch(text, -1) {
		servers[m[1]] = true
		port, ok := gateways[m[1]]
		switch {
		case !ok:
			t.Errorf("nginx.conf: upstream server %s is no gateway service of compose.yaml", m[1])
		case port != m[2]:
			t.Errorf("nginx.conf: upstream server %s:%s, but the gateway listens on port %s", m[1], m[2], port)
		}
	}
	for name := range gateways {
		if !servers[name] {
			t.Errorf("nginx.conf: gateway service %s is not an upstream server", name)
		}
	}
}

// nginxTime parses an nginx time: "75s", "75" (seconds), "1m30s", "500ms".
func nginxTime(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(s)
}

// nginxPrefixConf is the example configuration TestBehindNginx runs.
const nginxPrefixConf = "nginx-prefix.conf"

func TestBehindNginx(t *testing.T) {
	bin := gatewaytest.Need(t, "nginx", "apt-get install -y nginx-light")
	template, err := os.ReadFile(nginxPrefixConf)
	if err != nil {
		t.Fatal(err)
	}

	// The shipped config must outwait the longest request the gateway
	// allows by default: nginx would cut a ?timeout=60s request with its
	// own HTML 504 otherwise.
	m := regexp.MustCompile(`(?m)^[ \t]*proxy_read_timeout[ \t]+([^;\s]+);`).FindAllSubmatch(template, -1)
	if len(m) != 1 {
		t.Fatalf("%s: %d proxy_read_timeout directives, want 1", nginxPrefixConf, len(m))
	}
	readTimeout, err := nginxTime(string(m[0][1]))
	if err != nil {
		t.Fatalf("%s: proxy_read_timeout: %v", nginxPrefixConf, err)
	}
	if maxTimeout := loadPrograms(t).gatewayDefault(t, "max-timeout"); readTimeout <= maxTimeout {
		t.Errorf("%s: proxy_read_timeout %s is not above the gateway's default --max-timeout %s", nginxPrefixConf, readTimeout, maxTimeout)
	}

	gwAddr, brokerURL, logs := startGateway(t, "--trusted-proxies", "127.0.0.1")
	gwBase := "http://" + gwAddr
	gatewaytest.StartResponder(t, brokerURL, "svc/echo", 1, gatewaytest.Echo)
	gatewaytest.StartResponder(t, brokerURL, "svc/slow", 1, func(req *paho.Publish) *paho.Publish {
		time.Sleep(3 * time.Second)
		return gatewaytest.Echo(req)
	})
	nginxAddr := nginxStart(t, bin, string(template), gwAddr, nil)
	base := "http://" + nginxAddr + "/api"
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)

	// streamHeld asks for a stream through nginx at base and reports
	// whether nginx held its first event back until the last was sent:
	// the responder sends its final reply only once the client has the
	// first event, or after 2s.
	streamHeld := func(t *testing.T, base, topic string) bool {
		firstSeen := make(chan struct{})
		held := make(chan bool, 1)
		gatewaytest.StartStreamer(t, brokerURL, topic, 1, func(req *paho.Publish, send func(*paho.Publish)) {
			send(&paho.Publish{QoS: 1, Payload: []byte("working"), Properties: &paho.PublishProperties{
				User: paho.UserProperties{{Key: "progress", Value: "50%"}}}})
			select {
			case <-firstSeen:
				held <- false
			case <-time.After(2 * time.Second):
				held <- true
			}
			send(&paho.Publish{QoS: 1, Payload: []byte("done")})
		})
		req, _ := http.NewRequest(http.MethodPost, base+"/rpc/"+topic, nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body := bufio.NewReader(resp.Body)
		var events []string
		for {
			line, err := body.ReadString('\n')
			if err != nil {
				break
			}
			if strings.HasPrefix(line, "event: ") {
				events = append(events, strings.TrimSpace(strings.TrimPrefix(line, "event: ")))
				if len(events) == 1 {
					close(firstSeen)
				}
			}
		}
		if fmt.Sprint(events) != "[reply reply end]" {
			t.Fatalf("events %v", events)
		}
		return <-held
	}
	// gzip, which many configurations turn on, holds output back until
	// a flush; X-Accel-Buffering: no makes nginx flush every event.
	gzipped := strings.Replace(string(template), "            proxy_read_timeout",
		"            gzip on;\n            gzip_types text/event-stream;\n            gzip_min_length 1;\n            proxy_read_timeout", 1)
	t.Run("a stream passes event by event", func(t *testing.T) {
		if streamHeld(t, base, "svc/stream") {
			t.Fatal("the first event reached the client only after the last was sent")
		}
		if streamHeld(t, "http://"+nginxStart(t, bin, gzipped, gwAddr, nil)+"/api", "svc/stream-gzip") {
			t.Fatal("with gzip on, the first event reached the client only after the last was sent")
		}
	})
	t.Run("control: nginx ignoring X-Accel-Buffering holds it back", func(t *testing.T) {
		ignoring := strings.Replace(gzipped, "            gzip on;", "            proxy_ignore_headers X-Accel-Buffering;\n            gzip on;", 1)
		if !streamHeld(t, "http://"+nginxStart(t, bin, ignoring, gwAddr, nil)+"/api", "svc/stream-held") {
			t.Fatal("the stream passed even so: the test above can't tell")
		}
	})

	t.Run("long wait not cut", func(t *testing.T) {
		start := time.Now()
		r := nginxSend(t, client, http.MethodPost, base+"/rpc/svc/slow?timeout=10s", "slow body")
		if r.Status != 200 || string(r.Body) != "slow body" {
			t.Fatalf("got %d %q (%s), want 200 with the echo", r.Status, r.Body, r.Header.Get("Content-Type"))
		}
		if d := time.Since(start); d < 3*time.Second {
			t.Fatalf("answered after %s, before the responder did", d)
		}
	})
	t.Run("control: a short proxy_read_timeout does cut it", func(t *testing.T) {
		// The same request through an nginx that waits only 1s gets
		// nginx's own HTML 504: the failure the real config avoids.
		short := "http://" + nginxStart(t, bin, string(template), gwAddr, map[string]string{"proxy_read_timeout": "1s"}) + "/api"
		r := nginxSend(t, client, http.MethodPost, short+"/rpc/svc/slow?timeout=10s", "x")
		if r.Status != 504 || strings.Contains(r.Header.Get("Content-Type"), "problem+json") {
			t.Fatalf("got %d %s %q, want nginx's own 504", r.Status, r.Header.Get("Content-Type"), r.Body)
		}
	})

	// The path after /api reaches the gateway byte for byte: the gateway
	// logs r.URL.EscapedPath(), which keeps the client's encoding.
	t.Run("path byte for byte", func(t *testing.T) {
		for _, tt := range []struct {
			path, wantTopic string
			status          int
		}{
			{"/rpc/svc%2Fecho", "svc/echo", 200},
			{"/rpc/svc//echo", "svc//echo", 503}, // not merged into svc/echo
			{"/rpc/a%2Bb", "", 400},              // not decoded to a+b on the way
		} {
			id := nginxRequestID()
			r := nginxSend(t, client, http.MethodPost, base+tt.path, "x", "X-Request-Id", id, "Mqtt-User-Property", "k=v")
			if r.Status != tt.status {
				t.Fatalf("%s: status %d, want %d (body %s)", tt.path, r.Status, tt.status, r.Body)
			}
			line := nginxLogLine(t, logs, id)
			if line["path"] != tt.path {
				t.Errorf("sent /api%s: the gateway got path %v, want %s", tt.path, line["path"], tt.path)
			}
			if tt.wantTopic != "" && line["topic"] != tt.wantTopic {
				t.Errorf("%s: topic %v, want %s", tt.path, line["topic"], tt.wantTopic)
			}
			if tt.status == 200 && (string(r.Body) != "x" || fmt.Sprint(r.Header.Values("Mqtt-User-Property")) != "[k=v]") {
				t.Errorf("%s: body %q, user properties %q", tt.path, r.Body, r.Header.Values("Mqtt-User-Property"))
			}
		}
	})
	t.Run("percent-encoded slash reaches its topic", func(t *testing.T) {
		r := nginxSend(t, client, http.MethodPost, base+"/rpc/svc%2Fecho", "encoded")
		if r.Status != 200 || string(r.Body) != "encoded" {
			t.Fatalf("got %d %q", r.Status, r.Body)
		}
	})
	t.Run("problems pass through unchanged", func(t *testing.T) {
		via := nginxSend(t, client, http.MethodPost, base+"/rpc/nobody", "x")
		gatewaytest.WantProblem(t, via, 503, "no-responders", "subscribed")
		direct := nginxSend(t, client, http.MethodPost, gwBase+"/rpc/nobody", "x")
		if string(via.Body) != string(direct.Body) || via.Header.Get("Content-Type") != direct.Header.Get("Content-Type") {
			t.Errorf("through nginx %s %q, direct %s %q", via.Header.Get("Content-Type"), via.Body,
				direct.Header.Get("Content-Type"), direct.Body)
		}
		gatewaytest.WantProblem(t, nginxSend(t, client, http.MethodPost, base+"/rpc/a%2Bb", "x"), 400, "invalid-topic", "wildcard")
		// The query string comes along too.
		gatewaytest.WantProblem(t, nginxSend(t, client, http.MethodPost, base+"/rpc/svc/echo?timeout=0", "x"), 400, "invalid-parameter", "minimum of 1ms")
	})
	t.Run("under /api/ only after normalization", func(t *testing.T) {
		// nginx matches location /api/ on the normalized path, but
		// /x/../api/… is not under /api/ as sent: nginx refuses it.
		id := nginxRequestID()
		r := nginxSend(t, client, http.MethodPost, "http://"+nginxAddr+"/x/../api/rpc/svc/echo", "x", "X-Request-Id", id)
		if r.Status != 400 {
			t.Fatalf("status %d, want 400 (body %s)", r.Status, r.Body)
		}
		if strings.Contains(logs.String(), id) {
			t.Error("the request reached the gateway")
		}
	})

	t.Run("client IP", func(t *testing.T) {
		// The gateway believes X-Forwarded-For from its trusted proxy
		// (nginx, 127.0.0.1), which sends "203.0.113.7, 127.0.0.1"
		// ($proxy_add_x_forwarded_for: the client's header plus the
		// address nginx sees). The client itself is on 127.0.0.1 here,
		// a trusted address too, so its own header is believed as well.
		id := nginxRequestID()
		nginxSend(t, client, http.MethodPost, base+"/rpc/svc/echo", "ip", "X-Request-Id", id, "X-Forwarded-For", "203.0.113.7")
		if ip := nginxLogLine(t, logs, id)["client_ip"]; ip != "203.0.113.7" {
			t.Errorf("through nginx: client_ip %v, want 203.0.113.7", ip)
		}

		// For the same reason anything on a trusted address can name any
		// client: walking from the right, the trusted 127.0.0.1 is
		// skipped and 198.51.100.1 is taken as the client. This is why
		// only the proxies themselves go in --trusted-proxies, never an
		// address or network where clients live.
		id = nginxRequestID()
		nginxSend(t, client, http.MethodPost, gwBase+"/rpc/svc/echo", "ip", "X-Request-Id", id, "X-Forwarded-For", "198.51.100.1, 127.0.0.1")
		if ip := nginxLogLine(t, logs, id)["client_ip"]; ip != "198.51.100.1" {
			t.Errorf("direct from a trusted address: client_ip %v, want 198.51.100.1", ip)
		}

		// Without --trusted-proxies the header is ignored.
		plainAddr, _, plainLogs := startGateway(t)
		id = nginxRequestID()
		nginxSend(t, client, http.MethodGet, "http://"+plainAddr+"/healthz", "", "X-Request-Id", id, "X-Forwarded-For", "203.0.113.7")
		if ip := nginxLogLine(t, plainLogs, id)["client_ip"]; ip != "127.0.0.1" {
			t.Errorf("forged header without --trusted-proxies: client_ip %v, want 127.0.0.1", ip)
		}
	})
	t.Run("client IP of an untrusted client", func(t *testing.T) {
		// A client on 127.0.0.2, which is no trusted proxy: the gateway
		// logs the address nginx saw, not nginx's, and not what the
		// client claims.
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		c, err := d.Dial("tcp", nginxAddr)
		if err != nil {
			t.Skipf("can't connect from 127.0.0.2 (not a loopback address here?): %v", err)
		}
		c.Close()
		tr := &http.Transport{DialContext: d.DialContext}
		other := &http.Client{Timeout: 30 * time.Second, Transport: tr}
		t.Cleanup(tr.CloseIdleConnections)
		for _, forged := range []string{"", "203.0.113.7"} {
			id := nginxRequestID()
			header := []string{"X-Request-Id", id}
			if forged != "" {
				header = append(header, "X-Forwarded-For", forged)
			}
			nginxSend(t, other, http.MethodPost, base+"/rpc/svc/echo", "ip", header...)
			if ip := nginxLogLine(t, logs, id)["client_ip"]; ip != "127.0.0.2" {
				t.Errorf("X-Forwarded-For %q from 127.0.0.2 through nginx: client_ip %v, want 127.0.0.2", forged, ip)
			}
		}
	})
}

// startGateway runs the mqttgw binary with its embedded broker on free
// loopback ports, JSON logs, and args. It waits until /readyz answers 200
// and returns the gateway's HTTP address, its broker's URL and its log.
func startGateway(t *testing.T, args ...string) (httpAddr, brokerURL string, logs *gatewaytest.Buffer) {
	t.Helper()
	httpAddr, mqttAddr := gatewaytest.FreePort(t), gatewaytest.FreePort(t)
	cmd := exec.Command(gatewaytest.Binary(t, "mqttgw"),
		append([]string{"--http-addr", httpAddr, "--mqtt-addr", mqttAddr, "--log-format", "json"}, args...)...)
	cmd.Env = cleanEnv()
	logs = &gatewaytest.Buffer{}
	cmd.Stdout = logs // StartProcess sends stdout and stderr there
	gatewaytest.StartProcess(t, cmd)
	gatewaytest.WaitListening(t, httpAddr)
	c := &http.Client{Timeout: time.Second}
	defer c.CloseIdleConnections()
	gatewaytest.Eventually(t, 10*time.Second, "mqttgw's /readyz answers 200", func() bool {
		resp, err := c.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return httpAddr, "mqtt://" + mqttAddr, logs
}

// nginxStart runs nginx with the template, changed to listen on a free
// loopback port, proxy to upstream, and keep its pid, logs and temp files
// in a directory of its own; set replaces further directives. It returns
// nginx's address.
func nginxStart(t *testing.T, bin, template, upstream string, set map[string]string) string {
	t.Helper()
	dir := gatewaytest.PublicTempDir(t) // nginx's workers run as another user
	addr := gatewaytest.FreePort(t)
	conf := template
	for name, value := range map[string]string{
		"listen":           addr,
		"server":           upstream, // the upstream's only server
		"worker_processes": "1",
		"pid":              filepath.Join(dir, "nginx.pid"),
		"error_log":        filepath.Join(dir, "error.log") + " info",
		"access_log":       filepath.Join(dir, "access.log"),
	} {
		conf = nginxDirective(t, conf, name, value)
	}
	for name, value := range set {
		conf = nginxDirective(t, conf, name, value)
	}
	var temp strings.Builder
	for _, kind := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&temp, "    %s_temp_path %s;\n", kind, filepath.Join(dir, kind))
	}
	if n := strings.Count(conf, "\nhttp {\n"); n != 1 {
		t.Fatalf("%s: %d http blocks, want 1", nginxPrefixConf, n)
	}
	conf = strings.Replace(conf, "\nhttp {\n", "\nhttp {\n"+temp.String(), 1)
	conf = "daemon off;\nmaster_process on;\n" + conf
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after StartProcess's cleanup has stopped nginx
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx config:\n%s\nnginx error.log:\n%s", conf, b)
		}
	})
	cmd := exec.Command(bin, "-p", dir+"/", "-c", path, "-e", "stderr")
	// The workers inherit nginx's output pipes: killing only the master
	// (StartProcess's cleanup) would leave them running, and the wait for
	// the pipes would never end. Kill master and workers as one group
	// first (cleanups run last-registered first).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	gatewaytest.StartProcess(t, cmd)
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	gatewaytest.WaitListening(t, addr)
	return addr
}

// nginxDirective sets the value of the one directive name in conf.
func nginxDirective(t *testing.T, conf, name, value string) string {
	t.Helper()
	// A simple directive, not a block: "server 1.2.3.4:80;", not "server {".
	re := regexp.MustCompile(`(?m)^([ \t]*)` + regexp.QuoteMeta(name) + `[ \t][^;{#\n]*;`)
	if n := len(re.FindAllStringIndex(conf, -1)); n != 1 {
		t.Fatalf("%s: %d %q directives, want 1", nginxPrefixConf, n, name)
	}
	return re.ReplaceAllStringFunc(conf, func(d string) string {
		return d[:len(d)-len(strings.TrimLeft(d, " \t"))] + name + " " + value + ";"
	})
}

var nginxRequests atomic.Int64

// nginxRequestID is an X-Request-Id no other request of the run uses.
func nginxRequestID() string {
	return fmt.Sprintf("nginx-test-%d-%d", os.Getpid(), nginxRequests.Add(1))
}

// nginxSend sends a request with c and reads the whole response; header
// is name, value, name, value….
func nginxSend(t *testing.T, c *http.Client, method, url, body string, header ...string) gatewaytest.Response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return gatewaytest.Do(t, c, req)
}

// nginxLogLine waits for the gateway's request log line with request_id id
// (the line is written as the handler returns, so it may trail the
// response a little). On failure StartProcess's cleanup logs the whole log.
func nginxLogLine(t *testing.T, logs *gatewaytest.Buffer, id string) map[string]any {
	t.Helper()
	var found map[string]any
	gatewaytest.Eventually(t, 5*time.Second, "a request log line with request_id "+id, func() bool {
		for _, line := range logs.JSONLines(t, "request") {
			if line["request_id"] == id {
				found = line
				return true
			}
		}
		return false
	})
	return found
}
