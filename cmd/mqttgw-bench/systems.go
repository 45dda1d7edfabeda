package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"time"
)

// Topics of the helpers. Neither is under mqttgw's response prefix,
// which the embedded broker keeps to the gateway.
const (
	echoTopic   = "bench/echo"
	silentTopic = "bench/silent"
)

// runner is what every part of one run shares: its flags, its children,
// the binaries it starts and where progress goes.
type runner struct {
	cfg    config
	procs  *procs
	self   string // this binary, run in its sub-modes for the helpers
	mqttgw string
	dir    string // temporary: the built mqttgw, mosquitto's configuration
	log    io.Writer
}

// logf reports progress on stderr: a full run takes minutes.
func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "mqttgw-bench: "+format+"\n", args...)
}

// gatewayProc is a running mqttgw.
type gatewayProc struct {
	*child
	base string // http://127.0.0.1:port
	mqtt string // its embedded broker, mqtt://127.0.0.1:port; "" on an external one
}

// buildMQTTGW builds ./cmd/mqttgw into the run's directory. The package
// is named by import path, so that this works from anywhere in the module.
func (r *runner) buildMQTTGW(ctx context.Context) (string, error) {
	out := filepath.Join(r.dir, "mqttgw")
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/mqttgw/mqttgw/cmd/mqttgw")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/mqttgw (run inside the module, or pass --mqttgw): %v\n%s", err, b)
	}
	r.logf("built mqttgw in %s", time.Since(start).Round(time.Millisecond))
	return out, nil
}

// startGateway starts mqttgw on free loopback ports with extra flags
// (--broker for (d), --max-inflight for the memory test) and waits until
// /readyz is 200.
func (r *runner) startGateway(ctx context.Context, extra ...string) (*gatewayProc, error) {
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"--http-addr", httpAddr, "--log-level", "error"}
	g := &gatewayProc{base: "http://" + httpAddr}
	external := false
	for _, a := range extra {
		external = external || a == "--broker"
	}
	if !external {
		mqttAddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		args = append(args, "--mqtt-addr", mqttAddr)
		g.mqtt = "mqtt://" + mqttAddr
	}
	args = append(args, extra...)
	c, err := r.procs.start("mqttgw", r.mqttgw, args, cleanEnv())
	if err != nil {
		return nil, err
	}
	g.child = c
	if err := waitHTTP(ctx, c, g.base+"/readyz"); err != nil {
		r.procs.stop(c)
		return nil, err
	}
	return g, nil
}

// cleanEnv is this process's environment without MQTTGW_* variables: a
// benchmark measures mqttgw as its flags configure it, not as the shell
// it was started from happens to.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MQTTGW_") {
			env = append(env, kv)
		}
	}
	return env
}

// startResponder starts this binary's responder sub-mode on broker and
// waits until it has subscribed (its READY line comes after the SUBACK),
// so that no request finds nobody listening.
func (r *runner) startResponder(ctx context.Context, broker, topic string, silent bool) (*child, error) {
	args := []string{"responder", "--broker", broker, "--topic", topic, "--qos", "1"}
	name := "responder"
	if silent {
		args = append(args, "--silent")
		name = "silent responder"
	}
	c, err := r.procs.start(name, r.self, args, os.Environ())
	if err != nil {
		return nil, err
	}
	if _, err := c.waitReady(ctx); err != nil {
		r.procs.stop(c)
		return nil, err
	}
	return c, nil
}

// startEcho starts this binary's http-echo sub-mode, baseline (a), and
// returns it with its base URL.
func (r *runner) startEcho(ctx context.Context) (*child, string, error) {
	c, err := r.procs.start("http-echo", r.self, []string{"http-echo", "--addr", "127.0.0.1:0"}, os.Environ())
	if err != nil {
		return nil, "", err
	}
	addr, err := c.waitReady(ctx)
	if err != nil {
		r.procs.stop(c)
		return nil, "", err
	}
	return c, "http://" + addr, nil
}

// errNoMosquitto means (d) is skipped: mosquitto is not on PATH.
var errNoMosquitto = errors.New("mosquitto is not on PATH (apt-get install mosquitto): (d) skipped")

