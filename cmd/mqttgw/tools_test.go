package main

// Helpers for the interoperability tests: outside programs (mosquitto,
// Python paho-mqtt, MQTT.js, mosquitto_rr) and the project's own binaries
// run as real processes.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// need returns the path of program, or skips the test when it is missing,
// except in CI (CI=true), where a missing program fails the test: CI must
// install it (.ci/run does).
func need(t testing.TB, program, install string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		missing(t, fmt.Sprintf("%s is not installed (%s)", program, install))
	}
	return path
}

// missing skips, or fails in CI.
func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s", why)
	}
	t.Skipf("skipping: %s", why)
}

// pythonWithPaho returns a Python interpreter that can import paho-mqtt.
// Debian's python3-paho-mqtt installs into /usr/bin/python3, which may not
// be the python3 first on PATH.
func pythonWithPaho(t testing.TB) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import paho.mqtt.client").Run() == nil {
			return py
		}
	}
	missing(t, "no python3 with paho-mqtt (apt-get install -y python3-paho-mqtt)")
	return ""
}

// nodeWithMQTT returns node when it can load MQTT.js (npm package mqtt,
// found through NODE_PATH as .ci/run sets it).
func nodeWithMQTT(t testing.TB) string {
	t.Helper()
	node := need(t, "node", "apt-get install -y nodejs npm")
	if out, err := exec.Command(node, "-e", "require('mqtt')").CombinedOutput(); err != nil {
		missing(t, fmt.Sprintf("node can't load MQTT.js (npm install --prefix DIR mqtt@5; export NODE_PATH=DIR/node_modules): %s", firstLine(out)))
	}
	return node
}

// firstLine is the first line of node's output that says what went wrong.
func firstLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines {
		if strings.Contains(l, "Error") || strings.Contains(l, "Cannot find") {
			return strings.TrimSpace(l)
		}
	}
	return lines[0]
}

var (
	portsMu    sync.Mutex
	portsGiven = map[string]bool{}
)

// freePort returns a loopback address whose port was free a moment ago,
// for programs that can't be told to pick one themselves. It never returns
// the same one twice in a test run: the OS readily hands a just-closed
// port out again.
func freePort(t testing.TB) string {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !portsGiven[addr] {
			portsGiven[addr] = true
			return addr
		}
	}
}

// waitListening waits until addr accepts TCP connections.
func waitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startProcess starts cmd, logs its output into the test log on failure,
// and kills it at cleanup. The output goes to cmd.Stdout if that is a
// *gatewaytest.Buffer already, for the test to read.
func startProcess(t testing.TB, cmd *exec.Cmd) *exec.Cmd {
	t.Helper()
	out, ok := cmd.Stdout.(*gatewaytest.Buffer)
	if !ok {
		out = &gatewaytest.Buffer{}
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(cmd.Path), out.String())
		}
	})
	return cmd
}

// mosquitto is a mosquitto broker on a loopback port that a test can kill
// and restart on the same port.
type mosquitto struct {
	t    testing.TB
	Addr string
	conf string
	cmd  *exec.Cmd
	done chan struct{}
}

// startMosquitto starts mosquitto with anonymous access; extra lines are
// appended to its configuration.
func startMosquitto(t testing.TB, extra ...string) *mosquitto {
	t.Helper()
	bin := need(t, "mosquitto", "apt-get install -y mosquitto")
	addr := freePort(t)
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	var lines []string
	if len(extra) > 0 && strings.HasPrefix(extra[0], "per_listener_settings") {
		lines, extra = []string{extra[0]}, extra[1:] // must precede all security settings
	}
	lines = append(lines, "listener "+port+" 127.0.0.1", "allow_anonymous true", "persistence false", "max_queued_messages 100000")
	lines = append(lines, extra...)
	err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	m := &mosquitto{t: t, Addr: addr, conf: conf}
	m.cmd = exec.Command(bin, "-c", conf)
	m.Start()
	t.Cleanup(m.Kill)
	return m
}

// Start (re)starts the broker and waits until it accepts connections.
func (m *mosquitto) Start() {
	m.t.Helper()
	m.cmd = exec.Command(m.cmd.Path, "-c", m.conf)
	out := &gatewaytest.Buffer{}
	m.cmd.Stdout, m.cmd.Stderr = out, out
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(m.cmd, m.done)
	m.t.Cleanup(func() {
		if m.t.Failed() {
			m.t.Logf("mosquitto said:\n%s", out.String())
		}
	})
	waitListening(m.t, m.Addr)
}

// Kill stops the broker at once, as a crash would.
func (m *mosquitto) Kill() {
	if m.cmd.Process == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
}

// URL is the broker's mqtt:// URL.
func (m *mosquitto) URL() string { return "mqtt://" + m.Addr }

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binary builds ./cmd/<name> once per test run and returns its path.
func binary(t testing.TB, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "mqttgw-test-bin-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"mqttgw", "temperature-service"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, pkg), "../"+pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build ../%s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, name)
}
