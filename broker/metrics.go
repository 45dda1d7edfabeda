package broker

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors returns the embedded broker's Prometheus metrics, read from
// mochi's own counters when scraped.
func (b *Broker) Collectors() []prometheus.Collector {
	info := b.srv.Info
	gauge := func(name, help string, v *int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 { return float64(atomic.LoadInt64(v)) })
	}
	counter := func(name, help string, v *int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(atomic.LoadInt64(v)) })
	}
	return []prometheus.Collector{
		gauge("mqttgw_embedded_broker_clients_connected", "MQTT clients connected to the embedded broker.", &info.ClientsConnected),
		gauge("mqttgw_embedded_broker_subscriptions", "Subscriptions held by the embedded broker.", &info.Subscriptions),
		gauge("mqttgw_embedded_broker_inflight_messages", "QoS 1 and 2 messages the embedded broker has in flight.", &info.Inflight),
		counter("mqttgw_embedded_broker_messages_received_total", "PUBLISH packets the embedded broker received.", &info.MessagesReceived),
		counter("mqttgw_embedded_broker_messages_sent_total", "PUBLISH packets the embedded broker sent.", &info.MessagesSent),
		counter("mqttgw_embedded_broker_messages_dropped_total", "Messages the embedded broker dropped because a client's queue was full.", &info.MessagesDropped),
	}
}
