package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// healthcheck is `mqttgw healthcheck`: it asks a running gateway's /readyz
// and fails unless it answers 200. Container images without a shell or
// curl (distroless, scratch) use it as their HEALTHCHECK.
func healthcheck(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("mqttgw healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("http-addr", ":8080", "the gateway's HTTP listen address; an empty or wildcard host means 127.0.0.1")
	path := fs.String("path", "/readyz", "path to ask")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, "Usage: mqttgw healthcheck [flags]\n\nExits 0 when the gateway's /readyz answers 200.\n\n")
			printFlags(stdout, fs, func(name string) string {
				if name == "http-addr" {
					return envName(name)
				}
				return ""
			})
			return nil
		}
		return err
	}
	// Only the gateway's own address comes from its environment: the
	// other MQTTGW_* variables (MQTTGW_TIMEOUT…) mean something else there.
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "http-addr" })
	if v := getenv(envName("http-addr")); v != "" && !given {
		*addr = v
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("--http-addr %q: %w", *addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	scheme, client := "http", http.DefaultClient
	if getenv(envName("tls-cert")) != "" {
		// The gateway serves HTTPS. The probe asks its own container over
		// loopback whether it is ready, not who it is: the certificate
		// names the public host, so don't verify it.
		scheme = "https"
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec
	}
	url := scheme + "://" + net.JoinHostPort(host, port) + *path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", url, resp.StatusCode, body)
	}
	fmt.Fprintf(stdout, "%s", body)
	return nil
}
