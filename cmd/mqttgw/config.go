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
	"slices"
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
	MQTTAddr       string
	WSAddr         string
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
	// MQTTUsersFile holds the embedded broker's users; "" allows anonymous
	// clients.
	MQTTUsersFile string
	MQTTTLSAddr   string
	// TLS serves HTTPS and the embedded broker's TLS listeners.
	TLS *tls.Config
	// MaxReply bounds a reply in bytes.
	MaxReply int
	// BrokerKeepAlive is the keep-alive of the external broker link.
	BrokerKeepAlive time.Duration
	// MQTT holds the embedded broker's connection limits; its addresses,
	// TLS, users file and prefix are set from the fields above.
	MQTT broker.Config
}

const envPrefix = "MQTTGW_"

// errHelp means --help was asked for and printed; not a failure.
var errHelp = errors.New("help requested")

// parseConfig reads flags from args and, for each flag not given there,
// the environment variable MQTTGW_<FLAG> (upper case, '-' → '_').
func parseConfig(args []string, getenv func(string) string, stdout io.Writer) (config, error) {
	cfg := config{API: api.DefaultConfig()}
	maxBody := byteSize(cfg.API.MaxBody)
	maxHeader := byteSize(64 << 10)
	maxReply := byteSize(gateway.DefaultMaxReply)
	writeBuffer := byteSize(8 << 20)
	slow := string(broker.SlowDrop)
	var brokerCA, brokerCert, brokerKey, tlsCert, tlsKey, trustedProxies string
	qos := uint(cfg.API.DefaultQoS)

	fs := flag.NewFlagSet("mqttgw", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help is printed below
	fs.StringVar(&cfg.HTTPAddr, "http-addr", ":8080", "HTTP listen address")
	fs.StringVar(&cfg.Broker, "broker", "embedded", `"embedded" to run the MQTT v5 broker in-process, or an external broker URL: mqtt://host:port, mqtts://host:port, ws://host:port/path or wss://host:port/path`)
	fs.StringVar(&cfg.BrokerUsername, "broker-username", "", "username for the external broker")
	fs.StringVar(&cfg.BrokerPassword, "broker-password", "", "password for the external broker (prefer the environment variable)")
	fs.DurationVar(&cfg.BrokerKeepAlive, "broker-keepalive", gateway.DefaultBrokerKeepAlive*time.Second, "keep-alive of the external broker connection, whole seconds; a broker that stops answering is noticed within twice this")
	fs.StringVar(&brokerCA, "broker-ca", "", "PEM file of CA certificates to verify an mqtts:// or wss:// broker (default: the system's)")
	fs.StringVar(&brokerCert, "broker-cert", "", "PEM client certificate for an mqtts:// or wss:// broker (with --broker-key)")
	fs.StringVar(&brokerKey, "broker-key", "", "PEM private key of --broker-cert")
	fs.StringVar(&cfg.MQTTAddr, "mqtt-addr", ":1883", `embedded broker's MQTT TCP listen address ("" = none)`)
	fs.StringVar(&cfg.WSAddr, "ws-addr", "", `embedded broker's MQTT-over-WebSocket listen address ("" = none)`)
	fs.DurationVar(&cfg.API.DefaultTimeout, "timeout", cfg.API.DefaultTimeout, "default per-request timeout (a request's ?timeout overrides it)")
	fs.DurationVar(&cfg.API.MaxTimeout, "max-timeout", cfg.API.MaxTimeout, "largest ?timeout a client may ask for")
	fs.UintVar(&qos, "qos", qos, "default QoS of requests: 0, 1 or 2 (a request's ?qos overrides it)")
	fs.Var(&maxBody, "max-body", "largest request body, e.g. 1MiB, 512KiB or 65536 (bytes)")
	fs.Var(&maxHeader, "max-header-bytes", "largest size of a request's headers, request line included")
	fs.Var(&maxReply, "max-reply", "largest reply (payload, content type and user properties); a larger one is a 502")
	fs.DurationVar(&cfg.MQTT.ConnectTimeout, "mqtt-connect-timeout", 5*time.Second, "embedded broker: time for a client's TLS or WebSocket handshake, then for its CONNECT")
	fs.DurationVar(&cfg.MQTT.MaxKeepAlive, "mqtt-max-keepalive", 120*time.Second, "embedded broker: longest client keep-alive, whole seconds; a client asking for none or more gets this one")
	fs.Var(&writeBuffer, "mqtt-write-buffer", "embedded broker: most bytes queued for one client (at least the largest packet: --max-body or --max-reply, plus 64KiB)")
	fs.DurationVar(&cfg.MQTT.WriteTimeout, "mqtt-write-timeout", 30*time.Second, "embedded broker: a client that takes no bytes for this long is disconnected")
	fs.StringVar(&slow, "mqtt-slow-subscriber", slow, "embedded broker: what to do when a client's write buffer can't take another packet: drop (deliveries to it, counted) or disconnect")
	fs.IntVar(&cfg.API.MaxInflight, "max-inflight", cfg.API.MaxInflight, "most RPC requests served at once (default 1024 per CPU); beyond it 503 at once")
	fs.StringVar(&trustedProxies, "trusted-proxies", "", "comma-separated IPs or CIDRs of reverse proxies whose X-Forwarded-For names the client (logs)")
	fs.StringVar(&cfg.AuthFile, "auth-file", "", "YAML file of API keys (SHA-256 hashed) and the topic filters each may publish to; reloaded on SIGHUP; \"\" = no authentication")
	fs.StringVar(&cfg.MQTTUsersFile, "mqtt-users-file", "", "YAML file of the embedded broker's users (bcrypt passwords, publish/subscribe filters); reloaded on SIGHUP; \"\" = anonymous clients allowed")
	fs.StringVar(&cfg.MQTTTLSAddr, "mqtt-tls-addr", "", "embedded broker's MQTT-over-TLS listen address, with --tls-cert/--tls-key (\"\" = none)")
	fs.StringVar(&tlsCert, "tls-cert", "", "PEM certificate (chain) for HTTPS and the embedded broker's TLS listeners")
	fs.StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.InstanceID, "instance-id", "", "this replica's id; scopes its response topic (default random)")
	fs.StringVar(&cfg.ResponsePrefix, "response-prefix", gateway.DefaultResponsePrefix, "topic prefix under which all replicas receive replies; requests may not publish under it")
	fs.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", 0, "on SIGINT/SIGTERM, keep serving this long with /readyz at 503 first, so load balancers stop sending traffic")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 15*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may still finish before they get 503")
	fs.TextVar(&cfg.LogLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json")

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
	err := applyEnv(fs, getenv)
	if err != nil {
		return cfg, err
	}
	cfg.API.MaxBody = int64(maxBody)
	cfg.MaxHeaderBytes = int(maxHeader)
	cfg.MaxReply = int(maxReply)
	// The largest packet a client may send: a request on its way to a
	// responder, or a reply, with room for topic and properties.
	cfg.MQTT.MaxPacketSize = int(max(maxBody, maxReply)) + 64<<10
	cfg.MQTT.WriteBuffer = int(writeBuffer)
	cfg.MQTT.SlowSubscribers = broker.SlowPolicy(slow)
	// Zero would mean "the default" to the broker; as a flag it is a mistake.
	if cfg.MQTT.ConnectTimeout <= 0 || cfg.MQTT.WriteTimeout <= 0 {
		return cfg, errors.New("--mqtt-connect-timeout and --mqtt-write-timeout must be positive")
	}
	if cfg.MQTT.MaxKeepAlive%time.Second != 0 || cfg.MQTT.MaxKeepAlive <= 0 {
		return cfg, fmt.Errorf("--mqtt-max-keepalive %s: the keep-alive must be whole seconds from 1s to 65535s", cfg.MQTT.MaxKeepAlive)
	}
	if err := cfg.MQTT.Validate(); err != nil {
		return cfg, fmt.Errorf("embedded broker: %w (see --mqtt-* flags)", err)
	}
	if cfg.BrokerKeepAlive < time.Second || cfg.BrokerKeepAlive > 65535*time.Second || cfg.BrokerKeepAlive%time.Second != 0 {
		return cfg, fmt.Errorf("--broker-keepalive %s must be whole seconds from 1s to 65535s", cfg.BrokerKeepAlive)
	}
	if cfg.API.TrustedProxies, err = parsePrefixes(trustedProxies); err != nil {
		return cfg, fmt.Errorf("--trusted-proxies: %w", err)
	}
	if (tlsCert == "") != (tlsKey == "") {
		return cfg, errors.New("--tls-cert and --tls-key go together")
	}
	if tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
		if err != nil {
			return cfg, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	if cfg.MQTTTLSAddr != "" && cfg.TLS == nil {
		return cfg, errors.New("--mqtt-tls-addr needs --tls-cert and --tls-key")
	}
	if qos > 2 {
		return cfg, fmt.Errorf("--qos must be 0, 1 or 2, not %d", qos)
	}
	cfg.API.DefaultQoS = byte(qos)
	if err := cfg.API.Validate(); err != nil {
		return cfg, fmt.Errorf("invalid configuration: %w", err)
	}
	switch cfg.LogFormat {
	case "text", "json":
	default:
		return cfg, fmt.Errorf("--log-format must be text or json, not %q", cfg.LogFormat)
	}
	if cfg.Broker != "embedded" {
		u, err := url.Parse(cfg.Broker)
		if err != nil || u.Host == "" || !slices.Contains([]string{"mqtt", "mqtts", "ws", "wss"}, u.Scheme) {
			// Not echoed: a URL that doesn't parse can't be redacted,
			// and it may hold a password.
			return cfg, errors.New("--broker: want embedded or a URL such as mqtt://broker:1883, mqtts://…, ws://…/mqtt or wss://…")
		}
		if u.User != nil {
			// Refused rather than used: a URL ends up in logs, process
			// lists and shell histories.
			return cfg, fmt.Errorf("--broker %s: credentials don't go in the URL; use --broker-username and MQTTGW_BROKER_PASSWORD", u.Redacted())
		}
		cfg.BrokerURL = u
		if u.Scheme == "mqtts" || u.Scheme == "wss" {
			if cfg.BrokerTLS, err = clientTLS(brokerCA, brokerCert, brokerKey); err != nil {
				return cfg, err
			}
		}
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = gateway.NewInstanceID()
	}
	if cfg.ShutdownGrace < 0 || cfg.ShutdownDelay < 0 {
		return cfg, fmt.Errorf("--shutdown-grace and --shutdown-delay must not be negative")
	}
	return cfg, nil
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
Correlation Data, and answers with the responder's reply.

Usage: mqttgw [flags]
       mqttgw healthcheck [--http-addr ADDR]   exit 0 if the gateway's /readyz is 200

Every flag can also be set with the environment variable shown; flags win.

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
