package gatewaytest

import (
	"context"
	"crypto/tls"
	"net/url"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// ClientOptions are the credentials and TLS settings of a test client.
type ClientOptions struct {
	User, Password string
	ClientID       string // "" lets the broker assign one
	TLS            *tls.Config
}

// Dial connects a paho client to serverURL (mqtt://, mqtts://, ws:// or
// wss://) as o says and waits for the connection, 5s at most; onMessage,
// if set, sees every publish it receives. The test's cleanup disconnects
// it.
func Dial(tb testing.TB, serverURL string, o ClientOptions, onMessage func(*paho.Publish)) *autopaho.ConnectionManager {
	tb.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cm, err := autopaho.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls: []*url.URL{u}, KeepAlive: 30, CleanStartOnInitialConnection: true,
		ConnectUsername: o.User, ConnectPassword: []byte(o.Password), TlsCfg: o.TLS,
		ClientConfig: paho.ClientConfig{ClientID: o.ClientID, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				if onMessage != nil {
					onMessage(pr.Packet)
				}
				return true, nil
			},
		}},
	})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_ = cm.Disconnect(dctx)
		cancel()
	})
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	if err := cm.AwaitConnection(actx); err != nil {
		tb.Fatal(err)
	}
	return cm
}

// Subscribe subscribes cm to filter at qos and returns the SUBACK's
// reason code.
func Subscribe(tb testing.TB, cm *autopaho.ConnectionManager, filter string, qos byte) byte {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil && sa == nil {
		tb.Fatal(err)
	}
	return sa.Reasons[0]
}
