package api

// What becomes in HTTP of replies that responders should not have sent.
// The broker relays them as sent (the broker package's tests show that);
// here a fake gateway hands them to the server as the broker would.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mqttgw/mqttgw/gateway"
)

// serveReply serves one request whose reply is r, over a real socket, and
// returns the response and its body.
func serveReply(t *testing.T, r gateway.Reply) (*Server, *http.Response, []byte) {
	t.Helper()
	s := NewServer(nil, &fakeGateway{RequestFn: func(context.Context, gateway.Request) (gateway.Reply, error) {
		return r, nil
	}}, testCfg)
	srv := newLocalServer(t, s)
	res, err := srv.Client().Post(srv.URL+"/rpc/svc/x", "text/plain", strings.NewReader("q"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s, res, body
}

// A responder chooses the status with an http-status property of exactly
// three ASCII digits from 200 to 599; anything else is a bad reply, 502,
// whose detail quotes the value.
func TestHTTPStatusChosenByTheResponder(t *testing.T) {
	for _, v := range []string{"abc", "", "99", "600", "2e2", " 200", "200 ", "+201", "0201", "-200", "20", "2000", "٢٠٠"} {
		t.Run(strconv.Quote(v), func(t *testing.T) {
			_, res, body := serveReply(t, gateway.Reply{Payload: []byte("body"),
				UserProperties: []gateway.UserProperty{{Key: "http-status", Value: v}}})
			var p Problem
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("status %d, body %q: %v", res.StatusCode, body, err)
			}
			if res.StatusCode != http.StatusBadGateway || p.Type != ProblemTypeBase+"bad-reply" || !strings.Contains(p.Detail, strconv.Quote(v)) {
				t.Fatalf("status %d, problem %+v; want 502 bad-reply quoting %q", res.StatusCode, p, v)
			}
		})
	}
	for _, v := range []string{"200", "201", "404", "599"} {
		_, res, body := serveReply(t, gateway.Reply{Payload: []byte("body"),
			UserProperties: []gateway.UserProperty{{Key: "http-status", Value: v}}})
		if strconv.Itoa(res.StatusCode) != v || string(body) != "body" {
			t.Fatalf("http-status %s: got %d %q", v, res.StatusCode, body)
		}
	}
}

// User properties that are valid MQTT strings but no header values (CR,
// LF, other controls) are dropped and counted, the others sent in order.
// A header value may hold HTAB and non-ASCII bytes, so those survive.
func TestReplyPropertiesThatAreNoHeaderValues(t *testing.T) {
	s, res, body := serveReply(t, gateway.Reply{Payload: []byte("right"), UserProperties: []gateway.UserProperty{
		{Key: "ok1", Value: "1"},
		{Key: "crlf", Value: "a\r\nInjected: yes"},
		{Key: "x\r\nInjected", Value: "yes"},
		{Key: "lf", Value: "a\nInjected: yes"},
		{Key: "cr", Value: "a\rInjected: yes"},
		{Key: "split", Value: "a\r\n\r\n<html>"},
		{Key: "ctl", Value: "a\x01b"},
		{Key: "del", Value: "a\x7fb"},
		{Key: "tab", Value: "a\tb"},
		{Key: "ключ", Value: "значение"},
		{Key: "ok2", Value: "2"},
	}})
	if res.StatusCode != 200 || string(body) != "right" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	want := []string{"ok1=1", "tab=a\tb", "ключ=значение", "ok2=2"}
	if got := res.Header.Values("Mqtt-User-Property"); !slices.Equal(got, want) {
		t.Fatalf("user properties %q, want %q", got, want)
	}
	for name := range res.Header {
		switch name {
		case "Content-Type", "Content-Length", "Date", "X-Content-Type-Options", "Mqtt-User-Property":
		default:
			t.Fatalf("unexpected header %s: %q (all: %q)", name, res.Header[name], res.Header)
		}
	}
	if d := s.DroppedProperties(); d != 7 {
		t.Fatalf("%d properties counted as dropped, want 7", d)
	}
}
