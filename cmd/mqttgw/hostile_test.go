package main

// The whole gateway against responders that misbehave on the embedded
// broker. gatewaytest.StartResponder sends exactly one well-formed reply
// per request, so most cases drive a plain paho client by hand: the test
// receives the request and publishes whatever it likes, and sees at once
// when the broker drops that client's connection.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/api"
	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// hostileWait bounds every wait in this file.
const hostileWait = 10 * time.Second

// hostileClient is a plain paho client (no reconnection) that hands the
// requests it receives to the test.
type hostileClient struct {
	c    *paho.Client
	reqs chan *paho.Publish
	// disconnect receives the broker's DISCONNECT, if it sends one.
	disconnect chan *paho.Disconnect
}

var hostileClientIDs atomic.Int64

// hostileConnect connects a plain paho client to the broker at addr and,
// unless filter is empty, subscribes it to filter. The test's cleanup
// disconnects it.
func hostileConnect(t *testing.T, addr, filter string) *hostileClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, hostileWait)
	if err != nil {
		t.Fatal(err)
	}
	hc := &hostileClient{
		reqs:       make(chan *paho.Publish, 16),
		disconnect: make(chan *paho.Disconnect, 1),
	}
	id := fmt.Sprintf("hostile-%d", hostileClientIDs.Add(1))
	hc.c = paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				select {
				case hc.reqs <- pr.Packet:
				default: // the test reads every request it provokes; never block paho
				}
				return true, nil
			},
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case hc.disconnect <- d:
			default:
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), hostileWait)
	defer cancel()
	ca, err := hc.c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		// Disconnect closes the connection and waits for paho's
		// goroutines, also when the broker has already dropped it.
		_ = hc.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		<-hc.c.Done()
	})
	if ca.ReasonCode != 0 {
		t.Fatalf("CONNACK reason 0x%02x", ca.ReasonCode)
	}
	if filter != "" {
		sa, err := hc.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
		if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
			t.Fatalf("subscribe %q: %v %+v", filter, err, sa)
		}
	}
	return hc
}

// next returns the next message the client received.
func (hc *hostileClient) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case p := <-hc.reqs:
		if p.Properties == nil {
			p.Properties = &paho.PublishProperties{}
		}
		return p
	case <-time.After(hostileWait):
		t.Fatalf("no message within %s", hostileWait)
		return nil
	}
}

// request returns the next request the client received.
func (hc *hostileClient) request(t *testing.T) *paho.Publish {
	t.Helper()
	p := hc.next(t)
	if p.Properties.ResponseTopic == "" || len(p.Properties.CorrelationData) == 0 {
		t.Fatalf("request without response topic or correlation data: %+v", p)
	}
	return p
}

