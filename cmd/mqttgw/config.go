package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/mqttgw/mqttgw/api"
	"github.com/mqttgw/mqttgw/broker"
	"github.com/mqttgw/mqttgw/gateway"
)

// config is everything the command line and MQTTGW_* variables set.
type config struct {
	HTTPAddr string
	Broker   string
	// BrokerURL is the external broker, or nil for the embedded one.
	BrokerURL      *url.URL
	BrokerUsername string
	BrokerPassword string
	BrokerTLS      *tls.Config
	InstanceID     string
	ResponsePrefix string
	API            api.Config
	ShutdownGrace  time.Duration
	ShutdownDelay  time.Duration
	LogLevel       slog.Level
	LogFormat      string
	MaxHeaderBytes int
	// AuthFile holds the HTTP API keys; "" leaves the API open.
	AuthFile string
	// TLS serves HTTPS and the embedded broker's TLS listeners.
	TLS *tls.Config
	// MaxReply bounds a reply in bytes.
	MaxReply int
	// BrokerKeepAlive is the keep-alive of the external broker link.
	BrokerKeepAlive time.Duration
	// MaxRecords and MaxRecordBytes bound the request records.
	MaxRecords     int
	MaxRecordBytes int64
	// MQTT is the embedded broker's listeners, users file and limits;
	// its TLS and response prefix are set from the fields above, which
	// the HTTP side and the gateway share.
	MQTT broker.Config
}

const envPrefix = "MQTTGW_"

// errHelp means --help was asked for and printed; not a failure.
var errHelp = errors.New("help requested")

