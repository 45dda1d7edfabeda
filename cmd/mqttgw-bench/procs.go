package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// readyPrefix starts the line a sub-mode of this binary prints on stdout
// once it serves, followed by what it bound (an address) or nothing.
const readyPrefix = "READY"

// startTimeout bounds every wait for a child to come up.
const startTimeout = 20 * time.Second

// child is a process the bench started: a helper sub-mode of this binary,
// mqttgw or mosquitto.
type child struct {
	name   string
	cmd    *exec.Cmd
	stderr *tail
	ready  chan string   // the text after READY, once
	done   chan struct{} // closed when the process has exited and been reaped
	err    error         // Wait's result, once done is closed
}

// pid is the child's process id, for /proc.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited says whether the child has died, and how, with the end of its
// stderr: a point that fails because a helper crashed says so.
func (c *child) exited() (string, bool) {
	select {
	case <-c.done:
		return fmt.Sprintf("%s exited (%v): %s", c.name, c.err, c.stderr.String()), true
	default:
		return "", false
	}
}

// procs is every child of this run. kill ends them all; the caller defers
// it so that they die on every way out, errors and SIGINT included.
type procs struct {
	mu   sync.Mutex
	list []*child
}

// start runs path with args as a child named name. The child's stdout is
// scanned for the READY line (see waitReady); its stderr is kept, the
// last few KiB, for error messages.
func (p *procs) start(name, path string, args, env []string) (*child, error) {
	c := &child{name: name, stderr: &tail{max: 4 << 10}, ready: make(chan string, 1), done: make(chan struct{})}
	c.cmd = exec.Command(path, args...)
	c.cmd.Stdout = &readyWriter{ready: c.ready}
	c.cmd.Stderr = c.stderr
	c.cmd.Env = env
	c.cmd.SysProcAttr = childAttr()
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.mu.Lock()
	p.list = append(p.list, c)
	p.mu.Unlock()
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// waitReady waits for the child's READY line and returns what follows it.
func (c *child) waitReady(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	select {
	case s := <-c.ready:
		return s, nil
	case <-c.done:
		return "", fmt.Errorf("%s exited before it was ready (%v): %s", c.name, c.err, c.stderr.String())
	case <-ctx.Done():
		return "", fmt.Errorf("%s not ready: %w: %s", c.name, ctx.Err(), c.stderr.String())
	}
}

// stop kills one child and waits until it is reaped, so that its ports
// and memory are free for the next one.
func (p *procs) stop(c *child) {
	kill(c)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.list {
		if x == c {
			p.list = append(p.list[:i], p.list[i+1:]...)
			break
		}
	}
}

// kill ends every child still running and reaps them. SIGKILL rather than
// SIGTERM: nothing of theirs needs to be saved, and mqttgw would otherwise
// wait out its --shutdown-grace for requests still in flight.
func (p *procs) kill() {
	p.mu.Lock()
	list := p.list
	p.list = nil
	p.mu.Unlock()
	for _, c := range list {
		kill(c)
	}
}

// exited lists the children that have died on their own.
func (p *procs) exited() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, c := range p.list {
		if s, ok := c.exited(); ok {
			out = append(out, s)
		}
	}
	return out
}

func kill(c *child) {
	// The child leads its own process group (Setpgid): -pid reaches it
	// and anything it started.
	if err := syscall.Kill(-c.pid(), syscall.SIGKILL); err != nil {
		_ = c.cmd.Process.Kill()
	}
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		// Unkillable (D state): leave it; Pdeathsig ends it with us.
	}
}

// readyWriter is a child's stdout: it hands on the first READY line and
// drops everything else.
type readyWriter struct {
	ready chan string
	line  []byte
	seen  bool
}

func (w *readyWriter) Write(b []byte) (int, error) {
	if w.seen {
		return len(b), nil
	}
	w.line = append(w.line, b...)
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 {
			if len(w.line) > 4<<10 { // no READY line this long: not ours
				w.line = w.line[:0]
			}
			return len(b), nil
		}
		l := strings.TrimSpace(string(w.line[:i]))
		w.line = w.line[i+1:]
		if rest, ok := strings.CutPrefix(l, readyPrefix); ok {
			w.seen = true
			w.ready <- strings.TrimSpace(rest)
			return len(b), nil
		}
	}
}

// tail keeps the last max bytes written to it: a child's stderr.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// freeAddr returns 127.0.0.1:<port> with a port the OS just handed out
// and took back, for programs (mqttgw, mosquitto) that must be told their
// port. Another process could take it in between; on this quiet loopback
// that race has not been seen, and a bind error would say so.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitHTTP polls url until it answers 200 or c exits.
func waitHTTP(ctx context.Context, c *child, url string) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return poll(ctx, c, "GET "+url+" == 200", func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// waitTCP polls addr until it accepts a connection or c exits.
func waitTCP(ctx context.Context, c *child, addr string) error {
	return poll(ctx, c, "listening on "+addr, func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
}

// poll calls ok every 20 ms until it is true, c exits, or startTimeout
// passes.
func poll(ctx context.Context, c *child, what string, ok func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !ok() {
		select {
		case <-c.done:
			return fmt.Errorf("%s exited (%v) before %s: %s", c.name, c.err, what, c.stderr.String())
		case <-ctx.Done():
			return fmt.Errorf("%s: no %s: %w: %s", c.name, what, ctx.Err(), c.stderr.String())
		case <-t.C:
		}
	}
	return nil
}
