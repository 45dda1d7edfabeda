package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRawClient drives the load generator's client against net/http's
// server: it must reuse its connection, read fixed-length and chunked
// answers alike, dial anew after the server closes, and give up when its
// context ends.
func TestRawClient(t *testing.T) {
	var conns atomic.Int32
	block := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Query().Get("mode") {
		case "chunked":
			w.Write(body)
			w.(http.Flusher).Flush() // no Content-Length: chunked
			w.Write(body)
		case "close":
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"title":"Service Unavailable","detail":"no responder"}`))
		case "block":
			<-block
		default:
			if r.Header.Get("Content-Type") != payloadType || r.Method != http.MethodPost {
				http.Error(w, "bad request line", http.StatusBadRequest)
				return
			}
			w.Write(body)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	defer close(block)

	ctx := context.Background()
	var into bytes.Buffer
	post := func(query string) (int, error) {
		c, err := newRawClient(srv.URL+"/rpc/x"+query, payloadType, []byte("hello"), 1, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.close)
		return c.post(ctx, 0, &into)
	}

	c, err := newRawClient(srv.URL+"/rpc/x", payloadType, []byte("hello"), 2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for range 3 {
		status, err := c.post(ctx, 0, &into)
		if err != nil || status != 200 || into.String() != "hello" {
			t.Fatalf("post: %d %q %v, want 200 hello", status, into.String(), err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 posts of one worker took %d connections, want 1", n)
	}

	if status, err := post("?mode=chunked"); err != nil || status != 200 || into.String() != "hellohello" {
		t.Errorf("chunked: %d %q %v, want 200 hellohello", status, into.String(), err)
	}
	status, err := post("?mode=close")
	if err := expectOK(status, err, into.Bytes()); err == nil || !strings.Contains(err.Error(), "HTTP 503 Service Unavailable: no responder") {
		t.Errorf("closing 503: %v, want its problem detail", err)
	}

	bc, err := newRawClient(srv.URL+"/rpc/x?mode=block", payloadType, nil, 1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer bc.close()
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := bc.post(cctx, 0, &into); err == nil || time.Since(start) > 10*time.Second {
		t.Errorf("post with an ending context: %v after %s, want an error once it ends", err, time.Since(start))
	}
}