// parseConfig reads flags from args and, for each flag not given there,
// the environment variable MQTTGW_<FLAG> (upper case, '-' → '_'), then
// checks and converts them step by step.
func parseConfig(args []string, getenv func(string) string, stdout io.Writer) (config, error) {
	cfg := config{API: api.DefaultConfig()}
	raw := rawFlags{
		maxBody:     byteSize(cfg.API.MaxBody),
		maxHeader:   byteSize(64 << 10),
		maxReply:    byteSize(gateway.DefaultMaxReply),
		writeBuffer: byteSize(broker.DefaultWriteBuffer),
		recordBytes: byteSize(256 << 20),
		slow:        string(broker.SlowDrop),
		qos:         uint(cfg.API.DefaultQoS),
	}
	fs := flagSet(&cfg, &raw)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs)
			return cfg, errHelp
		}
		return cfg, fmt.Errorf("%w (see --help)", err)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if err := applyEnv(fs, getenv); err != nil {
		return cfg, err
	}
	for _, step := range []func(*config, *rawFlags) error{httpLimits, brokerLimits, serverTLS, externalBroker, process} {
		if err := step(&cfg, &raw); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// rawFlags hold the flags that need converting or checking before they
// reach config.
type rawFlags struct {
	maxBody, maxHeader, maxReply, writeBuffer, recordBytes byteSize
	slow, trustedProxies                                   string
	brokerCA, brokerCert, brokerKey                        string
	tlsCert, tlsKey                                        string
	qos                                                    uint
}

// flagSet defines every flag, writing into cfg and raw.
func flagSet(cfg *config, raw *rawFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("mqttgw", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help is printed by parseConfig
	fs.StringVar(&cfg.HTTPAddr, "http-addr", ":8080", "HTTP listen address")
	fs.StringVar(&cfg.Broker, "broker", "embedded", `"embedded" to run the MQTT v5 broker in-process, or an external broker URL: mqtt://host:port, mqtts://host:port, ws://host:port/path or wss://host:port/path`)
	fs.StringVar(&cfg.BrokerUsername, "broker-username", "", "username for the external broker")
	fs.StringVar(&cfg.BrokerPassword, "broker-password", "", "password for the external broker (prefer the environment variable)")
	fs.DurationVar(&cfg.BrokerKeepAlive, "broker-keepalive", gateway.DefaultBrokerKeepAlive*time.Second, "keep-alive of the external broker connection, whole seconds; a broker that stops answering is noticed within twice this")
	fs.StringVar(&raw.brokerCA, "broker-ca", "", "PEM file of CA certificates to verify an mqtts:// or wss:// broker (default: the system's)")
	fs.StringVar(&raw.brokerCert, "broker-cert", "", "PEM client certificate for an mqtts:// or wss:// broker (with --broker-key)")
	fs.StringVar(&raw.brokerKey, "broker-key", "", "PEM private key of --broker-cert")
	fs.StringVar(&cfg.MQTT.TCPAddr, "mqtt-addr", ":1883", `embedded broker's MQTT TCP listen address ("" = none)`)
	fs.StringVar(&cfg.MQTT.WSAddr, "ws-addr", "", `embedded broker's MQTT-over-WebSocket listen address ("" = none)`)
	fs.DurationVar(&cfg.API.DefaultTimeout, "timeout", cfg.API.DefaultTimeout, "default per-request timeout (a request's ?timeout overrides it)")
	fs.DurationVar(&cfg.API.MaxTimeout, "max-timeout", cfg.API.MaxTimeout, "largest ?timeout a client may ask for")
	fs.DurationVar(&cfg.API.DefaultTTL, "ttl", cfg.API.DefaultTTL, "default TTL of an async request (Prefer: respond-async): how long it may wait for a responder and its reply (a request's ?ttl overrides it)")
	fs.DurationVar(&cfg.API.MaxTTL, "max-ttl", cfg.API.MaxTTL, "largest ?ttl a client may ask for")
	fs.DurationVar(&cfg.API.ResultTTL, "result-ttl", cfg.API.ResultTTL, "how long a request's record and reply are kept after it ends, and how long a timed-out request (504) waits for a late reply")
	fs.IntVar(&cfg.API.MaxBatch, "max-batch", cfg.API.MaxBatch, "most requests one POST /batch may carry (its whole body is bounded by --max-body)")
	fs.IntVar(&cfg.API.MaxReplies, "max-replies", cfg.API.MaxReplies, "most replies a stream (Accept: text/event-stream or application/x-ndjson) or gather (?collect, ?max-replies) takes, and the largest ?max-replies")
	fs.IntVar(&cfg.MaxRecords, "max-records", 100_000, "most request records kept (async requests, timed-out ones, idempotency keys); beyond it 503 store-full")
	fs.Var(&raw.recordBytes, "max-record-bytes", "most bytes of request records kept, payloads and replies included; beyond it 503 store-full")
	fs.StringVar(&cfg.MQTT.DataDir, "data-dir", "", "embedded broker: directory that makes sessions, queued and retained messages and request records survive a restart (\"\" = memory only)")
	fs.UintVar(&raw.qos, "qos", raw.qos, "default QoS of requests: 0, 1 or 2 (a request's ?qos overrides it)")
	fs.Var(&raw.maxBody, "max-body", "largest request body, e.g. 1MiB, 512KiB or 65536 (bytes)")
	fs.Var(&raw.maxHeader, "max-header-bytes", "largest size of a request's headers, request line included")
	fs.Var(&raw.maxReply, "max-reply", "largest reply (payload, content type and user properties); a larger one is a 502")
	fs.DurationVar(&cfg.MQTT.ConnectTimeout, "mqtt-connect-timeout", broker.DefaultConnectTimeout, "embedded broker: time for a client's TLS or WebSocket handshake, then for its CONNECT")
	fs.DurationVar(&cfg.MQTT.MaxKeepAlive, "mqtt-max-keepalive", broker.DefaultMaxKeepAlive, "embedded broker: longest client keep-alive, whole seconds; a client asking for none or more gets this one")
	fs.Var(&raw.writeBuffer, "mqtt-write-buffer", "embedded broker: most bytes queued for one client (at least the largest packet: --max-body or --max-reply, plus 64KiB)")
	fs.DurationVar(&cfg.MQTT.WriteTimeout, "mqtt-write-timeout", broker.DefaultWriteTimeout, "embedded broker: a client that takes no bytes for this long is disconnected")
	fs.StringVar(&raw.slow, "mqtt-slow-subscriber", raw.slow, "embedded broker: what to do when a client's write buffer can't take another packet: drop (deliveries to it, counted) or disconnect")
	fs.IntVar(&cfg.API.MaxInflight, "max-inflight", cfg.API.MaxInflight, "most RPC requests served at once (default 1024 per CPU); beyond it 503 at once")
	fs.StringVar(&raw.trustedProxies, "trusted-proxies", "", "comma-separated IPs or CIDRs of reverse proxies whose X-Forwarded-For names the client (logs)")
	fs.StringVar(&cfg.AuthFile, "auth-file", "", "YAML file of API keys (SHA-256 hashed) and the topic filters each may publish to; reloaded on SIGHUP; \"\" = no authentication")
	fs.StringVar(&cfg.MQTT.UsersFile, "mqtt-users-file", "", "YAML file of the embedded broker's users (bcrypt passwords, publish/subscribe filters); reloaded on SIGHUP; \"\" = anonymous clients allowed")
	fs.StringVar(&cfg.MQTT.TLSAddr, "mqtt-tls-addr", "", "embedded broker's MQTT-over-TLS listen address, with --tls-cert/--tls-key (\"\" = none)")
	fs.StringVar(&raw.tlsCert, "tls-cert", "", "PEM certificate (chain) for HTTPS and the embedded broker's TLS listeners")
	fs.StringVar(&raw.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.InstanceID, "instance-id", "", "this replica's id; scopes its response topic (default random)")
	fs.StringVar(&cfg.ResponsePrefix, "response-prefix", gateway.DefaultResponsePrefix, "topic prefix under which all replicas receive replies; requests may not publish under it")
	fs.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", 0, "on SIGINT/SIGTERM, keep serving this long with /readyz at 503 first, so load balancers stop sending traffic")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 15*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may still finish before they get 503")
	fs.TextVar(&cfg.LogLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json")
	return fs
}

// httpLimits checks the HTTP API's limits and defaults.
func httpLimits(cfg *config, raw *rawFlags) error {
	cfg.API.MaxBody = int64(raw.maxBody)
	cfg.MaxHeaderBytes = int(raw.maxHeader)
	cfg.MaxReply = int(raw.maxReply)
	cfg.API.MaxReply = cfg.MaxReply
	cfg.MaxRecordBytes = int64(raw.recordBytes)
	if cfg.MaxRecords <= 0 {
		return fmt.Errorf("--max-records must be positive, not %d", cfg.MaxRecords)
	}
	if raw.qos > 2 {
		return fmt.Errorf("--qos must be 0, 1 or 2, not %d", raw.qos)
	}
	cfg.API.DefaultQoS = byte(raw.qos)
	var err error
	if cfg.API.TrustedProxies, err = parsePrefixes(raw.trustedProxies); err != nil {
		return fmt.Errorf("--trusted-proxies: %w", err)
	}
	if err := cfg.API.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	return nil
}

// brokerLimits checks the embedded broker's connection limits.
func brokerLimits(cfg *config, raw *rawFlags) error {
	// The largest packet a client may send: a request on its way to a
	// responder, or a reply, with room for topic and properties.
	cfg.MQTT.MaxPacketSize = int(max(raw.maxBody, raw.maxReply)) + broker.PacketHeadroom
	cfg.MQTT.WriteBuffer = int(raw.writeBuffer)
	cfg.MQTT.SlowSubscribers = broker.SlowPolicy(raw.slow)
	// Requests wait in offline sessions up to their TTL, and records are
	// kept (as retained messages) for the result TTL after that.
	cfg.MQTT.MaxMessageExpiry = max(24*time.Hour, cfg.API.MaxTTL+cfg.API.ResultTTL)
	// Zero would mean "the default" to the broker; as a flag it is a mistake.
	if cfg.MQTT.ConnectTimeout <= 0 || cfg.MQTT.WriteTimeout <= 0 {
		return errors.New("--mqtt-connect-timeout and --mqtt-write-timeout must be positive")
	}
	if cfg.MQTT.MaxKeepAlive%time.Second != 0 || cfg.MQTT.MaxKeepAlive <= 0 {
		return fmt.Errorf("--mqtt-max-keepalive %s: the keep-alive must be whole seconds from 1s to 65535s", cfg.MQTT.MaxKeepAlive)
	}
	if err := cfg.MQTT.Validate(); err != nil {
		return fmt.Errorf("embedded broker: %w (see --mqtt-* flags)", err)
	}
	return nil
}

// serverTLS loads the certificate for HTTPS and the MQTT TLS listeners.
func serverTLS(cfg *config, raw *rawFlags) error {
	if (raw.tlsCert == "") != (raw.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if raw.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(raw.tlsCert, raw.tlsKey)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	if cfg.MQTT.TLSAddr != "" && cfg.TLS == nil {
		return errors.New("--mqtt-tls-addr needs --tls-cert and --tls-key")
	}
	return nil
}

// externalBroker checks --broker and its TLS and keep-alive settings.
func externalBroker(cfg *config, raw *rawFlags) error {
	if cfg.BrokerKeepAlive < time.Second || cfg.BrokerKeepAlive > 65535*time.Second || cfg.BrokerKeepAlive%time.Second != 0 {
		return fmt.Errorf("--broker-keepalive %s must be whole seconds from 1s to 65535s", cfg.BrokerKeepAlive)
	}
	if cfg.Broker == "embedded" {
		return nil
	}
	if cfg.MQTT.DataDir != "" {
		return errors.New("--data-dir is for the embedded broker; with an external broker the records live in its retained messages, which it persists and replicates")
	}
	u, err := url.Parse(cfg.Broker)
	if err != nil {
		// Not echoed: a URL that doesn't parse can't be redacted, and it
		// may hold a password.
		return errors.New("--broker: want embedded or a URL such as mqtt://broker:1883, mqtts://…, ws://…/mqtt or wss://…")
	}
	if err := gateway.CheckBrokerURL(u); err != nil {
		if u.User != nil {
			// Refused rather than used: a URL ends up in logs, process
			// lists and shell histories.
			return fmt.Errorf("--broker %s: credentials don't go in the URL; use --broker-username and MQTTGW_BROKER_PASSWORD", u.Redacted())
		}
		return fmt.Errorf("--broker %s: %w; want embedded or a URL such as mqtt://broker:1883, mqtts://…, ws://…/mqtt or wss://…", u.Redacted(), err)
	}
	cfg.BrokerURL = u
	if u.Scheme == "mqtts" || u.Scheme == "wss" {
		if cfg.BrokerTLS, err = clientTLS(raw.brokerCA, raw.brokerCert, raw.brokerKey); err != nil {
			return err
		}
	}
	return nil
}

// process checks logging, identity and shutdown.
func process(cfg *config, _ *rawFlags) error {
	switch cfg.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("--log-format must be text or json, not %q", cfg.LogFormat)
	}
	if cfg.InstanceID == "" {
		// Here rather than in gateway.New: the external broker's client
		// id is made from it before the gateway exists.
		cfg.InstanceID = gateway.NewInstanceID()
	}
	if cfg.ShutdownGrace < 0 || cfg.ShutdownDelay < 0 {
		return fmt.Errorf("--shutdown-grace and --shutdown-delay must not be negative")
	}
	return nil
}

// parsePrefixes reads a comma-separated list of IPs and CIDRs.
func parsePrefixes(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("%q is neither an IP nor a CIDR", f)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// clientTLS is the TLS configuration for an external broker.
func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--broker-ca: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--broker-ca %s: no PEM certificate found", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--broker-cert and --broker-key go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--broker-cert/--broker-key: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// envName is the variable that sets flag name.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyEnv sets each flag not given on the command line from its
// environment variable, if that is set: flags win.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, serr)
			}
		}
	})
	return err
}

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `mqttgw: an HTTP to MQTT v5 request/response gateway.

POST /rpc/{topic} publishes the body on {topic} with a Response Topic and
Correlation Data, and answers with the responder's reply. POST
/publish/{topic} publishes it fire and forget, and answers 202.

Usage: mqttgw [flags]
       mqttgw healthcheck [--http-addr ADDR]   exit 0 if the gateway's /readyz is 200

Every flag can also be set with the environment variable shown; flags win.
Go's GOGC is 400 unless set (GOMEMLIMIT caps the heap as usual).

`)
	printFlags(w, fs, envName)
}

// printFlags lists fs's flags in --flag style, each with the environment
// variable env names for it ("" for none).
func printFlags(w io.Writer, fs *flag.FlagSet, env func(string) string) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s %s\n    \t%s (default %q", f.Name, typ, usage, f.DefValue)
		if e := env(f.Name); e != "" {
			fmt.Fprintf(w, "; env %s", e)
		}
		fmt.Fprintln(w, ")")
	})
}

// byteSize is a flag.Value for sizes such as "1MiB" or "65536".
type byteSize int64

func (b *byteSize) String() string { return humanize.IBytes(uint64(*b)) }

func (b *byteSize) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return fmt.Errorf("not a size such as 1MiB or 65536: %w", err)
	}
	if n == 0 || n > 1<<40 {
		return fmt.Errorf("size must be from 1 byte to 1TiB")
	}
	*b = byteSize(n)
	return nil
}
