// Command temperature-service is the reference MQTT v5 responder: the Go
// twin of the Python temperature service in the request/response guide.
// It subscribes to a request topic and answers each "query:<City>" on the
// request's Response Topic, echoing its Correlation Data, so that
//
//	curl -X POST localhost:8080/rpc/service/temperature/query -d query:Vienna
//
// through mqttgw prints "Temperature in Vienna: 22.5°C".
//
// A payload that is not a query gets a reply with the user property
// http-status=400, which mqttgw turns into the HTTP status.
package main

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "temperature-service:", err)
		os.Exit(1)
	}
}

// temperatures is the reference service's table; other cities get a
// random temperature, as there.
var temperatures = map[string]float64{
	"Vienna": 22.5,
	"Berlin": 18.3,
	"London": 15.8,
	"Paris":  20.1,
}

const (
	queryPrefix  = "query:"
	contentType  = "text/plain"
	statusProp   = "http-status" // mqttgw's user property for the HTTP status
	replyTimeout = 5 * time.Second
	// Bounds the wait for a SUBACK, so that a subscribe stuck on a dying
	// connection cannot hold up shutdown.
	subscribeTimeout  = 10 * time.Second
	disconnectTimeout = 5 * time.Second
)

// run is the whole program: it returns nil when ctx ends and the service
// has disconnected, or an error at once for bad flags.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("temperature-service", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help is printed below
	brokerURL := fs.String("broker", "mqtt://127.0.0.1:1883", "MQTT v5 broker URL (mqtt://, tls://, ws:// or wss://)")
	topic := fs.String("topic", "service/temperature/query", "topic filter to answer requests on")
	qos := fs.Uint("qos", 1, "QoS of the subscription and the replies: 0, 1 or 2")
	delay := fs.Duration("delay", 0, "wait this long before each reply, to see the gateway's timeouts (504)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// Asked for, so not an error: stdout, exit status 0.
			fmt.Fprintln(stdout, "Usage: temperature-service [flags]")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return nil
		}
		return fmt.Errorf("%w (see --help)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *qos > 2 {
		return fmt.Errorf("--qos must be 0, 1 or 2, not %d", *qos)
	}
	if *topic == "" {
		return errors.New("--topic must not be empty")
	}
	u, err := url.Parse(*brokerURL)
	if err != nil {
		return fmt.Errorf("--broker: %w", err)
	}
	if u.Host == "" {
		return fmt.Errorf("--broker %q: want a URL such as mqtt://host:1883", *brokerURL)
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	s := &service{log: log, topic: *topic, qos: byte(*qos), delay: *delay}
	return s.serve(ctx, u)
}

// service answers temperature queries over one autopaho connection.
type service struct {
	log   *slog.Logger
	topic string
	qos   byte
	delay time.Duration
	cm    *autopaho.ConnectionManager
	// stopping is closed at the signal; a delayed reply is given up then.
	stopping <-chan struct{}
	// ready is closed once cm is set: a request can arrive before
	// NewConnection has returned it.
	ready chan struct{}
	// connCtx outlives the caller's ctx, so that replies in flight at a
	// signal can still go out before the clean DISCONNECT.
	connCtx context.Context
	tasks   tasks
}

