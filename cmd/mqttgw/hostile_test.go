package main

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// TestHostileResponder is the one end-to-end case of a responder that
// misbehaves: huge replies. Only the whole program shows that --max-reply
// reaches the gateway and that the embedded broker's largest packet
// follows it (the larger of --max-body and --max-reply, plus 64 KiB):
// a reply of --max-reply bytes arrives whole, one byte more is a 502, and
// a reply above the packet limit never gets in: the broker cuts the
// responder off, counts the packet, and the request times out. The other
// misbehaviours are tested lower down, where they happen: matching replies
// to requests in the gateway package, what the broker relays or refuses in
// the broker package, what becomes of a reply in HTTP in the api package.
func TestHostileResponder(t *testing.T) {
	const maxReply = 100 << 10 // not the default, to see the flag applied
	a, base := mustStart(t, testConfig(t, "--max-reply", "100KiB", "--max-body", "1KiB"))
	brokerURL := "mqtt://" + a.broker.Addr()
	// The request body is the reply's size.
	gatewaytest.StartResponder(t, brokerURL, "hostile/huge", 1, func(req *paho.Publish) *paho.Publish {
		n, _ := strconv.Atoi(string(req.Payload))
		huge := make([]byte, n)
		for i := range huge {
			huge[i] = byte(i * 7 / 3)
		}
		return &paho.Publish{QoS: 1, Payload: huge}
	})

	r := gatewaytest.Post(t, base+"/rpc/hostile/huge?timeout=30s", strings.NewReader(strconv.Itoa(maxReply)))
	if last := maxReply - 1; r.Status != 200 || len(r.Body) != maxReply || r.Body[last] != byte(last*7/3) {
		t.Fatalf("reply of --max-reply bytes: got %d and %d bytes, want 200 and the %d bytes sent", r.Status, len(r.Body), maxReply)
	}
	if cl, ct := r.Header.Get("Content-Length"), r.Header.Get("Content-Type"); cl != strconv.Itoa(maxReply) || ct != "application/octet-stream" {
		t.Fatalf("Content-Length %q, Content-Type %q", cl, ct)
	}

	r = gatewaytest.Post(t, base+"/rpc/hostile/huge?timeout=30s", strings.NewReader(strconv.Itoa(maxReply+1)))
	gatewaytest.WantProblem(t, r, 502, "reply-too-large", fmt.Sprintf("%d bytes; at most %d", maxReply+1, maxReply))

	r = gatewaytest.Post(t, base+"/rpc/hostile/huge?timeout=1s", strings.NewReader(strconv.Itoa(1<<20)))
	gatewaytest.WantProblem(t, r, 504, "timeout", "1s")
	req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	if m := gatewaytest.Do(t, nil, req); !strings.Contains(string(m.Body), "\nmqttgw_embedded_broker_oversized_packets_total 1\n") {
		t.Fatal("the 1 MiB reply was not counted as an oversized packet")
	}

	// Still works after all that.
	gatewaytest.StartResponder(t, brokerURL, "hostile/echo", 1, gatewaytest.Echo)
	if r := gatewaytest.Post(t, base+"/rpc/hostile/echo?timeout=5s", strings.NewReader("alive")); r.Status != 200 || string(r.Body) != "alive" {
		t.Fatalf("got %d %q", r.Status, r.Body)
	}
	if s := a.gw.Stats(); s.Pending != 0 || s.Oversized != 1 {
		t.Fatalf("stats %+v: want nothing pending and the one oversized reply", s)
	}
}
