package gatewaytest

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// Handler turns a request into a reply, or returns nil to stay silent. The
// Responder sets the reply's topic and correlation data. Handlers run
// concurrently, one goroutine per request, so replies may go out in any
// order.
type Handler func(req *paho.Publish) *paho.Publish

// Echo replies with the request's payload, content type and user
// properties.
func Echo(req *paho.Publish) *paho.Publish {
	return &paho.Publish{
		QoS:     1,
		Payload: req.Payload,
		Properties: &paho.PublishProperties{
			ContentType: req.Properties.ContentType,
			User:        req.Properties.User,
		},
	}
}

// Responder is a paho client subscribed to a filter, answering requests.
type Responder struct {
	// cm is set once NewConnection returns; a request may arrive before
	// that, so it is read under the lock.
	cm      *autopaho.ConnectionManager // Lock should be held.
	handled atomic.Int64
	ctx     context.Context

	// publishing is read-locked while a reply is sent; see
	// OnConnectionDown.
	publishing sync.RWMutex

	mu       sync.Mutex
	stopped  bool           // Lock should be held.
	inflight sync.WaitGroup // Add only with the lock held and !stopped.
}

// Handled is the number of requests the responder has received.
func (r *Responder) Handled() int64 { return r.handled.Load() }

// StartResponder connects to the MQTT broker at serverURL (mqtt://host:port
// or ws://host:port/, with user:password@ to log in), subscribes to filter and answers each request with h. It returns once the
// subscription is acknowledged; the test's cleanup disconnects it.
func StartResponder(tb testing.TB, serverURL, filter string, qos byte, h Handler) *Responder {
	tb.Helper()
	return StartResponderWith(tb, serverURL, ClientOptions{}, filter, qos, h)
}

// StartResponderWith is StartResponder with o's credentials and TLS
// settings (for mqtts:// and wss://); credentials in serverURL win.
func StartResponderWith(tb testing.TB, serverURL string, o ClientOptions, filter string, qos byte, h Handler) *Responder {
	tb.Helper()
	return startResponder(tb, serverURL, o, filter, qos, func(r *Responder, req *paho.Publish) { r.send(req, h(req)) })
}

// Streamer answers a request with any number of replies, each through
// send (which sets its topic and correlation data and waits for its
// PUBACK), and returns when done.
type Streamer func(req *paho.Publish, send func(reply *paho.Publish))

// StartStreamer is StartResponder for a responder that sends many
// replies to one request (progress, then a final one).
func StartStreamer(tb testing.TB, serverURL, filter string, qos byte, h Streamer) *Responder {
	tb.Helper()
	return startResponder(tb, serverURL, ClientOptions{}, filter, qos, func(r *Responder, req *paho.Publish) {
		h(req, func(reply *paho.Publish) { r.send(req, reply) })
	})
}

func startResponder(tb testing.TB, serverURL string, o ClientOptions, filter string, qos byte, h func(*Responder, *paho.Publish)) *Responder {
	tb.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Responder{ctx: ctx}
	subscribed := make(chan error, 1)
	cc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                5 * time.Second,
		// Tests restart brokers: come back quickly.
		ReconnectBackoff: autopaho.NewConstantBackoff(100 * time.Millisecond),
		// Before reconnecting, wait for the replies being sent: paho.golang
		// v0.23.0 races a publish against the next connection's CONNACK
		// on their shared session state (eclipse-paho/paho.golang#341).
		OnConnectionDown: func() bool {
			r.publishing.Lock()
			//lint:ignore SA2001 empty on purpose: it waits for the replies in flight
			r.publishing.Unlock()
			return true
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			// OnConnectionUp must not block: subscribe elsewhere.
			go func() {
				sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
				if err == nil && len(sa.Reasons) == 1 && sa.Reasons[0] >= 0x80 {
					err = fmt.Errorf("subscribe %q refused: reason 0x%02x", filter, sa.Reasons[0])
				}
				select {
				case subscribed <- err:
				default:
				}
			}()
		},
		ClientConfig: paho.ClientConfig{
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					r.handled.Add(1)
					r.mu.Lock()
					defer r.mu.Unlock()
					if !r.stopped {
						r.inflight.Add(1)
						// paho reads the next packet only after this
						// returns: answer from another goroutine, with
						// the manager that received it.
						go r.answer(pr.Packet, h)
					}
					return true, nil
				},
			},
		},
	}
	cc.TlsCfg, cc.ClientConfig.ClientID = o.TLS, o.ClientID
	if o.User != "" {
		cc.ConnectUsername, cc.ConnectPassword = o.User, []byte(o.Password)
	}
	if u.User != nil { // mqtt://user:password@host:port
		pw, _ := u.User.Password()
		cc.ConnectUsername, cc.ConnectPassword = u.User.Username(), []byte(pw)
	}
	cm, err := autopaho.NewConnection(ctx, cc)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	r.mu.Lock()
	r.cm = cm
	r.mu.Unlock()
	tb.Cleanup(func() {
		r.mu.Lock()
		r.stopped = true
		r.mu.Unlock()
		r.inflight.Wait()
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_ = cm.Disconnect(dctx)
		cancel()
	})
	select {
	case err := <-subscribed:
		if err != nil {
			tb.Fatalf("responder on %q: %v", filter, err)
		}
	case <-time.After(10 * time.Second):
		tb.Fatalf("responder on %q: no SUBACK within 10s", filter)
	}
	return r
}

func (r *Responder) answer(req *paho.Publish, h func(*Responder, *paho.Publish)) {
	defer r.inflight.Done()
	h(r, req)
}

// send publishes reply to req's response topic, with req's correlation
// data unless it has its own.
func (r *Responder) send(req, reply *paho.Publish) {
	if reply == nil || req.Properties == nil || req.Properties.ResponseTopic == "" {
		return
	}
	reply.Topic = req.Properties.ResponseTopic
	if reply.Properties == nil {
		reply.Properties = &paho.PublishProperties{}
	}
	if reply.Properties.CorrelationData == nil {
		reply.Properties.CorrelationData = req.Properties.CorrelationData
	}
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	// The manager may not be known yet for a request that came in while
	// NewConnection was returning; wait for it.
	for {
		r.mu.Lock()
		cm := r.cm
		r.mu.Unlock()
		if cm != nil {
			r.publishing.RLock()
			_, _ = cm.Publish(ctx, reply)
			r.publishing.RUnlock()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Millisecond):
		}
	}
}
