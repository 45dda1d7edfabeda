// Command mqttgw is an HTTP to MQTT v5 request/response gateway with an
// embedded broker. Run it with --help for its flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mqttgw/mqttgw/api"
	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/gateway"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tuneGC(os.Getenv)
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mqttgw:", err)
		os.Exit(1)
	}
}

// run is the whole program: it returns when ctx ends (a signal) and the
// gateway has shut down, or at once on a configuration or bind error.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck(ctx, args[1:], getenv, stdout)
	}
	cfg, err := parseConfig(args, getenv, stdout)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	a, err := start(ctx, cfg, newLogger(cfg, stderr))
	if err != nil {
		return err
	}
	return a.wait(ctx)
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// app is a started gateway: broker, RPC core and HTTP server.
type app struct {
	cfg      config
	log      *slog.Logger
	broker   *broker.Broker
	gw       *gateway.Gateway
	http     *http.Server
	httpAddr string
	served   chan error // Serve's result
	api      *api.Server
	auth     *api.Authenticator
	hup      chan os.Signal
}

// start binds every listener (so "address in use" is an error here, and
// ":0" resolves to a real port), then starts broker → gateway → HTTP. On
// error it undoes what it started, in reverse order.
func start(ctx context.Context, cfg config, log *slog.Logger) (_ *app, err error) {
	a := &app{cfg: cfg, log: log, served: make(chan error, 1)}
	raiseFileLimit(log)
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("http listener: %w", err)
	}
	closers = append(closers, func() { ln.Close() })
	a.httpAddr = ln.Addr().String()

	transport, err := a.transport(cfg, log, &closers)
	if err != nil {
		return nil, err
	}
	if err := a.startGateway(ctx, transport); err != nil {
		return nil, err
	}
	closers = append(closers, func() { a.gw.Close(context.Background()) })
	if err := a.newAPI(); err != nil {
		return nil, err
	}
	a.serve(ln)
	a.logStarted()
	return a, nil
}

// startGateway starts the RPC core on transport.
func (a *app) startGateway(ctx context.Context, transport gateway.Transport) error {
	gw, err := gateway.New(gateway.Config{
		ResponsePrefix: a.cfg.ResponsePrefix,
		InstanceID:     a.cfg.InstanceID,
		DefaultTimeout: a.cfg.API.DefaultTimeout,
		MaxReply:       a.cfg.MaxReply,
		ResultTTL:      a.cfg.API.ResultTTL,
		MaxRecords:     a.cfg.MaxRecords,
		MaxRecordBytes: a.cfg.MaxRecordBytes,
		SoleGateway:    a.broker != nil,
		LocalRecords:   a.broker != nil && a.cfg.MQTT.DataDir == "",
		Logger:         a.log.With("component", "gateway"),
	}, transport)
	if err != nil {
		return err
	}
	if err := gw.Start(ctx); err != nil {
		return err
	}
	a.gw = gw
	return nil
}

// newAPI builds the HTTP API with its metrics registry and, with
// --auth-file, its API keys.
func (a *app) newAPI() error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(a.gw.Collectors()...)
	if a.broker != nil {
		reg.MustRegister(a.broker.Collectors()...)
	}
	apiCfg := a.cfg.API
	apiCfg.ReservedPrefix = a.gw.ResponsePrefix()
	apiCfg.Registerer, apiCfg.Gatherer = reg, reg
	if a.cfg.AuthFile != "" {
		var err error
		if a.auth, err = api.NewAuthenticator(a.cfg.AuthFile); err != nil {
			return err
		}
		apiCfg.Auth = a.auth
	} else if ip := net.ParseIP(hostOf(a.httpAddr)); ip == nil || !ip.IsLoopback() {
		a.log.Warn("the HTTP API is open: anyone who can reach " + a.httpAddr + " may publish on any topic; set --auth-file, or listen on 127.0.0.1")
	}
	a.api = api.NewServer(a.log.With("component", "api"), readiness{a.gw, a.broker}, apiCfg)
	return nil
}

