package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for mqttgw-bench in its helper
// sub-modes: run() starts the helpers as os.Executable() with a sub-mode
// as the first argument, which in a test is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "responder" || os.Args[1] == "http-echo") {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the bench end to end, briefly: the HTTP echo
// baseline (a), mqttgw (c) and its POST /batch of 10 (e) at both QoS
// levels, then 1,000 pending requests, and checks the tables it prints.
func TestQuickRun(t *testing.T) {
	mqttgw := filepath.Join(t.TempDir(), "mqttgw")
	build := exec.Command("go", "build", "-o", mqttgw, "github.com/mqttgw/mqttgw/cmd/mqttgw")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/mqttgw: %v\n%s", err, out)
	}
	goroutines := runtime.NumGoroutine()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	args := []string{"--quick", "--only", "a,c,e", "--duration", "300ms", "--warmup", "200ms", "--mqttgw", mqttgw}
	start := time.Now()
	err := run(ctx, args, &stdout, &stderr)
	t.Logf("took %s; stdout:\n%s\nstderr:\n%s", time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	if err != nil {
		t.Fatal(err)
	}

	// Rows are "a http-echo  -  16  27,481  ..." and "c mqttgw  1  16  ...":
	// the system's two words, qos, concurrency, req/s.
	rows := map[string][]string{} // system letter → qos of each row
	for line := range strings.SplitSeq(stdout.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || (f[0] != "a" && f[0] != "c") || f[3] != "16" {
			continue
		}
		rps, err := strconv.Atoi(strings.ReplaceAll(f[4], ",", ""))
		if err != nil || rps <= 0 {
			t.Errorf("row %q: req/s %q is not a positive number", line, f[4])
		}
		rows[f[0]] = append(rows[f[0]], f[2])
	}
	if got := strings.Join(rows["a"], ","); got != "-" {
		t.Errorf("(a) rows by qos: %q, want one, \"-\"", got)
	}
	if got := strings.Join(rows["c"], ","); got != "0,1" {
		t.Errorf("(c) rows by qos: %q, want \"0,1\"", got)
	}
	// (e)'s rows are "10  0  16  12,560  1,256  ...": batch, qos,
	// concurrency, req/s, batch/s; its ratio rows "16  0  10  -  2.97".
	var batchRows, ratioRows []string // qos of each
	for _, section := range strings.Split(stdout.String(), "\n\n") {
		switch {
		case strings.HasPrefix(section, "(e) "):
			for line := range strings.SplitSeq(section, "\n") {
				f := strings.Fields(line)
				if len(f) < 5 || f[0] != "10" || f[2] != "16" {
					continue
				}
				for _, col := range f[3:5] {
					if n, err := strconv.Atoi(strings.ReplaceAll(col, ",", "")); err != nil || n <= 0 {
						t.Errorf("(e) row %q: %q is not a positive number", line, col)
					}
				}
				batchRows = append(batchRows, f[1])
			}
		case strings.HasPrefix(section, "Batch throughput ratios"):
			for line := range strings.SplitSeq(section, "\n") {
				f := strings.Fields(line)
				if len(f) != 5 || f[0] != "16" || f[2] != "10" {
					continue
				}
				// No (b) in this run: e/b is "-", e/c a number.
				if r, err := strconv.ParseFloat(f[4], 64); f[3] != "-" || err != nil || r <= 0 {
					t.Errorf("batch ratio row %q: want e/b \"-\" and e/c a positive number", line)
				}
				ratioRows = append(ratioRows, f[1])
			}
		}
	}
	if got := strings.Join(batchRows, ","); got != "0,1" {
		t.Errorf("(e) rows by qos: %q, want \"0,1\"", got)
	}
	if got := strings.Join(ratioRows, ","); got != "0,1" {
		t.Errorf("batch ratio rows by qos: %q, want \"0,1\"", got)
	}
	for _, want := range []string{"c/a", "1000  ", "yes, "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("no %q in the output", want)
		}
	}
	for _, unwanted := range []string{"b mqtt-native", "d mqttgw+mosquitto", "Payload curve", "FAILED"} {
		if strings.Contains(stdout.String(), unwanted) {
			t.Errorf("%q in the output", unwanted)
		}
	}

	// Every goroutine of the run has ended: load workers, paho's, the
	// HTTP clients' connections.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines left, %d before the run:\n%s", n, goroutines, buf[:runtime.Stack(buf, true)])
	}
}

func TestPercentile(t *testing.T) {
	lat := make([]time.Duration, 100)
	for i := range lat {
		lat[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {0.999, 100 * time.Millisecond}, {1, 100 * time.Millisecond}, {0.001, time.Millisecond}} {
		if got := percentile(lat, c.q); got != c.want {
			t.Errorf("percentile(1..100ms, %v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

// TestBatchCheck feeds (e)'s check answers to a batch of two: every
// request's line with its payload passes, anything else fails the call.
func TestBatchCheck(t *testing.T) {
	const ok0, ok1 = `{"index":0,"status":200,"payload":"abc"}`, `{"index":1,"status":200,"payload":"abc"}`
	for _, c := range []struct {
		answer string
		want   string // in the error; "" for none
	}{
		{ok1 + "\n" + ok0 + "\n", ""},
		{ok0 + "\n" + ok1, ""},
		{ok0 + "\n", "1 lines for a batch of 2"},
		{ok0 + "\n" + ok0 + "\n", "repeats index 0"},
		{ok0 + "\n" + `{"index":2,"status":200,"payload":"abc"}` + "\n", "no index"},
		{ok0 + "\n" + `{"status":200,"payload":"abc"}` + "\n", "no index"},
		{ok0 + "\n" + `{"index":1,"status":504,"problem":{"title":"Gateway Timeout","detail":"no reply within 10s"}}` + "\n", "batch item 1: status 504 Gateway Timeout: no reply within 10s"},
		{ok0 + "\n" + `{"index":1,"status":200,"payload":"abd"}` + "\n", "not the 3-byte payload"},
		{ok0 + "\n" + `{"index":1,"status":200,"payload":"YWJj","payload_encoding":"base64"}` + "\n", "not the 3-byte payload"},
		{ok0 + "\n" + `{"index":1,"status":200}` + "\n", "not the 3-byte payload"},
		{ok0 + "\nnot json\n", "no JSON result"},
	} {
		bt, err := newBatchTarget("http://127.0.0.1:1", echoTopic, 1, []byte("abc"), 2, 1, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		wk := &bt.workers[0]
		wk.answer.WriteString(c.answer)
		err = bt.check(wk)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("answer %q: %v, want no error", c.answer, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("answer %q: error %v, want one with %q", c.answer, err, c.want)
		}
		bt.close()
	}
}
