package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Systems under test, by the letters of issue 11.
const (
	sysEcho     = "a" // bare HTTP echo server
	sysNative   = "b" // native MQTT v5 request/response on mqttgw's embedded broker
	sysGateway  = "c" // mqttgw end to end on its embedded broker
	sysExternal = "d" // mqttgw on an external mosquitto
	sysBatch    = "e" // mqttgw's POST /batch on its embedded broker, as (c)
)

// systemNames label the systems in the tables.
var systemNames = map[string]string{
	sysEcho:     "a http-echo",
	sysNative:   "b mqtt-native",
	sysGateway:  "c mqttgw",
	sysExternal: "d mqttgw+mosquitto",
	sysBatch:    "e mqttgw /batch",
}

// config is the bench's flags.
type config struct {
	only           map[string]bool
	concurrency    []int
	qos            []int
	duration       time.Duration
	warmup         time.Duration
	deadline       time.Duration
	maxRequests    int64
	requestTimeout time.Duration
	payload        int
	payloads       []int // the payload curve's sizes
	payloadConc    int
	pending        []int // the memory test's numbers of pending requests
	skipPayload    bool
	skipMemory     bool
	batchSizes     []int // requests per POST /batch, one point each
	batchConc      []int // workers of the batch points
	skipBatch      bool
	jsonOut        bool
	mqttgw         string // a built mqttgw, or "" to build one
	mosquitto      string // mosquitto's path, or "" to look on PATH
	// mosquittoNoDelay sets mosquitto's set_tcp_nodelay: see
	// startMosquitto.
	mosquittoNoDelay bool
}

// errHelp is --help: usage was printed, nothing else to do.
var errHelp = errors.New("help requested")

