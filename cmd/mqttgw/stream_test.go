package main

// Many replies end to end: a stream of progress events as they happen,
// a gather over responders in Go, MQTT.js and Python paho, and a client
// that hangs up mid-stream.

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttgw/mqttgw/gateway/gatewaytest"
)

// streamEvent is the part of a stream's events the tests read.
type streamEvent struct {
	Type     string
	Seq      int
	Final    bool
	Status   int
	Payload  string
	Reason   string
	Replies  int
	Reached  *int
	received time.Time
}

// readEvents posts to url asking for accept and decodes the events as
// they arrive, noting when each came.
func readEvents(t *testing.T, url, accept string) (*http.Response, []streamEvent) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, nil)
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var events []streamEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if accept == "text/event-stream" {
			var ok bool
			if line, ok = strings.CutPrefix(line, "data: "); !ok {
				continue
			}
		} else if line == "" {
			continue
		}
		ev := streamEvent{received: time.Now()}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		events = append(events, ev)
	}
	return resp, events
}

// Three progress replies 200 ms apart, then a final one: each event
// reaches the client as it is published, then the closing event. Not
// parallel: it measures how soon each event arrives.
func TestStreamEventsAsTheyCome(t *testing.T) {
	a, base := mustStart(t, testConfig(t))
	var mu sync.Mutex
	var sent []time.Time
	gatewaytest.StartStreamer(t, "mqtt://"+a.broker.Addr(), "jobs/+", 1, func(req *paho.Publish, send func(*paho.Publish)) {
		for i, step := range []string{"accepted", "40%", "80%", "done"} {
			if i > 0 {
				time.Sleep(200 * time.Millisecond)
			}
			p := &paho.Publish{QoS: 1, Payload: []byte(step), Properties: &paho.PublishProperties{}}
			if step != "done" {
				p.Properties.User = paho.UserProperties{{Key: "progress", Value: step}}
			}
			mu.Lock()
			sent = append(sent, time.Now())
			mu.Unlock()
			send(p)
		}
	})
	for _, accept := range []string{"text/event-stream", "application/x-ndjson"} {
		t.Run(accept, func(t *testing.T) {
			mu.Lock()
			sent = nil
			mu.Unlock()
			resp, events := readEvents(t, base+"/rpc/jobs/7", accept)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != accept || resp.Header.Get("X-Accel-Buffering") != "no" {
				t.Fatalf("%d %v", resp.StatusCode, resp.Header)
			}
			if len(events) != 5 {
				t.Fatalf("%d events: %+v", len(events), events)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, ev := range events[:4] {
				if ev.Type != "reply" || ev.Seq != i+1 || ev.Final != (i == 3) || ev.Status != 200 {
					t.Errorf("event %d: %+v", i, ev)
				}
				if lag := ev.received.Sub(sent[i]); lag > 50*time.Millisecond {
					t.Errorf("event %d reached the client %s after it was published", i, lag)
				}
			}
			if end := events[4]; end.Type != "end" || end.Reason != "complete" || end.Replies != 4 || end.Reached == nil || *end.Reached != 1 {
				t.Errorf("closing event %+v", end)
			}
		})
	}
}

// Five responders, not shared, in Go, MQTT.js and Python paho: a gather
// gets all five well before its window on the embedded broker, which
// counts them, and at the window's end on mosquitto, which doesn't.
func TestGatherAcrossClients(t *testing.T) {
	t.Parallel()
	py := gatewaytest.PythonWithPaho(t)
	node := gatewaytest.NodeWithMQTT(t)
	const topic = "service/temperature/query"
	check := func(t *testing.T, base, brokerAddr string, wantFast bool) {
		host, port := hostPort(t, brokerAddr)
		startWatched(t, pythonCommand(py, pahoTemperatureResponder, host, port)).waitFor(t, subscribedLine, 10*time.Second)
		startWatched(t, exec.Command(node, mqttjsEchoResponder, "mqtt://"+brokerAddr, topic)).waitFor(t, subscribedLine, 10*time.Second)
		for range 3 {
			gatewaytest.StartResponder(t, "mqtt://"+brokerAddr, topic, 1, gatewaytest.Echo)
		}
		start := time.Now()
		r := gatewaytest.Post(t, base+"/rpc/"+topic+"?collect=2s", strings.NewReader("query:Vienna"), "Content-Type", "text/plain")
		took := time.Since(start)
		var replies []streamEvent
		if err := json.Unmarshal(r.Body, &replies); err != nil || r.Status != 200 || len(replies) != 5 {
			t.Fatalf("gather: %d %s %v", r.Status, r.Body, err)
		}
		var temps, echoes int
		for _, ev := range replies {
			switch ev.Payload {
			case "Temperature in Vienna: 22.5°C":
				temps++
			case "query:Vienna":
				echoes++
			}
		}
		if temps != 1 || echoes != 4 {
			t.Fatalf("replies %+v", replies)
		}
		switch {
		case wantFast && (took >= 2*time.Second || r.Header.Get("Gather-End") != "complete" || r.Header.Get("Gather-Reached") != "5"):
			t.Fatalf("embedded: took %s, Gather-End %q, Gather-Reached %q; want all five at once", took, r.Header.Get("Gather-End"), r.Header.Get("Gather-Reached"))
		case !wantFast && (took < 2*time.Second || r.Header.Get("Gather-End") != "window"):
			t.Fatalf("mosquitto: took %s, Gather-End %q; want the whole window", took, r.Header.Get("Gather-End"))
		}
	}
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		a, base := mustStart(t, testConfig(t))
		check(t, base, a.broker.Addr(), true)
	})
	t.Run("mosquitto", func(t *testing.T) {
		t.Parallel()
		m := gatewaytest.StartMosquitto(t)
		_, base := mustStart(t, testConfig(t, "--broker", m.URL()))
		check(t, base, m.Addr, false)
	})
}

