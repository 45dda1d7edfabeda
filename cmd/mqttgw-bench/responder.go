package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// runResponder is the "responder" sub-mode: an MQTT v5 echo responder in
// its own process, so that its CPU is its own. It answers each request
// on the request's Response Topic with its Correlation Data, payload and
// Content Type, at the QoS the request was delivered at; with --silent it
// subscribes and never answers, so that requests stay pending.
func runResponder(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("responder", flag.ContinueOnError)
	fs.SetOutput(stderr)
	broker := fs.String("broker", "", "broker address: mqtt://host:port")
	topic := fs.String("topic", "bench/echo", "topic filter to answer requests on")
	qos := fs.Uint("qos", 1, "QoS of the subscription: the highest a request is delivered at")
	silent := fs.Bool("silent", false, "subscribe but never reply")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *broker == "" || *qos > 2 || fs.NArg() > 0 {
		return errors.New("usage: mqttgw-bench responder --broker mqtt://host:port [--topic T] [--qos 0|1|2] [--silent]")
	}

	r := &responder{silent: *silent, stderr: stderr, failed: make(chan error, 1)}
	// Replies still in flight when we stop are abandoned, not waited out.
	replyCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.ctx = replyCtx
	c, err := dialMQTT(ctx, *broker, "bench-responder", r.onPublish, r.fail)
	if err != nil {
		return err
	}
	defer func() {
		// Disconnect first: once paho's router has stopped, no new reply
		// goroutine can start while Wait runs.
		cancel()
		c.close()
		r.replies.Wait()
	}()
	if err := c.subscribe(ctx, *topic, byte(*qos)); err != nil {
		return err
	}
	fmt.Fprintln(stdout, readyPrefix)
	select {
	case <-ctx.Done():
		return nil
	case err := <-r.failed:
		return err
	case <-c.Done():
		return errors.New("connection closed")
	}
}

// responder answers requests; see runResponder.
type responder struct {
	silent     bool
	ctx        context.Context // of the replies
	stderr     io.Writer
	failed     chan error // the first connection error
	replies    sync.WaitGroup
	replyFails atomic.Int64
}

func (r *responder) fail(err error) {
	select {
	case r.failed <- err:
	default:
	}
}

// onPublish runs on paho's router goroutine, which acknowledges the
// request and takes the next one only when it returns.
func (r *responder) onPublish(pr paho.PublishReceived) (bool, error) {
	req := pr.Packet
	if r.silent || req.Properties == nil || req.Properties.ResponseTopic == "" {
		return true, nil
	}
	reply := &paho.Publish{
		Topic:   req.Properties.ResponseTopic,
		QoS:     req.QoS,
		Payload: req.Payload,
		Properties: &paho.PublishProperties{
			CorrelationData: req.Properties.CorrelationData,
			ContentType:     req.Properties.ContentType,
		},
	}
	if reply.QoS == 0 {
		// A QoS 0 publish is one write to the socket: inline, with no
		// goroutine to pay for.
		r.publish(pr.Client, reply)
		return true, nil
	}
	// A QoS 1 publish waits for its PUBACK, and for a free slot under the
	// broker's Receive Maximum: waiting here would stop this goroutine
	// from taking the very packets that free them.
	r.replies.Go(func() { r.publish(pr.Client, reply) })
	return true, nil
}

func (r *responder) publish(c *paho.Client, reply *paho.Publish) {
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, reply); err != nil && r.ctx.Err() == nil {
		// The first failure is worth a line; the requester's timeouts
		// count the rest.
		if r.replyFails.Add(1) == 1 {
			fmt.Fprintln(r.stderr, "responder: reply failed:", err)
		}
	}
}
