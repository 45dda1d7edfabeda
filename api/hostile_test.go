package api

// Attacks on the HTTP API as a client without a key would make them, over
// real sockets.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// A request whose body never arrives used to get no answer at all: after
// an early answer net/http waited for the rest of the body, with no read
// deadline in force.
func TestRequestWhoseBodyNeverArrives(t *testing.T) {
	const bodyTimeout = 300 * time.Millisecond
	cfg := testCfg
	cfg.BodyReadTimeout = bodyTimeout
	authFile := filepath.Join(t.TempDir(), "keys.yaml")
	gatewaytest.WriteFile(t, authFile, authYAML())
	auth, err := NewAuthenticator(authFile)
	if err != nil {
		t.Fatal(err)
	}
	gw := &fakeGateway{
		RequestFn: func(context.Context, gateway.Request) (gateway.Reply, error) {
			return gateway.Reply{Payload: []byte("should not get here")}, nil
		},
	}
	open := newLocalServer(t, NewServer(nil, gw, cfg))
	cfg.Auth = auth
	locked := newLocalServer(t, NewServer(nil, gw, cfg))

	for _, c := range []struct {
		name, method, path string
		server             string
		length             int
		status             int
		slug               string
	}{
		{"bad topic", "POST", "/rpc/a/+", open.URL, 1000, 400, "invalid-topic"},
		{"no key", "POST", "/rpc/a", locked.URL, 1000, 401, "unauthorized"},
		{"no route", "POST", "/nowhere", open.URL, 1000, 404, "not-found"},
		{"wrong method", "PUT", "/rpc/a", open.URL, 1000, 405, "method-not-allowed"},
		{"declared too large", "POST", "/rpc/a", open.URL, int(cfg.MaxBody) + 1, 413, "body-too-large"},
		{"healthz with a body", "GET", "/healthz", open.URL, 1000, 200, ""},
		{"body too slow", "POST", "/rpc/a", open.URL, 1000, 408, "body-timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			conn, err := net.Dial("tcp", strings.TrimPrefix(c.server, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nab", c.method, c.path, c.length)
			_ = conn.SetReadDeadline(start.Add(bodyTimeout + 5*time.Second))
			br := bufio.NewReader(conn)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer after %s: %v", time.Since(start).Round(time.Millisecond), err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			// At once when decided before the body; else at its deadline.
			bound := 200 * time.Millisecond
			if c.status == http.StatusRequestTimeout {
				bound += bodyTimeout
			}
			if took := time.Since(start); took > bound {
				t.Fatalf("answered after %s, want within %s", took, bound)
			}
			if res.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, c.status, body)
			}
			if c.slug != "" {
				var p Problem
				if err := json.Unmarshal(body, &p); err != nil || p.Type != ProblemTypeBase+c.slug || p.Detail == "" {
					t.Fatalf("body %s, want problem %s with a detail", body, c.slug)
				}
			}
			if !res.Close {
				t.Fatal("the answer does not close the connection, so the unread body would be waited for")
			}
			// And the server does close it.
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after the answer: %v, want EOF", err)
			}
		})
	}
}

// A request whose body was read keeps its connection.
func TestRequestWithBodyKeepsItsConnection(t *testing.T) {
	gw := &fakeGateway{
		RequestFn: func(_ context.Context, req gateway.Request) (gateway.Reply, error) {
			return gateway.Reply{Payload: req.Payload}, nil
		},
	}
	srv := newLocalServer(t, NewServer(nil, gw, testCfg))
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for i := range 2 {
		fmt.Fprintf(conn, "POST /rpc/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || res.Close {
			t.Fatalf("request %d: status %d, close %v; want 200 on a kept connection", i, res.StatusCode, res.Close)
		}
	}
}

// Random methods used to make a series each in mqttgw_http_requests_total.
func TestMetricMethodLabelIsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testCfg
	cfg.Registerer, cfg.Gatherer = reg, reg
	srv := newLocalServer(t, NewServer(nil, &fakeGateway{}, cfg))
	for i := range 300 {
		method := fmt.Sprintf("X%d%s", i, strings.Repeat("Y", rand.IntN(2000)))
		req, err := http.NewRequest(method, srv.URL+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	methods := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "mqttgw_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "method" {
					methods[lp.GetValue()] = true
				}
			}
		}
	}
	if len(methods) != 1 || !methods["other"] {
		t.Fatalf("method labels %v, want only \"other\"", methods)
	}
}
