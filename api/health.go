package api

import (
	"net/http"

	"github.com/mqttgw/mqttgw/gateway"
)

// healthz says the process is alive; it never looks at the broker, so
// that a broker outage doesn't get healthy gateways restarted.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// readyz is 200 only while the broker connection is up and the response
// subscription is acknowledged.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	err := s.gw.Ready()
	if err == nil && s.draining.Load() {
		err = gateway.ErrClosed
	}
	if err != nil {
		kind, detail := classify(err)
		s.writeProblem(w, kind, detail)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ready\n"))
}
