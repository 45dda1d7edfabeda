package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// wsListener serves MQTT over WebSocket [MQTT-6.0]. It replaces mochi's
// own WebSocket listener, which binds only inside Serve: an address in use
// would be a log line instead of an error, and ":0" could not be resolved
// to the bound port.
type wsListener struct {
	// Its dead is set if Serve stops without Close (net/http retries
	// accept errors such as EMFILE itself).
	listenerBase
	tls *tls.Config // nil: plain ws
	// handshakeTimeout bounds the TLS handshake and the upgrade request,
	// as the TCP listeners bound theirs.
	handshakeTimeout time.Duration
	srv              *http.Server

	mu        sync.Mutex
	establish listeners.EstablishFn // Lock should be held.
	closed    bool                  // Lock should be held.
}

var _ listeners.Listener = (*wsListener)(nil)

// newWSListener returns a WebSocket listener; with tc it serves secure
// WebSockets (wss).
func newWSListener(id, address string, tc *tls.Config, handshakeTimeout time.Duration) *wsListener {
	return &wsListener{listenerBase: listenerBase{id: id, address: address}, tls: tc, handshakeTimeout: handshakeTimeout}
}

func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}

func (l *wsListener) Init(log *slog.Logger) error {
	if err := l.bind(log); err != nil {
		return err
	}
	if l.tls != nil {
		// TLS under HTTP, as http.Server.ServeTLS would do; that one
		// binds nothing itself but wants certificate files.
		l.ln = tls.NewListener(l.ln, l.tls)
	}
	l.srv = &http.Server{
		Handler: http.HandlerFunc(l.serveHTTP),
		// net/http bounds the TLS handshake by this too.
		ReadHeaderTimeout: l.handshakeTimeout,
		// TLS handshake errors and the like go to the broker's log, in
		// its format, rather than to stderr as plain text.
		ErrorLog: slog.NewLogLogger(log.With("listener", l.id).Handler(), slog.LevelWarn),
	}
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	l.establish = establish
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return
	}
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.die(err)
	}
}

func (l *wsListener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{"mqtt"}, // [MQTT-6.0.0-3]
		// MQTT clients are not browsers carrying cookies; origin checks
		// would only turn away browser-based MQTT clients.
		InsecureSkipVerify: true,
	})
	if err != nil {
		return // Accept has already written the HTTP error
	}
	// The request context ends when the server shuts down or the client
	// goes away, which ends the connection with it.
	conn := websocket.NetConn(r.Context(), c, websocket.MessageBinary)
	defer conn.Close()

	l.mu.Lock()
	establish := l.establish
	l.mu.Unlock()
	if err := establish(l.id, conn); err != nil {
		l.log.Debug("websocket client ended", "error", err, "listener", l.id)
	}
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	// Disconnect the clients first: Shutdown waits for handlers to return,
	// and each handler returns when its client is gone.
	closeClients(l.id)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.srv.Shutdown(ctx); err != nil {
		_ = l.srv.Close()
	}
	// Shutdown only closes listeners that Serve was given; Close may come
	// before Serve when another listener failed to bind.
	_ = l.ln.Close()
}