// serve starts the HTTP server on ln and listens for SIGHUP.
func (a *app) serve(ln net.Listener) {
	a.http = &http.Server{
		Handler: a.api,
		// Slow clients can't hold a connection by trickling headers, nor
		// by reading a response slowly; a reply itself may take up to
		// --max-timeout. Bodies have their own deadline in the handler.
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      a.cfg.API.MaxTimeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    a.cfg.MaxHeaderBytes,
		TLSConfig:         a.cfg.TLS,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	go func() {
		if a.cfg.TLS != nil {
			a.served <- a.http.ServeTLS(ln, "", "")
			return
		}
		a.served <- a.http.Serve(ln)
	}()
	a.hup = make(chan os.Signal, 1)
	signal.Notify(a.hup, syscall.SIGHUP)
}

func (a *app) logStarted() {
	attrs := []any{"http_addr", a.httpAddr, "response_topic", a.gw.ResponseTopic()}
	if a.broker != nil {
		attrs = append(attrs, "mqtt_addr", a.broker.Addr(), "ws_addr", a.broker.WSAddr(), "mqtt_tls_addr", a.broker.TLSAddr())
	} else {
		attrs = append(attrs, "broker", a.cfg.BrokerURL.Redacted())
	}
	a.log.Info("mqttgw started", attrs...)
}

// transport starts the embedded broker and returns its in-process
// transport, or dials the external broker.
func (a *app) transport(cfg config, log *slog.Logger, closers *[]func()) (gateway.Transport, error) {
	if cfg.BrokerURL != nil {
		return gateway.Dial(gateway.BrokerConfig{
			URL:       cfg.BrokerURL,
			ClientID:  "mqttgw-" + cfg.InstanceID,
			Username:  cfg.BrokerUsername,
			Password:  cfg.BrokerPassword,
			TLS:       cfg.BrokerTLS,
			KeepAlive: uint16(cfg.BrokerKeepAlive / time.Second),
			Logger:    log.With("component", "mqtt-client"),
		})
	}
	bc := cfg.MQTT
	bc.TLS, bc.ResponsePrefix = cfg.TLS, cfg.ResponsePrefix
	bc.Logger = log.With("component", "broker")
	b, err := broker.New(bc)
	if err != nil {
		return nil, err
	}
	*closers = append(*closers, func() { b.Close() })
	if err := b.Start(); err != nil {
		return nil, err
	}
	a.broker = b
	return b.Transport(), nil
}

// reload re-reads the auth and users files (SIGHUP). A broken file is
// logged and the previous one stays in force.
func (a *app) reload() {
	if a.auth != nil {
		if err := a.auth.Reload(); err != nil {
			a.log.Error("reloading --auth-file failed; the old keys stay in force", "error", err)
		} else {
			a.log.Info("reloaded --auth-file", "keys", a.auth.Keys().Len())
		}
	}
	if a.broker != nil && a.cfg.MQTT.UsersFile != "" {
		if err := a.broker.ReloadUsers(); err != nil {
			a.log.Error("reloading --mqtt-users-file failed; the old users stay in force", "error", err)
		} else {
			a.log.Info("reloaded --mqtt-users-file")
		}
	}
}

// readiness is ready when the gateway is and, with the embedded broker,
// while every MQTT listener still accepts connections.
type readiness struct {
	*gateway.Gateway
	broker *broker.Broker // nil with an external broker
}

func (r readiness) Ready() error {
	if err := r.Gateway.Ready(); err != nil {
		return err
	}
	if r.broker != nil {
		if err := r.broker.Ready(); err != nil {
			return fmt.Errorf("%w: %w", gateway.ErrNotConnected, err)
		}
	}
	return nil
}

func hostOf(addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	return host
}

// wait serves until ctx ends, then shuts down in reverse order of start:
// stop accepting and let in-flight requests finish within the grace
// period, fail the rest with 503, then disconnect and close the broker.
func (a *app) wait(ctx context.Context) error {
	defer signal.Stop(a.hup)
	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case serveErr = <-a.served:
			break wait
		case <-a.hup:
			a.reload()
		}
	}
	if d := a.cfg.ShutdownDelay; d > 0 && serveErr == nil {
		a.log.Info("draining: /readyz is 503 while requests are still served", "delay", d)
		a.api.Drain()
		time.Sleep(d)
	}
	a.log.Info("shutting down", "grace", a.cfg.ShutdownGrace)

	graceCtx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
	err := a.http.Shutdown(graceCtx)
	cancel()
	// Requests still waiting get ErrClosed (503) and their handlers return.
	_ = a.gw.Close(context.Background())
	if err != nil {
		a.log.Warn("grace period over; failed the requests still in flight")
		finishCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.http.Shutdown(finishCtx); err != nil {
			_ = a.http.Close()
		}
		cancel()
	}
	if a.broker != nil {
		_ = a.broker.Close()
	}
	a.log.Info("stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", serveErr)
	}
	return nil
}