func parseConfig(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("mqttgw-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: mqttgw-bench [flags]

Measures, in one run on this machine, a bare HTTP echo server (a), native
MQTT v5 request/response on mqttgw's embedded broker (b), mqttgw end to end
(c) and mqttgw on an external mosquitto (d), side by side; then (c)'s
stack through POST /batch at several batch sizes (e), (c)'s payload curve
and mqttgw's memory per pending request. Each system runs in processes of
its own, so that CPU per request is counted per process.

Sub-modes it runs itself in:
  mqttgw-bench responder --broker mqtt://host:port [--topic T] [--qos Q] [--silent]
  mqttgw-bench http-echo [--addr host:port]

Flags:
`)
		fs.PrintDefaults()
	}
	var (
		only        = fs.String("only", "a,b,c,d,e", "systems to measure, of a,b,c,d,e")
		concurrency = fs.String("concurrency", "1,16,64,256", "closed-loop workers, one point each")
		batchSizes  = fs.String("batch-sizes", "1,10,100", "requests per POST /batch of (e), one point each")
		qos         = fs.String("qos", "0,1", "request QoS levels, one point each")
		payloads    = fs.String("payloads", "32,1024,16384,65536", "payload sizes of (c)'s payload curve, in bytes")
		pending     = fs.String("pending", "1000,10000", "numbers of pending requests for the memory test")
		quick       = fs.Bool("quick", false, "quick run: concurrency 16, 1s per point, batches of 10 only, no payload curve, 1,000 pending only (flags given explicitly win)")
		cfg         config
		// (e) at fewer concurrencies than the others by default: at all
		// four, its 24 points would add over a minute and a half to a
		// full run. Any concurrency given explicitly applies to it too.
		batchConc = fs.String("batch-concurrency", "16,64", "closed-loop workers of (e), one point each (default: --concurrency's, when that is given)")
	)
	fs.DurationVar(&cfg.duration, "duration", 3*time.Second, "measured window of each point")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "load before each point's window, not measured")
	fs.DurationVar(&cfg.deadline, "deadline", 15*time.Minute, "the whole run's limit")
	fs.Int64Var(&cfg.maxRequests, "max-requests", 10_000_000, "most requests one point may start, warmup included")
	fs.DurationVar(&cfg.requestTimeout, "request-timeout", 10*time.Second, "a request with no reply within this fails")
	fs.IntVar(&cfg.payload, "payload", 32, "request body size in bytes")
	fs.IntVar(&cfg.payloadConc, "payload-concurrency", 64, "workers of the payload curve (at QoS 1)")
	fs.BoolVar(&cfg.skipPayload, "skip-payload", false, "skip (c)'s payload curve")
	fs.BoolVar(&cfg.skipMemory, "skip-memory", false, "skip the memory test of pending requests")
	fs.BoolVar(&cfg.skipBatch, "skip-batch", false, "skip (e), POST /batch")
	fs.BoolVar(&cfg.jsonOut, "json", false, "print the results as JSON instead of tables")
	fs.StringVar(&cfg.mqttgw, "mqttgw", "", "mqttgw binary to run (default: go build ./cmd/mqttgw into a temporary directory)")
	fs.StringVar(&cfg.mosquitto, "mosquitto", "", "mosquitto binary for (d) (default: mosquitto on PATH; (d) is skipped without one)")
	fs.BoolVar(&cfg.mosquittoNoDelay, "mosquitto-nodelay", true, "run mosquitto with set_tcp_nodelay true (its default, false, stalls QoS 1 on delayed ACKs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, errHelp
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		// A smoke run: every part that --only selects, once, briefly.
		defaults := map[string]func(){
			"concurrency":  func() { *concurrency = "16" },
			"duration":     func() { cfg.duration = time.Second },
			"warmup":       func() { cfg.warmup = 500 * time.Millisecond },
			"skip-payload": func() { cfg.skipPayload = true },
			"pending":      func() { *pending = "1000" },
			"batch-sizes":  func() { *batchSizes = "10" },
		}
		for name, apply := range defaults {
			if !set[name] {
				apply()
			}
		}
	}
	if !set["batch-concurrency"] && (set["concurrency"] || *quick) {
		*batchConc = *concurrency
	}

	cfg.only = map[string]bool{}
	for s := range strings.SplitSeq(*only, ",") {
		s = strings.TrimSpace(s)
		if systemNames[s] == "" {
			return cfg, fmt.Errorf("--only: %q is none of a,b,c,d,e", s)
		}
		cfg.only[s] = true
	}
	var err error
	if cfg.concurrency, err = intList("concurrency", *concurrency, 1, 100_000); err != nil {
		return cfg, err
	}
	if cfg.qos, err = intList("qos", *qos, 0, 1); err != nil {
		return cfg, err
	}
	if cfg.payloads, err = intList("payloads", *payloads, 0, 1<<20); err != nil {
		return cfg, err
	}
	if cfg.pending, err = intList("pending", *pending, 1, 20_000); err != nil {
		return cfg, err
	}
	// mqttgw's default --max-batch is the most one batch may carry.
	if cfg.batchSizes, err = intList("batch-sizes", *batchSizes, 1, 1000); err != nil {
		return cfg, err
	}
	if cfg.batchConc, err = intList("batch-concurrency", *batchConc, 1, 100_000); err != nil {
		return cfg, err
	}
	switch {
	case cfg.duration <= 0 || cfg.warmup < 0 || cfg.deadline <= 0 || cfg.requestTimeout <= 0:
		return cfg, errors.New("--duration, --deadline and --request-timeout must be positive, --warmup not negative")
	case cfg.payload < 0 || cfg.payload > 1<<20:
		return cfg, errors.New("--payload must be 0 to 1MiB (mqttgw's default --max-body)")
	case cfg.payloadConc < 1 || cfg.maxRequests < 1:
		return cfg, errors.New("--payload-concurrency and --max-requests must be positive")
	}
	return cfg, nil
}

// intList parses a comma-separated list of integers in [lo, hi].
func intList(flagName, s string, lo, hi int) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("--%s: %q is not a number from %d to %d", flagName, f, lo, hi)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}
