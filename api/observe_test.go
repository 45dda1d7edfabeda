package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// TestRequestLogLine: every request's log line has its status, its topic
// and outcome, and a request id: the client's X-Request-Id, or one made
// up that no other request has.
func TestRequestLogLine(t *testing.T) {
	var logs gatewaytest.Buffer
	gw := &fakeGateway{RequestFn: func(_ context.Context, req gateway.Request) (gateway.Reply, error) {
		if string(req.Payload) == "slow" {
			return gateway.Reply{}, errors.Join(gateway.ErrTimeout, errors.New("no reply"))
		}
		return gateway.Reply{Payload: req.Payload}, nil
	}}
	srv := newLocalServer(t, NewServer(slog.New(slog.NewJSONHandler(&logs, nil)), gw, testCfg))

	send := func(body string, header ...string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/rpc/svc/echo", strings.NewReader(body))
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	send("a")
	send("b")
	send("c", "X-Request-Id", "req-7")
	send("slow")
	srv.Close() // the lines are written once the handlers return

	lines := logs.JSONLines(t, "")
	if len(lines) != 4 {
		t.Fatalf("%d log lines, want 4: %v", len(lines), lines)
	}
	ids := map[any]bool{}
	for i, want := range []struct {
		status  float64
		outcome string
	}{{200, "ok"}, {200, "ok"}, {200, "ok"}, {504, "timeout"}} {
		l := lines[i]
		if l["msg"] != "request" || l["status"] != want.status || l["topic"] != "svc/echo" || l["outcome"] != want.outcome {
			t.Errorf("line %d: %v, want status %v, topic svc/echo, outcome %s", i, l, want.status, want.outcome)
		}
		if id, _ := l["request_id"].(string); id == "" || ids[id] {
			t.Errorf("line %d: request_id %q, want one of its own", i, id)
		}
		ids[l["request_id"]] = true
	}
	if lines[2]["request_id"] != "req-7" {
		t.Errorf("request_id %v, want the client's req-7", lines[2]["request_id"])
	}
}