// publish sends p at QoS 1 and returns the broker's answer, or an error
// once the connection is gone: paho keeps waiting for the PUBACK of a
// publish whose connection dropped, until its context ends.
func (hc *hostileClient) publish(p *paho.Publish) (*paho.PublishResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), hostileWait)
	defer cancel()
	go func() {
		select {
		case <-hc.c.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	p.QoS = 1
	return hc.c.Publish(ctx, p)
}

// mustPublish sends p and fails unless the broker acknowledges it.
func (hc *hostileClient) mustPublish(t *testing.T, p *paho.Publish) {
	t.Helper()
	pr, err := hc.publish(p)
	if err != nil || pr.ReasonCode >= 0x80 {
		t.Fatalf("publish: %v %+v", err, pr)
	}
}

// connected reports whether the broker has not dropped the client.
func (hc *hostileClient) connected() bool {
	select {
	case <-hc.c.Done():
		return false
	default:
		return true
	}
}

// hostileReply addresses a reply to req with the given correlation data.
func hostileReply(req *paho.Publish, corr []byte, payload string, props ...paho.UserProperty) *paho.Publish {
	return &paho.Publish{
		Topic:   req.Properties.ResponseTopic,
		Payload: []byte(payload),
		Properties: &paho.PublishProperties{
			CorrelationData: corr,
			User:            props,
		},
	}
}

// hostilePost sends a request in the background; the HTTP client gives up
// after hostileWait.
func hostilePost(url, body string) <-chan response {
	ch := make(chan response, 1)
	go func() {
		client := &http.Client{Timeout: hostileWait}
		resp, err := client.Post(url, "text/plain", strings.NewReader(body))
		if err != nil {
			ch <- response{status: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			ch <- response{status: -1, body: []byte(err.Error())}
			return
		}
		ch <- response{resp.StatusCode, resp.Header, b}
	}()
	return ch
}

func hostileResult(t *testing.T, ch <-chan response) response {
	t.Helper()
	select {
	case r := <-ch:
		if r.status < 0 {
			t.Fatalf("request failed: %s", r.body)
		}
		return r
	case <-time.After(2 * hostileWait):
		t.Fatal("no HTTP response")
		return response{}
	}
}

func TestHostileResponder(t *testing.T) {
	a, base := mustStart(t, testConfig(t))
	addr := a.broker.Addr()
	brokerURL := "mqtt://" + addr
	srv, _ := a.http.Handler.(*api.Server)

	t.Run("wrong correlation data before the right reply", func(t *testing.T) {
		hc := hostileConnect(t, addr, "hostile/corr")
		res := hostilePost(base+"/rpc/hostile/corr?timeout=5s", "q")
		req := hc.request(t)
		id := req.Properties.CorrelationData
		wrongID := bytes.Clone(id)
		wrongID[len(wrongID)-1] ^= 1 // one bit off
		before := a.gw.Stats()
		hc.mustPublish(t, hostileReply(req, []byte("no such request"), "junk"))
		hc.mustPublish(t, hostileReply(req, wrongID, "junk"))
		hc.mustPublish(t, hostileReply(req, append(bytes.Clone(id), 'x'), "junk")) // the id is only a prefix
		hc.mustPublish(t, hostileReply(req, id, "right"))
		r := hostileResult(t, res)
		if r.status != 200 || string(r.body) != "right" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		gatewaytest.Eventually(t, hostileWait, "3 unknown replies counted", func() bool { return a.gw.Stats().Unknown == before.Unknown+3 })
		// A second right reply comes after the request was answered.
		hc.mustPublish(t, hostileReply(req, id, "again"))
		gatewaytest.Eventually(t, hostileWait, "duplicate counted", func() bool { return a.gw.Stats().Duplicates == before.Duplicates+1 })
		if s := a.gw.Stats(); s.Unknown != before.Unknown+3 || s.Late != before.Late {
			t.Fatalf("stats %+v, before %+v", s, before)
		}
	})

	t.Run("replies up to and above --max-reply", func(t *testing.T) {
		// The request body is the reply's size.
		gatewaytest.StartResponder(t, brokerURL, "hostile/huge", 1, func(req *paho.Publish) *paho.Publish {
			n, _ := strconv.Atoi(string(req.Payload))
			huge := make([]byte, n)
			for i := range huge {
				huge[i] = byte(i * 7 / 3)
			}
			return &paho.Publish{QoS: 1, Payload: huge}
		})
		limit := gateway.DefaultMaxReply
		r := post(t, base+"/rpc/hostile/huge?timeout=30s", strings.NewReader(strconv.Itoa(limit)))
		if r.status != 200 || len(r.body) != limit || r.body[limit-1] != byte((limit-1)*7/3) {
			t.Fatalf("reply of --max-reply bytes: got %d and %d bytes, want 200 and the %d bytes sent", r.status, len(r.body), limit)
		}
		if cl, ct := r.header.Get("Content-Length"), r.header.Get("Content-Type"); cl != strconv.Itoa(limit) || ct != "application/octet-stream" {
			t.Fatalf("Content-Length %q, Content-Type %q", cl, ct)
		}

		before := a.gw.Stats().Oversized
		r = post(t, base+"/rpc/hostile/huge?timeout=30s", strings.NewReader(strconv.Itoa(limit+1)))
		wantProblem(t, r, 502, "reply-too-large", fmt.Sprintf("%d bytes; at most %d", limit+1, limit))
		if got := a.gw.Stats().Oversized; got != before+1 {
			t.Fatalf("oversized replies counted %d, want %d", got, before+1)
		}

		// Above the broker's Maximum Packet Size (the larger of
		// --max-body and --max-reply, plus 64 KiB) the reply never gets
		// in: the broker disconnects the responder (0x95), and the
		// request times out.
		r = post(t, base+"/rpc/hostile/huge?timeout=2s", strings.NewReader(strconv.Itoa(8<<20)))
		wantProblem(t, r, 504, "timeout", "2s")
		req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
		m := do(t, req)
		if !strings.Contains(string(m.body), "mqttgw_embedded_broker_oversized_packets_total 1") {
			t.Fatal("the 8 MiB reply was not counted as an oversized packet")
		}
	})

	t.Run("bad http-status", func(t *testing.T) {
		// The request body is the http-status the responder sends back.
		gatewaytest.StartResponder(t, brokerURL, "hostile/status", 1, func(req *paho.Publish) *paho.Publish {
			return &paho.Publish{QoS: 1, Payload: []byte("body"), Properties: &paho.PublishProperties{
				User: paho.UserProperties{{Key: "http-status", Value: string(req.Payload)}},
			}}
		})
		for _, v := range []string{"abc", "", "99", "600", "2e2", " 200", "200 ", "+201", "0201", "-200", "20", "2000", "٢٠٠"} {
			t.Run(strconv.Quote(v), func(t *testing.T) {
				wantProblem(t, post(t, base+"/rpc/hostile/status?timeout=5s", strings.NewReader(v)), 502, "bad-reply", strconv.Quote(v))
			})
		}
		for _, v := range []string{"200", "201", "404", "599"} {
			r := post(t, base+"/rpc/hostile/status?timeout=5s", strings.NewReader(v))
			if strconv.Itoa(r.status) != v || string(r.body) != "body" {
				t.Fatalf("http-status %s: got %d %q", v, r.status, r.body)
			}
		}
	})

	t.Run("reply properties that are no header values", func(t *testing.T) {
		hc := hostileConnect(t, addr, "hostile/props")
		res := hostilePost(base+"/rpc/hostile/props?timeout=5s", "q")
		req := hc.request(t)
		var droppedBefore uint64
		if srv != nil {
			droppedBefore = srv.DroppedProperties()
		}
		// All valid UTF-8 without NUL, so mochi relays them: the gateway
		// must keep CR, LF and other controls out of the headers itself.
		hc.mustPublish(t, hostileReply(req, req.Properties.CorrelationData, "right",
			paho.UserProperty{Key: "ok1", Value: "1"},
			paho.UserProperty{Key: "crlf", Value: "a\r\nInjected: yes"},
			paho.UserProperty{Key: "x\r\nInjected", Value: "yes"},
			paho.UserProperty{Key: "lf", Value: "a\nInjected: yes"},
			paho.UserProperty{Key: "cr", Value: "a\rInjected: yes"},
			paho.UserProperty{Key: "split", Value: "a\r\n\r\n<html>"},
			paho.UserProperty{Key: "ctl", Value: "a\x01b"},
			paho.UserProperty{Key: "del", Value: "a\x7fb"},
			paho.UserProperty{Key: "tab", Value: "a\tb"},
			paho.UserProperty{Key: "ключ", Value: "значение"},
			paho.UserProperty{Key: "ok2", Value: "2"},
		))
		r := hostileResult(t, res)
		if r.status != 200 || string(r.body) != "right" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		// HTAB and non-ASCII bytes are allowed in a header value (RFC 9110
		// §5.5), so those survive; the other seven are dropped.
		want := []string{"ok1=1", "tab=a\tb", "ключ=значение", "ok2=2"}
		if got := r.header.Values("Mqtt-User-Property"); !slices.Equal(got, want) {
			t.Fatalf("user properties %q, want %q", got, want)
		}
		for name := range r.header {
			switch name {
			case "Content-Type", "Content-Length", "Date", "X-Content-Type-Options", "Mqtt-User-Property":
			default:
				t.Fatalf("unexpected header %s: %q (all: %q)", name, r.header[name], r.header)
			}
		}
		if srv != nil {
			if d := srv.DroppedProperties() - droppedBefore; d != 7 {
				t.Fatalf("%d properties counted as dropped, want 7", d)
			}
		} else {
			t.Log("HTTP handler is no *api.Server; dropped-property count not checked")
		}
		if !hc.connected() {
			t.Fatal("the broker dropped a responder for CR/LF in a user property")
		}
	})

	// NUL and invalid UTF-8 are malformed MQTT strings [MQTT-1.5.4-1]
	// [MQTT-1.5.4-2]. paho.golang sends them as given; mochi's decoder
	// refuses the PUBLISH and closes the responder's connection (without a
	// DISCONNECT). The reply never reaches the gateway, so the request
	// ends in 504 at its own timeout, and nothing else is disturbed.
	for _, tt := range []struct {
		name string
		prop paho.UserProperty
	}{
		{"NUL in value", paho.UserProperty{Key: "nul", Value: "a\x00b"}},
		{"NUL in key", paho.UserProperty{Key: "n\x00l", Value: "v"}},
		{"invalid UTF-8 in value", paho.UserProperty{Key: "utf8", Value: "a\xffb"}},
		{"invalid UTF-8 in key", paho.UserProperty{Key: "\xc3(", Value: "v"}},
		{"surrogate in value", paho.UserProperty{Key: "utf8", Value: "\xed\xa0\x80"}},
	} {
		t.Run("broker drops responder for "+tt.name, func(t *testing.T) {
			topic := "hostile/malformed/" + strings.ReplaceAll(tt.name, " ", "-")
			hc := hostileConnect(t, addr, topic)
			res := hostilePost(base+"/rpc/"+topic+"?timeout=1s", "q")
			req := hc.request(t)
			_, err := hc.publish(hostileReply(req, req.Properties.CorrelationData, "right", paho.UserProperty{Key: "ok", Value: "1"}, tt.prop))
			if err == nil {
				t.Fatal("the broker acknowledged a malformed PUBLISH")
			}
			select {
			case <-hc.c.Done():
			case <-time.After(hostileWait):
				t.Fatal("the responder is still connected")
			}
			select {
			case d := <-hc.disconnect:
				t.Fatalf("unexpected DISCONNECT %+v: update the comment above", d)
			default:
			}
			wantProblem(t, hostileResult(t, res), 504, "timeout", "1s")
			if err := a.gw.Ready(); err != nil {
				t.Fatalf("gateway not ready: %v", err)
			}
		})
	}

	t.Run("no or oversized correlation data", func(t *testing.T) {
		hc := hostileConnect(t, addr, "hostile/nocorr")
		res := hostilePost(base+"/rpc/hostile/nocorr?timeout=5s", "q")
		req := hc.request(t)
		id := req.Properties.CorrelationData
		before := a.gw.Stats()
		hc.mustPublish(t, hostileReply(req, nil, "junk"))
		// MQTT binary data carries a 16-bit length [MQTT-1.5.6], so 1 MiB
		// can't be sent: paho.golang cuts it to 65,535 bytes, the most any
		// broker can relay. It starts with the real id but isn't it.
		long := append(bytes.Clone(id), bytes.Repeat([]byte{'z'}, 1<<20)...)
		hc.mustPublish(t, hostileReply(req, long, "junk"))
		hc.mustPublish(t, hostileReply(req, id, "right"))
		r := hostileResult(t, res)
		if r.status != 200 || string(r.body) != "right" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		gatewaytest.Eventually(t, hostileWait, "2 unknown replies counted", func() bool { return a.gw.Stats().Unknown == before.Unknown+2 })
		// Also with no request waiting at all.
		hc.mustPublish(t, hostileReply(req, nil, "junk"))
		hc.mustPublish(t, hostileReply(req, long, "junk"))
		gatewaytest.Eventually(t, hostileWait, "4 unknown replies counted", func() bool { return a.gw.Stats().Unknown == before.Unknown+4 })
		// What the broker relays is indeed cut to 65,535 bytes: send it to
		// the client's own subscription to see.
		hc.mustPublish(t, &paho.Publish{Topic: "hostile/nocorr", Properties: &paho.PublishProperties{CorrelationData: long}})
		if got := hc.next(t).Properties.CorrelationData; !bytes.Equal(got, long[:65535]) {
			t.Fatalf("the broker relayed %d bytes of correlation data, want the first 65535", len(got))
		}
		if !hc.connected() {
			t.Fatal("the broker dropped the responder")
		}
	})

	t.Run("still works after all that", func(t *testing.T) {
		gatewaytest.StartResponder(t, brokerURL, "hostile/echo", 1, gatewaytest.Echo)
		r := post(t, base+"/rpc/hostile/echo?timeout=5s", strings.NewReader("alive"), "Mqtt-User-Property", "k=v")
		if r.status != 200 || string(r.body) != "alive" || fmt.Sprint(r.header.Values("Mqtt-User-Property")) != "[k=v]" {
			t.Fatalf("got %d %q %v", r.status, r.body, r.header)
		}
		if s := a.gw.Stats(); s.Pending != 0 {
			t.Fatalf("stats %+v: pending entries left", s)
		}
	})
}
