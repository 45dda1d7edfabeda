package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// MQTT v5 reason codes the external transport interprets.
const (
	reasonNoMatchingSubscribers = 0x10 // [MQTT-3.4.2.1] PUBACK/PUBREC
	reasonQoSNotSupported       = 0x9B
)

// DefaultBrokerKeepAlive is the keep-alive, in seconds, of the connection
// to an external broker: short enough that a broker that stops answering
// is noticed in seconds, well under request timeouts, for one small
// PINGREQ per idle interval.
const DefaultBrokerKeepAlive = 5

// CheckBrokerURL reports why u can't name an external broker, or nil: it
// needs a host and one of the schemes mqtt, mqtts, ws or wss, and no
// credentials (the URL is logged, redacted, on every retry, and autopaho
// would not log in with them anyway; see BrokerConfig.Username). The
// error never shows a password.
func CheckBrokerURL(u *url.URL) error {
	switch {
	case u == nil || u.Host == "":
		return errors.New("the broker URL needs a host, e.g. mqtt://broker:1883")
	case u.Scheme != "mqtt" && u.Scheme != "mqtts" && u.Scheme != "ws" && u.Scheme != "wss":
		return fmt.Errorf("the broker URL scheme %q is not mqtt, mqtts, ws or wss", u.Scheme)
	case u.User != nil:
		return errors.New("the broker URL must not carry credentials")
	}
	return nil
}

