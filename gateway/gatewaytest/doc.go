// Package gatewaytest provides what mqttgw's tests share, in the manner of
// net/http/httptest: real MQTT v5 clients and responders built on
// paho.golang, a thread-safe log buffer, polling, atomic file writes,
// throwaway certificates, users and API key files, and launchers for the
// outside programs the interoperability tests run (mosquitto, python,
// node, nginx, the project's own binaries). A missing outside program
// skips its test, except with CI=true, where it fails it: CI must install
// it.
//
// It imports none of mqttgw's packages, so that every package's tests,
// the gateway's own included, can use it.
package gatewaytest
