package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// rawClient POSTs one fixed request over one kept-alive HTTP/1.1
// connection per worker, the way wrk does: the request's bytes are made
// once, and the answer is read on the worker's own goroutine. net/http's
// Transport hands every request to two goroutines of its connection and
// back, which on a 2-core machine cost the load generator about as much
// CPU per request as the bare echo server spends: CPU taken from the
// system under test, which shares the cores.
type rawClient struct {
	addr    string
	request []byte // head and body
	timeout time.Duration
	conns   []*rawConn // one per worker, dialled on first use
}

type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

// newRawClient is a rawClient for concurrency workers that POST body to
// rawURL with contentType.
func newRawClient(rawURL, contentType string, body []byte, concurrency int, timeout time.Duration) (*rawClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%s: only http:// is measured", rawURL)
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", u.RequestURI(), u.Host, contentType, len(body))
	req.Write(body)
	return &rawClient{addr: u.Host, request: req.Bytes(), timeout: timeout, conns: make([]*rawConn, concurrency)}, nil
}

// post sends the request on worker w's connection and reads the answer's
// body into into, returning its status. A failed connection is dropped:
// the next call dials anew, as a client would.
func (c *rawClient) post(ctx context.Context, w int, into *bytes.Buffer) (int, error) {
	rc := c.conns[w]
	if rc == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0, err
		}
		rc = &rawConn{c: conn, br: bufio.NewReaderSize(conn, 16<<10)}
		c.conns[w] = rc
	}
	status, keep, err := rc.roundTrip(ctx, c.request, c.timeout, into)
	if err != nil || !keep {
		rc.c.Close()
		c.conns[w] = nil
	}
	return status, err
}

// roundTrip writes request and reads one answer; keep is false when the
// server said it closes the connection.
func (rc *rawConn) roundTrip(ctx context.Context, request []byte, timeout time.Duration, into *bytes.Buffer) (status int, keep bool, err error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := rc.c.SetDeadline(deadline); err != nil {
		return 0, false, err
	}
	// The run's end, or a signal, interrupts a worker blocked in a read.
	stop := context.AfterFunc(ctx, func() { rc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := rc.c.Write(request); err != nil {
		return 0, false, err
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return 0, false, err
	}
	into.Reset()
	_, err = into.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, false, fmt.Errorf("reading the answer: %w", err)
	}
	return resp.StatusCode, !resp.Close, nil
}

// close closes every worker's connection.
func (c *rawClient) close() {
	for i, rc := range c.conns {
		if rc != nil {
			rc.c.Close()
			c.conns[i] = nil
		}
	}
}

// expectOK turns an answer other than 200 into an error that says what
// the server answered.
func expectOK(status int, err error, body []byte) error {
	if err != nil || status == http.StatusOK {
		return err
	}
	return statusError(status, body)
}