// BrokerConfig configures the transport to an external MQTT v5 broker.
type BrokerConfig struct {
	// URL is mqtt://, mqtts://, ws:// or wss://host:port[/path].
	URL *url.URL
	// ClientID must be unique on the broker; two clients with one id
	// disconnect each other.
	ClientID string
	Username string
	Password string
	// TLS is used for mqtts:// and wss://; nil means the system roots.
	TLS *tls.Config
	// KeepAlive in seconds; default 5. paho's pinger sends a PINGREQ after
	// a keep-alive without traffic both ways and gives up on the
	// connection when no PINGRESP has come one keep-alive later, so a
	// broker that stops answering (frozen, or a half-open link) is noticed
	// within two keep-alives, and requests in flight fail with it.
	KeepAlive uint16
	// ConnectTimeout bounds each connection attempt; default 10s.
	ConnectTimeout time.Duration
	// MinBackoff and MaxBackoff bound the exponential wait between
	// reconnection attempts; defaults 250ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// Dial returns a Transport to an external MQTT v5 broker built on
// autopaho: it reconnects with exponential backoff and re-makes the
// response subscription on every connection. The connection is made in
// the background once the gateway calls Connect.
func Dial(cfg BrokerConfig) (Transport, error) {
	if err := CheckBrokerURL(cfg.URL); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("gateway: broker client id is empty")
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultBrokerKeepAlive
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff <= cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, 2*cfg.MinBackoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &pahoTransport{cfg: cfg, log: cfg.Logger}, nil
}

// pahoTransport is the Transport to an external broker.
type pahoTransport struct {
	cfg BrokerConfig
	log *slog.Logger

	mu sync.Mutex
	cm *autopaho.ConnectionManager // Lock should be held.
	// epoch counts connection changes, so that a SUBACK for a connection
	// that has meanwhile dropped can't mark the gateway ready. Lock
	// should be held.
	epoch  uint64
	closed bool // Lock should be held.
	cancel context.CancelFunc
	// wg counts the subscribe goroutines; Add only with the lock held
	// and !closed.
	wg sync.WaitGroup
	// maxPacket is the broker's Maximum Packet Size from its CONNACK, 0
	// for none. Lock should be held.
	maxPacket uint32
	// publishing is read-locked by every Publish, and write-locked once
	// by OnConnectionDown, which autopaho calls before it reconnects:
	// paho.golang v0.23.0 races a publish still in AddToSession against
	// the next connection's ConAckReceived on the session state they
	// share (eclipse-paho/paho.golang#341, #343; fixed after v0.23.0).
	// OnConnectionDown first ends the publishes of the lost connection
	// (connDown), which would otherwise wait for their context; those
	// that begin after it fail at once (autopaho has no client then).
	publishing sync.RWMutex
	// conn ends when the current connection is lost; nil while there is
	// none. Lock should be held.
	conn     context.Context
	connLost context.CancelFunc
}

func (t *pahoTransport) Connect(_ context.Context, filters []string, h Handler) error {
	// The connection manager lives until Close, not until the caller's
	// start-up context ends.
	ctx, cancel := context.WithCancel(context.Background())
	backoff := autopaho.NewExponentialBackoff(t.cfg.MinBackoff, t.cfg.MaxBackoff, t.cfg.MinBackoff, 2)
	cc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{t.cfg.URL},
		TlsCfg:                        t.cfg.TLS,
		KeepAlive:                     t.cfg.KeepAlive,
		ConnectTimeout:                t.cfg.ConnectTimeout,
		ReconnectBackoff:              backoff,
		CleanStartOnInitialConnection: true,
		// The gateway keeps no session: requests in flight are failed
		// when the connection drops, and the subscription is re-made.
		SessionExpiryInterval: 0,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ack *paho.Connack) {
			t.mu.Lock()
			defer t.mu.Unlock()
			if t.closed {
				return
			}
			t.epoch++
			epoch := t.epoch
			t.conn, t.connLost = context.WithCancel(context.Background())
			t.maxPacket = 0
			if ack != nil && ack.Properties != nil && ack.Properties.MaximumPacketSize != nil {
				t.maxPacket = *ack.Properties.MaximumPacketSize
			}
			// OnConnectionUp must not block: subscribe in the background,
			// counted so that Close can wait for it.
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				t.subscribe(ctx, cm, epoch, filters, h)
			}()
		},
		OnConnectionDown: func() bool {
			t.mu.Lock()
			t.epoch++
			closed := t.closed
			if t.connLost != nil {
				t.connLost()
				t.conn, t.connLost = nil, nil
			}
			t.mu.Unlock()
			if !closed {
				// Why is logged by OnClientError or OnServerDisconnect;
				// autopaho calls them in goroutines of their own.
				h.ConnectionDown(errors.New("connection to the broker lost"))
			}
			t.publishing.Lock()
			//lint:ignore SA2001 empty on purpose: it waits for the publishes in flight
			t.publishing.Unlock()
			return true // keep reconnecting
		},
		OnConnectError: func(err error) {
			t.log.Warn("broker connection attempt failed", "broker", t.cfg.URL.Redacted(), "error", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: t.cfg.ClientID,
			// Registered here, not with AddOnPublishReceived, so that it
			// survives reconnects. It runs on paho's reading goroutine and
			// must not block; HandleReply never does.
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					h.HandleReply(fromPaho(pr.Packet))
					return true, nil
				},
			},
			OnClientError: func(err error) {
				if errors.Is(err, io.EOF) {
					// Brokers that don't send DISCONNECT (mosquitto 2.0)
					// also just close when a client takes the id over.
					err = fmt.Errorf("the broker closed the connection without a DISCONNECT (is another client using client id %s?): %w", t.cfg.ClientID, err)
				}
				t.log.Warn("broker connection failed", "error", err)
			},
			OnServerDisconnect: func(d *paho.Disconnect) {
				// Say why: 0x8E means another client connected with
				// this gateway's client id (see the README on ACLs).
				attrs := []any{"reason_code", fmt.Sprintf("0x%02X", d.ReasonCode), "reason", d.Packet().Reason()}
				if d.Properties != nil && d.Properties.ReasonString != "" {
					attrs = append(attrs, "reason_string", d.Properties.ReasonString)
				}
				t.log.Warn("broker disconnected the gateway", attrs...)
			},
		},
	}
	if t.cfg.Username != "" {
		cc.ConnectUsername = t.cfg.Username
		cc.ConnectPassword = []byte(t.cfg.Password)
	}
	cm, err := autopaho.NewConnection(ctx, cc)
	if err != nil {
		cancel()
		return fmt.Errorf("gateway: %w", err)
	}
	t.mu.Lock()
	t.cm, t.cancel = cm, cancel
	t.mu.Unlock()
	return nil
}

// subscribe makes the response subscriptions for connection epoch and
// reports the gateway ready once the broker has granted them all.
func (t *pahoTransport) subscribe(ctx context.Context, cm *autopaho.ConnectionManager, epoch uint64, filters []string, h Handler) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.ConnectTimeout)
	defer cancel()
	subs := make([]paho.SubscribeOptions, len(filters))
	for i, f := range filters {
		// NoLocal: the gateway's own publishes (its records) are applied
		// when written; the broker need not send them back. Shared
		// subscriptions can't have it [MQTT-3.8.3-4].
		subs[i] = paho.SubscribeOptions{Topic: f, QoS: 1, NoLocal: !IsSharedFilter(f)}
	}
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if sa != nil {
		// paho returns the SUBACK with its error; name the filter.
		for i, code := range sa.Reasons {
			if code >= 0x80 && i < len(filters) {
				err = fmt.Errorf("reason code 0x%02x for %s", code, filters[i])
				break
			}
		}
	}
	if err != nil {
		// Readiness stays 503; the broker's refusal is an operator's
		// problem (typically an ACL) that a retry won't fix.
		t.log.Error("response subscription refused; the gateway stays unready", "filters", filters, "error", err)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.epoch == epoch && !t.closed {
		h.ConnectionUp()
	}
}