// A client that hangs up mid-stream frees its request at once: nothing
// pending, goroutines back to where they were; the responder's later
// replies are counted as late. Not parallel: it counts the process's
// goroutines.
func TestStreamClientHangsUp(t *testing.T) {
	a, base := mustStart(t, testConfig(t))
	release := make(chan struct{})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	gatewaytest.StartStreamer(t, "mqtt://"+a.broker.Addr(), "jobs/+", 1, func(req *paho.Publish, send func(*paho.Publish)) {
		send(&paho.Publish{QoS: 1, Payload: []byte("accepted"), Properties: &paho.PublishProperties{
			User: paho.UserProperties{{Key: "progress", Value: "0%"}}}})
		<-release
		send(&paho.Publish{QoS: 1, Payload: []byte("50%"), Properties: &paho.PublishProperties{
			User: paho.UserProperties{{Key: "progress", Value: "50%"}}}})
		send(&paho.Publish{QoS: 1, Payload: []byte("done")})
	})
	// Before the responder's cleanup, which waits for its handler.
	t.Cleanup(letGo)
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond)
	baseline := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/rpc/jobs/9", nil)
	req.Header.Set("Accept", "text/event-stream")
	client := &http.Client{Transport: &http.Transport{}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "event: reply\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	if a.gw.Stats().Pending != 1 {
		t.Fatal("the stream is not pending")
	}
	cancel()
	resp.Body.Close()
	client.CloseIdleConnections()
	gatewaytest.Eventually(t, 5*time.Second, "the stream's entry freed", func() bool { return a.gw.Stats().Pending == 0 })
	late := a.gw.Stats().Late
	letGo()
	gatewaytest.Eventually(t, 5*time.Second, "the two later replies counted late", func() bool { return a.gw.Stats().Late == late+2 })
	// Now that the responder's handler is done too.
	gatewaytest.Eventually(t, 5*time.Second, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}
