package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway"
	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// postBatch sends body as a batch with key and returns the result lines
// by index.
func postBatch(t *testing.T, url, key, contentType, body string) (gatewaytest.Response, map[int]batchResult) {
	t.Helper()
	r := gatewaytest.Post(t, url, strings.NewReader(body), "Authorization", "Bearer "+key, "Content-Type", contentType)
	results := map[int]batchResult{}
	if r.Status != 200 {
		return r, results
	}
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	for sc.Scan() {
		var res batchResult
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if _, dup := results[res.Index]; dup {
			t.Fatalf("index %d answered twice", res.Index)
		}
		results[res.Index] = res
	}
	return r, results
}

// A batch carries requests to several topics; each is answered on its
// own line, in the order they complete, with its reply or its problem,
// and authorized on its own topic.
func TestBatch(t *testing.T) {
	t.Parallel()
	base, brokerURL := asyncServer(t, gateway.Config{})
	gatewaytest.StartResponder(t, brokerURL, "allowed/echo", 1, gatewaytest.Echo)
	gatewaytest.StartResponder(t, brokerURL, "allowed/slow", 1, func(req *paho.Publish) *paho.Publish {
		time.Sleep(300 * time.Millisecond)
		return gatewaytest.Echo(req)
	})
	body := strings.Join([]string{
		`{"topic":"allowed/slow","payload":"first sent, last done"}`,
		`{"topic":"allowed/echo","payload_base64":"AP8=","content_type":"application/octet-stream","user_properties":[{"key":"k","value":"v"}],"qos":2}`,
		`{"topic":"secret/echo","payload":"x"}`,
		`{"topic":"allowed/+","payload":"x"}`,
		`{"topic":"allowed/nobody","payload":"x"}`,
		`{"topic":"allowed/echo","payload":"x","qos":7}`,
		``,
	}, "\n")
	r, res := postBatch(t, base+"/batch", carol, "application/x-ndjson", body)
	if r.Status != 200 || r.Header.Get("Content-Type") != "application/x-ndjson" || len(res) != 6 {
		t.Fatalf("%d %v: %s", r.Status, r.Header, r.Body)
	}
	if first := res[0]; first.Status != 200 || *first.Payload != "first sent, last done" {
		t.Errorf("item 0: %+v", first)
	}
	if echo := res[1]; echo.Status != 200 || *echo.Payload != "AP8=" || echo.Encoding != "base64" || echo.ContentType != "application/octet-stream" ||
		len(echo.Properties) != 1 || echo.Properties[0] != (property{"k", "v"}) {
		t.Errorf("item 1: %+v", echo)
	}
	for i, want := range map[int]string{2: "forbidden", 3: "invalid-topic", 4: "no-responders", 5: "invalid-batch"} {
		if p := res[i].Problem; p == nil || p.Type != ProblemTypeBase+want || res[i].Status != p.Status {
			t.Errorf("item %d: %+v, want problem %s", i, res[i], want)
		}
	}
	// Completion order: the slow item comes last.
	var order []int
	for _, line := range strings.Split(strings.TrimSpace(string(r.Body)), "\n") {
		var br batchResult
		_ = json.Unmarshal([]byte(line), &br)
		order = append(order, br.Index)
	}
	if order[len(order)-1] != 0 {
		t.Errorf("completion order %v: the slow item should be last", order)
	}

	// A JSON array; one timeout for all.
	gatewaytest.StartResponder(t, brokerURL, "allowed/silent", 1, func(*paho.Publish) *paho.Publish { return nil })
	r, res = postBatch(t, base+"/batch?timeout=300ms", alice, "application/json",
		`[{"topic":"allowed/echo","payload":"a"},{"topic":"allowed/silent","payload":"b"}]`)
	if r.Status != 200 || len(res) != 2 || res[0].Status != 200 || res[1].Problem == nil || res[1].Problem.Type != ProblemTypeBase+"timeout" {
		t.Fatalf("array batch: %d %+v", r.Status, res)
	}
}

func TestBatchBadInput(t *testing.T) {
	t.Parallel()
	base, _ := asyncServer(t, gateway.Config{})
	many := strings.Repeat(`{"topic":"a"}`+"\n", testCfg.MaxBatch+1)
	for _, c := range []struct {
		name, url, key, ct, body string
		status                   int
		slug, detail             string
	}{
		{"no key", "/batch", "", "application/json", `[{"topic":"a"}]`, 401, "unauthorized", ""},
		{"plain text", "/batch", alice, "text/plain", `[{"topic":"a"}]`, 400, "invalid-header", "application/x-ndjson"},
		{"empty", "/batch", alice, "application/json", `[]`, 400, "invalid-batch", "no requests"},
		{"not an array", "/batch", alice, "application/json", `{"topic":"a"}`, 400, "invalid-batch", "no JSON array"},
		{"bad line", "/batch", alice, "application/x-ndjson", "{\"topic\":\"a\"}\n{nope", 400, "invalid-batch", "line 2"},
		{"too many", "/batch", alice, "application/x-ndjson", many, 400, "invalid-batch", "--max-batch"},
		{"unknown parameter", "/batch?qos=1", alice, "application/json", `[{"topic":"a"}]`, 400, "invalid-parameter", "qos is not a parameter"},
		{"bad timeout", "/batch?timeout=0", alice, "application/json", `[{"topic":"a"}]`, 400, "invalid-parameter", "minimum"},
	} {
		t.Run(c.name, func(t *testing.T) {
			header := []string{"Content-Type", c.ct}
			if c.key != "" {
				header = append(header, "Authorization", "Bearer "+c.key)
			}
			gatewaytest.WantProblem(t, gatewaytest.Post(t, base+c.url, strings.NewReader(c.body), header...), c.status, c.slug, c.detail)
		})
	}
	var statuses []int
	_, res := postBatch(t, base+"/batch", alice, "application/json", `[{"topic":"a","payload":"x","payload_base64":"eA=="},{"topic":"a","payload_base64":"!"}]`)
	for _, r := range res {
		statuses = append(statuses, r.Status)
	}
	sort.Ints(statuses)
	if len(statuses) != 2 || statuses[0] != 400 || statuses[1] != 400 {
		t.Fatalf("payload and payload_base64 together, bad base64: %+v", res)
	}
	if r := gatewaytest.Do(t, nil, mustGet(t, base+"/healthz")); r.Status != 200 {
		t.Fatal("the gateway stopped serving")
	}
}

func mustGet(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
