package broker

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// connStats counts what the broker's connection limits did.
type connStats struct {
	oversized         atomic.Uint64 // packets refused from their fixed header
	droppedDeliveries atomic.Uint64 // deliveries dropped: the client's write buffer was congested
	slowDisconnects   atomic.Uint64 // clients disconnected: their write buffer overflowed
	writeTimeouts     atomic.Uint64 // clients disconnected: they took no bytes for the write timeout
	acceptErrors      atomic.Uint64 // failed Accept calls, retried
}

// Collectors returns the embedded broker's Prometheus metrics, read from
// mochi's own counters and the broker's when scraped.
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
	st := &b.stats
	// One series per fixed reason.
	dropped := prometheus.NewDesc("mqttgw_embedded_broker_deliveries_dropped_total",
		"Deliveries to MQTT clients the embedded broker dropped, by reason: slow_subscriber (the client's write buffer was congested), queue_full (mochi's per-client queue was full).", []string{"reason"}, nil)
	disconnects := prometheus.NewDesc("mqttgw_embedded_broker_slow_disconnects_total",
		"MQTT clients the embedded broker disconnected for not reading, by reason: buffer_full (the write buffer overflowed), write_timeout (no bytes taken within the write timeout).", []string{"reason"}, nil)
	return []prometheus.Collector{
		gauge("mqttgw_embedded_broker_clients_connected", "MQTT clients connected to the embedded broker.", &info.ClientsConnected),
		gauge("mqttgw_embedded_broker_subscriptions", "Subscriptions held by the embedded broker.", &info.Subscriptions),
		gauge("mqttgw_embedded_broker_inflight_messages", "QoS 1 and 2 messages the embedded broker has in flight.", &info.Inflight),
		counter("mqttgw_embedded_broker_messages_received_total", "PUBLISH packets the embedded broker received.", &info.MessagesReceived),
		counter("mqttgw_embedded_broker_messages_sent_total", "PUBLISH packets the embedded broker sent.", &info.MessagesSent),
		counter("mqttgw_embedded_broker_messages_dropped_total", "Messages the embedded broker dropped because a client's queue was full.", &info.MessagesDropped),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "mqttgw_embedded_broker_oversized_packets_total",
			Help: "Packets refused from their fixed header alone: larger than the Maximum Packet Size, or a CONNECT larger than its own bound.",
		}, func() float64 { return float64(st.oversized.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "mqttgw_embedded_broker_accept_errors_total",
			Help: "Failed accepts on the embedded broker's MQTT listeners (e.g. out of file descriptors), each retried with backoff.",
		}, func() float64 { return float64(st.acceptErrors.Load()) }),
		funcCollector{descs: []*prometheus.Desc{dropped, disconnects}, collect: func(ch chan<- prometheus.Metric) {
			ch <- prometheus.MustNewConstMetric(dropped, prometheus.CounterValue, float64(st.droppedDeliveries.Load()), "slow_subscriber")
			ch <- prometheus.MustNewConstMetric(dropped, prometheus.CounterValue, float64(atomic.LoadInt64(&info.MessagesDropped)), "queue_full")
			ch <- prometheus.MustNewConstMetric(disconnects, prometheus.CounterValue, float64(st.slowDisconnects.Load()), "buffer_full")
			ch <- prometheus.MustNewConstMetric(disconnects, prometheus.CounterValue, float64(st.writeTimeouts.Load()), "write_timeout")
		}},
	}
}

// funcCollector collects labelled counters read when scraped.
type funcCollector struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c funcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c funcCollector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