// startMosquitto starts mosquitto for (d) with a listener on a free
// loopback port, or returns errNoMosquitto. The configuration is the
// interoperability tests' (gatewaytest.StartMosquitto): anonymous, no
// persistence, and a queue deep enough that closed-loop load never
// drops a message; plus, unless --mosquitto-nodelay=false,
// set_tcp_nodelay. Without it mosquitto leaves Nagle's algorithm on, and
// at QoS 1 its small packets (PUBACKs, replies) wait for the peer's
// delayed ACK: about 7 times fewer req/s and a p99 of 50 ms at 16
// workers. That measures a misconfiguration, not the broker.
func (r *runner) startMosquitto(ctx context.Context) (*child, string, error) {
	bin := r.cfg.mosquitto
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("mosquitto"); err != nil {
			return nil, "", errNoMosquitto
		}
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(r.dir, "mosquitto.conf")
	lines := []string{
		// Started as root, mosquitto switches to the user "mosquitto",
		// which clears its Pdeathsig (see childAttr): it would outlive a
		// killed bench. Staying the user we are keeps it; as any other
		// user mosquitto ignores the line.
		"user " + currentUser(),
		"listener " + port + " 127.0.0.1",
		"allow_anonymous true",
		"persistence false",
		"max_queued_messages 100000",
		"log_dest stderr",
		"log_type error",
	}
	if r.cfg.mosquittoNoDelay {
		lines = append(lines, "set_tcp_nodelay true")
	}
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return nil, "", err
	}
	c, err := r.procs.start("mosquitto", bin, []string{"-c", conf}, os.Environ())
	if err != nil {
		return nil, "", err
	}
	if err := waitTCP(ctx, c, addr); err != nil {
		r.procs.stop(c)
		return nil, "", err
	}
	return c, "mqtt://" + addr, nil
}

// stack is one MQTT system under test: mqttgw, the echo responder, and
// for (d) mosquitto.
type stack struct {
	gw        *gatewayProc
	responder *child
	mosquitto *child // nil on the embedded broker
}

// startEmbedded starts mqttgw with its embedded broker and an echo
// responder on it: the stack of (b), (c) and the payload curve.
func (r *runner) startEmbedded(ctx context.Context) (*stack, error) {
	gw, err := r.startGateway(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := r.startResponder(ctx, gw.mqtt, echoTopic, false)
	if err != nil {
		return nil, err
	}
	return &stack{gw: gw, responder: resp}, nil
}

// startExternal starts mosquitto, mqttgw on it and an echo responder on
// it: the stack of (d).
func (r *runner) startExternal(ctx context.Context) (*stack, error) {
	mosq, url, err := r.startMosquitto(ctx)
	if err != nil {
		return nil, err
	}
	gw, err := r.startGateway(ctx, "--broker", url)
	if err != nil {
		return nil, err
	}
	resp, err := r.startResponder(ctx, url, echoTopic, false)
	if err != nil {
		return nil, err
	}
	return &stack{gw: gw, responder: resp, mosquitto: mosq}, nil
}

// roles are the processes whose CPU a point of this stack counts, the
// load generator first.
func (s *stack) roles() []role {
	rs := []role{{name: roleBench}, {name: roleMQTTGW, pid: s.gw.pid()}, {name: roleResponder, pid: s.responder.pid()}}
	if s.mosquitto != nil {
		rs = append(rs, role{name: roleMosquitto, pid: s.mosquitto.pid()})
	}
	return rs
}

// role is a process whose CPU a point counts; pid 0 is this process.
type role struct {
	name string
	pid  int
}

// Role names, in the tables' column order.
const (
	roleBench     = "bench"
	roleMQTTGW    = "mqttgw"
	roleResponder = "responder"
	roleMosquitto = "mosquitto"
	roleEcho      = "http-echo"
)

// cpu is the CPU the role's process has used so far.
func (r role) cpu() (time.Duration, error) {
	if r.pid == 0 {
		return selfCPU()
	}
	return processCPU(r.pid)
}

// currentUser is this process's user name, "root" if it has none.
func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}