func (s *service) serve(ctx context.Context, u *url.URL) error {
	connCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	s.connCtx = connCtx
	s.stopping = ctx.Done()
	s.ready = make(chan struct{})

	s.log.Info("temperature service starting", "broker", u.Redacted(), "topic", s.topic, "qos", s.qos)
	clientID := "temperature-service-" + crand.Text()[:8]
	cm, err := autopaho.NewConnection(connCtx, autopaho.ClientConfig{
		ServerUrls: []*url.URL{u},
		KeepAlive:  30,
		// Requests sent while we were away are stale by now (the requester
		// has timed out), so never resume an old session.
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         0,
		ReconnectBackoff:              autopaho.NewConstantBackoff(time.Second),
		ConnectTimeout:                5 * time.Second,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			s.log.Info("connected", "broker", u.Redacted(), "client_id", clientID)
			// With no session kept, every connection needs a fresh
			// subscription; and this callback must not block on the SUBACK.
			s.tasks.Go(func() { s.subscribe(cm) })
		},
		OnConnectionDown: func() bool {
			s.log.Warn("connection lost; reconnecting")
			return true
		},
		OnConnectError: func(err error) {
			s.log.Warn("connect failed; retrying", "broker", u.Redacted(), "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: clientID,
			// Set here rather than with AddOnPublishReceived, which a
			// reconnect forgets.
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){s.onPublish},
			OnClientError: func(err error) {
				s.log.Warn("client error", "err", err)
			},
			OnServerDisconnect: func(d *paho.Disconnect) {
				s.log.Warn("broker disconnected us", "reason_code", d.ReasonCode)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("mqtt: %w", err)
	}
	s.cm = cm
	close(s.ready)

	<-ctx.Done()
	s.log.Info("shutting down")
	// Replies first, while the connection is still up; each is bounded
	// by replyTimeout.
	s.tasks.Close()
	dctx, dcancel := context.WithTimeout(context.Background(), disconnectTimeout)
	defer dcancel()
	if err := cm.Disconnect(dctx); err != nil {
		s.log.Warn("disconnect did not finish", "err", err)
	}
	s.log.Info("stopped")
	return nil
}

func (s *service) subscribe(cm *autopaho.ConnectionManager) {
	ctx, cancel := context.WithTimeout(s.connCtx, subscribeTimeout)
	defer cancel()
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{
		Subscriptions: []paho.SubscribeOptions{{Topic: s.topic, QoS: s.qos}},
	})
	if err != nil {
		// The connection went down; the next OnConnectionUp subscribes again.
		s.log.Warn("subscribe failed", "topic", s.topic, "err", err)
		return
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		s.log.Error("subscription refused", "topic", s.topic, "reasons", sa.Reasons)
		return
	}
	s.log.Info("subscribed", "topic", s.topic, "granted_qos", sa.Reasons[0])
}

// onPublish runs on paho's reading goroutine, which acknowledges the
// request and reads the next packet only once this returns: publishing the
// reply from here would stall the connection.
func (s *service) onPublish(pr paho.PublishReceived) (bool, error) {
	req := pr.Packet
	if !s.tasks.Go(func() { s.answer(req) }) {
		s.log.Warn("shutting down; request not answered", "topic", req.Topic)
	}
	return true, nil
}

func (s *service) answer(req *paho.Publish) {
	var respTopic string
	var corr []byte
	if req.Properties != nil {
		respTopic = req.Properties.ResponseTopic
		corr = req.Properties.CorrelationData
	}
	if respTopic == "" {
		s.log.Warn("request without a Response Topic; nowhere to reply", "topic", req.Topic)
		return
	}

	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-s.stopping:
			return
		}
	}
	body, status := reply(string(req.Payload))
	props := &paho.PublishProperties{
		ContentType:     contentType,
		CorrelationData: corr,
	}
	if status != "" {
		props.User = paho.UserProperties{{Key: statusProp, Value: status}}
	}
	ctx, cancel := context.WithTimeout(s.connCtx, replyTimeout)
	defer cancel()
	select {
	case <-s.ready:
	case <-ctx.Done():
		return
	}
	_, err := s.cm.Publish(ctx, &paho.Publish{
		Topic:      respTopic,
		QoS:        s.qos,
		Payload:    []byte(body),
		Properties: props,
	})
	if err != nil {
		s.log.Warn("reply failed", "response_topic", respTopic, "err", err)
		return
	}
	s.log.Info("answered", "request", string(req.Payload), "response_topic", respTopic, "status", cmp.Or(status, "200"))
}

// reply is the answer to payload, and its HTTP status when not 200.
func reply(payload string) (body, status string) {
	city, ok := strings.CutPrefix(payload, queryPrefix)
	if !ok || city == "" {
		return fmt.Sprintf("bad request: want a payload %q, such as %q", queryPrefix+"<City>", queryPrefix+"Vienna"), "400"
	}
	t, ok := temperatures[city]
	if !ok {
		t = 10 + 20*rand.Float64()
	}
	return fmt.Sprintf("Temperature in %s: %.1f°C", city, t), ""
}

// tasks runs goroutines that Close waits for. Once closed it refuses new
// ones, because WaitGroup.Add must not race with a Wait at zero.
type tasks struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// Go runs f in a goroutine and reports whether it did.
func (t *tasks) Go(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Go(f)
	return true
}

// Close refuses new tasks and waits for the running ones.
func (t *tasks) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}
