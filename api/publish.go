package api

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/mqttgw/mqttgw/gateway"
)

// maxTTL is the longest ?ttl: MQTT's Message Expiry Interval is a
// four-byte number of seconds.
const maxTTL = math.MaxUint32 * time.Second

// publish publishes the request body on the topic named by the path,
// fire and forget, and answers 202 once the broker has taken it.
func (s *Server) publish(w http.ResponseWriter, r *http.Request) {
	info := infoOf(r)
	// The same bound as /rpc: a publish waits for its PUBACK.
	fail, release, ok := s.admit(w, r, info, s.metrics.publishRequests)
	if !ok {
		return
	}
	defer release()

	var retain bool
	var ttl time.Duration
	m, err := s.decode(w, r, info, publishPrefix, func(q url.Values) (err error) {
		if retain, err = parseBool(q, "retain"); err != nil {
			return err
		}
		ttl, err = parseDuration(q, "ttl", 0, time.Second, maxTTL)
		return err
	})
	if err != nil {
		fail(err)
		return
	}
	// The broker's acknowledgement may take as long as a reply would.
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.DefaultTimeout)
	defer cancel()
	err = s.gw.Publish(ctx, gateway.Publication{
		Topic: m.topic, Payload: m.body, ContentType: m.contentType, UserProperties: m.props,
		QoS: m.qos, Retain: retain, TTL: ttl,
	})
	if err != nil {
		fail(err)
		return
	}
	info.outcome = "ok"
	s.metrics.publishRequests.WithLabelValues("ok").Inc()
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// parseBool reads query parameter name: "true" or "false", default false.
func parseBool(q url.Values, name string) (bool, error) {
	v, err := single(q, name)
	if err != nil || v == nil {
		return false, err
	}
	switch *v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("%s %q must be true or false", name, *v)
}
