// Command mqttgw-bench measures mqttgw against its baselines on one
// machine, with one load generator, in one run (issue 11): a bare HTTP
// echo server (a), native MQTT v5 request/response on mqttgw's embedded
// broker (b), mqttgw end to end on its embedded broker (c) and on an
// external mosquitto (d), at several concurrencies and both QoS levels;
// then (c)'s stack through POST /batch at batch sizes 1, 10 and 100 (e),
// (c)'s payload curve and mqttgw's memory per pending request.
//
// Every system under test runs in processes of its own (this binary in
// its responder and http-echo sub-modes, mqttgw, mosquitto), so that the
// CPU each spends per request can be read from /proc and told apart.
//
//	go run ./cmd/mqttgw-bench --quick   # a smoke run, about 20 s
//	go run ./cmd/mqttgw-bench           # everything, a few minutes
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

func main() {
	if os.Getenv("GOGC") == "" {
		// As mqttgw does (cmd/mqttgw/gc.go), for the same reason: the
		// load generator and the helpers keep little alive and make
		// garbage per request, so at GOGC=100 their collector would take
		// CPU from the systems under test, which share the cores. All
		// systems get the same helpers, so the comparison stays fair.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mqttgw-bench:", err)
		os.Exit(1)
	}
}

// run dispatches to a helper sub-mode or the bench itself.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "responder":
			return runResponder(ctx, args[1:], stdout, stderr)
		case "http-echo":
			return runHTTPEcho(ctx, args[1:], stdout, stderr)
		}
	}
	return runBench(ctx, args, stdout, stderr)
}