func (t *pahoTransport) Publish(ctx context.Context, m *Message) error {
	t.publishing.RLock()
	defer t.publishing.RUnlock()
	t.mu.Lock()
	cm, maxPacket, conn := t.cm, t.maxPacket, t.conn
	t.mu.Unlock()
	if cm == nil || conn == nil {
		return ErrNotConnected
	}
	// The publish ends with its connection (see publishing).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(conn, cancel)()
	// paho does not enforce the broker's limit, and a broker that gets a
	// larger packet drops the connection [MQTT-3.1.2-24]: every request
	// in flight would fail with this one.
	if size := packetSize(m); maxPacket > 0 && size > int(maxPacket) {
		return fmt.Errorf("%w: the PUBLISH would be about %d bytes; the broker accepts at most %d", ErrTooLarge, size, maxPacket)
	}
	props := &paho.PublishProperties{
		ContentType:     m.ContentType,
		ResponseTopic:   m.ResponseTopic,
		CorrelationData: m.CorrelationData,
		User:            toPaho(m.UserProperties),
	}
	if m.MessageExpiry > 0 {
		props.MessageExpiry = &m.MessageExpiry
	}
	pr, err := cm.Publish(ctx, &paho.Publish{Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Payload: m.Payload, Properties: props})
	switch {
	case pr != nil && pr.ReasonCode == reasonNoMatchingSubscribers:
		// Only a QoS 1 PUBACK (or a QoS 2 PUBREC from brokers that set
		// it) can say so; at QoS 0 the request can only time out.
		return ErrNoResponders
	case pr != nil && pr.ReasonCode >= 0x80:
		perr := &PublishError{ReasonCode: pr.ReasonCode}
		if pr.Properties != nil {
			perr.Reason = pr.Properties.ReasonString
		}
		return perr
	case err == nil:
		return nil
	case conn.Err() != nil && err != nil:
		return fmt.Errorf("%w: the connection was lost before the broker acknowledged the publish", ErrNotConnected)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, paho.ErrInvalidArguments):
		// e.g. a QoS above what the broker granted in its CONNACK
		return &PublishError{ReasonCode: reasonQoSNotSupported, Reason: err.Error()}
	}
	return fmt.Errorf("%w: %v", ErrNotConnected, err)
}

// Close disconnects, then waits for the connection manager and for every
// goroutine the transport started, so that none outlives it.
func (t *pahoTransport) Close(ctx context.Context) error {
	t.mu.Lock()
	t.closed = true
	cm, cancel := t.cm, t.cancel
	t.mu.Unlock()
	if cm == nil {
		t.wg.Wait()
		return nil
	}
	err := cm.Disconnect(ctx)
	cancel()
	select {
	case <-cm.Done():
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	t.wg.Wait()
	return err
}

// packetSize is an upper bound of m's PUBLISH packet size: fixed header,
// topic, packet id, properties with their ids and length prefixes.
func packetSize(m *Message) int {
	n := 5 + 2 + len(m.Topic) + 2 + 4 + len(m.Payload) +
		3 + len(m.ContentType) + 3 + len(m.ResponseTopic) + 3 + len(m.CorrelationData) + 5
	for _, p := range m.UserProperties {
		n += 5 + len(p.Key) + len(p.Value)
	}
	return n
}

func toPaho(props []UserProperty) paho.UserProperties {
	if len(props) == 0 {
		return nil
	}
	out := make(paho.UserProperties, len(props))
	for i, p := range props {
		out[i] = paho.UserProperty{Key: p.Key, Value: p.Value}
	}
	return out
}

func fromPaho(p *paho.Publish) *Message {
	m := &Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS}
	if pp := p.Properties; pp != nil {
		m.ContentType = pp.ContentType
		m.ResponseTopic = pp.ResponseTopic
		m.CorrelationData = pp.CorrelationData
		if pp.MessageExpiry != nil {
			m.MessageExpiry = *pp.MessageExpiry
		}
		if len(pp.User) > 0 {
			m.UserProperties = make([]UserProperty, len(pp.User))
			for i, u := range pp.User {
				m.UserProperties[i] = UserProperty{Key: u.Key, Value: u.Value}
			}
		}
	}
	return m
}
