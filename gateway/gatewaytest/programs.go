package gatewaytest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Need returns the path of program, or skips the test when it is missing,
// except in CI (CI=true), where a missing program fails the test: CI must
// install it (.ci/run does). install says how.
func Need(tb testing.TB, program, install string) string {
	tb.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		Missing(tb, fmt.Sprintf("%s is not installed (%s)", program, install))
	}
	return path
}

// Missing skips the test saying why, or fails it in CI.
func Missing(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("CI=true but %s", why)
	}
	tb.Skipf("skipping: %s", why)
}

// PythonWithPaho returns a Python interpreter that can import paho-mqtt.
// Debian's python3-paho-mqtt installs into /usr/bin/python3, which may not
// be the python3 first on PATH.
func PythonWithPaho(tb testing.TB) string {
	tb.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import paho.mqtt.client").Run() == nil {
			return py
		}
	}
	Missing(tb, "no python3 with paho-mqtt (apt-get install -y python3-paho-mqtt)")
	return ""
}

// NodeWithMQTT returns node when it can load MQTT.js (npm package mqtt,
// found through NODE_PATH as .ci/run sets it).
func NodeWithMQTT(tb testing.TB) string {
	tb.Helper()
	node := Need(tb, "node", "apt-get install -y nodejs npm")
	if out, err := exec.Command(node, "-e", "require('mqtt')").CombinedOutput(); err != nil {
		Missing(tb, fmt.Sprintf("node can't load MQTT.js (npm install --prefix DIR mqtt@5; export NODE_PATH=DIR/node_modules): %s", firstError(out)))
	}
	return node
}

// firstError is the first line of node's output that says what went wrong.
func firstError(b []byte) string {
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

// FreePort returns a loopback address whose port was free a moment ago,
// for programs that can't be told to pick one themselves. It never returns
// the same one twice in a test run: the OS readily hands a just-closed
// port out again.
func FreePort(tb testing.TB) string {
	tb.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !portsGiven[addr] {
			portsGiven[addr] = true
			return addr
		}
	}
}

// WaitListening waits until addr accepts TCP connections, 10s at most.
func WaitListening(tb testing.TB, addr string) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("nothing listens on %s after 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartProcess starts cmd, logs its output into the test log on failure,
// and kills it at cleanup. The output goes to cmd.Stdout if that is a
// *Buffer already, for the test to read.
func StartProcess(tb testing.TB, cmd *exec.Cmd) *exec.Cmd {
	tb.Helper()
	out, ok := cmd.Stdout.(*Buffer)
	if !ok {
		out = &Buffer{}
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if tb.Failed() {
			tb.Logf("output of %s:\n%s", filepath.Base(cmd.Path), out.String())
		}
	})
	return cmd
}

// Mosquitto is a mosquitto broker on a loopback port that a test can kill,
// freeze and restart on the same port.
type Mosquitto struct {
	tb   testing.TB
	Addr string
	conf string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartMosquitto starts mosquitto with anonymous access; extra lines are
// appended to its configuration (a per_listener_settings line first is
// put before the rest, as mosquitto wants). It needs mosquitto: see Need.
func StartMosquitto(tb testing.TB, extra ...string) *Mosquitto {
	tb.Helper()
	bin := Need(tb, "mosquitto", "apt-get install -y mosquitto")
	addr := FreePort(tb)
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(tb.TempDir(), "mosquitto.conf")
	var lines []string
	if len(extra) > 0 && strings.HasPrefix(extra[0], "per_listener_settings") {
		lines, extra = []string{extra[0]}, extra[1:] // must precede all security settings
	}
	lines = append(lines, "listener "+port+" 127.0.0.1", "allow_anonymous true", "persistence false", "max_queued_messages 100000")
	lines = append(lines, extra...)
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	m := &Mosquitto{tb: tb, Addr: addr, conf: conf}
	m.cmd = exec.Command(bin, "-c", conf)
	m.Start()
	tb.Cleanup(m.Kill)
	return m
}

// Start (re)starts the broker and waits until it accepts connections.
func (m *Mosquitto) Start() {
	m.tb.Helper()
	m.cmd = exec.Command(m.cmd.Path, "-c", m.conf)
	out := &Buffer{}
	m.cmd.Stdout, m.cmd.Stderr = out, out
	if err := m.cmd.Start(); err != nil {
		m.tb.Fatal(err)
	}
	m.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(m.cmd, m.done)
	m.tb.Cleanup(func() {
		if m.tb.Failed() {
			m.tb.Logf("mosquitto said:\n%s", out.String())
		}
	})
	WaitListening(m.tb, m.Addr)
}

// Kill stops the broker at once, as a crash would.
func (m *Mosquitto) Kill() {
	if m.cmd.Process == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
}

// Freeze stops the broker (SIGSTOP) without closing its connections, as a
// hung broker or a half-open link looks to its clients; Thaw resumes it.
// Cleanup thaws it too, so that Kill can end it.
func (m *Mosquitto) Freeze() {
	m.tb.Helper()
	if err := m.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		m.tb.Fatal(err)
	}
	m.tb.Cleanup(m.Thaw)
}

// Thaw resumes a frozen broker.
func (m *Mosquitto) Thaw() { _ = m.cmd.Process.Signal(syscall.SIGCONT) }

// URL is the broker's mqtt:// URL.
func (m *Mosquitto) URL() string { return "mqtt://" + m.Addr }

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binary builds the project's commands (./cmd/...) once per test binary
// and returns the path of the one named name.
func Binary(tb testing.TB, name string) string {
	tb.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		buildDir, buildErr = os.MkdirTemp("", "mqttgw-test-bin-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"mqttgw", "temperature-service"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, pkg), "./cmd/"+pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build ./cmd/%s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return filepath.Join(buildDir, name)
}

// removeBinaries deletes what Binary built.
func removeBinaries() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Main runs a package's tests, removes what Binary built, and fails the
// run if goroutines outlive the tests (goleak): call it from TestMain of
// packages that run the project's binaries.
func Main(m *testing.M) {
	code := m.Run()
	removeBinaries()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
