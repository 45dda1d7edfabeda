package gateway

import "github.com/prometheus/client_golang/prometheus"

// Collectors returns the gateway's Prometheus metrics, read from its
// counters when scraped.
func (g *Gateway) Collectors() []prometheus.Collector {
	counter := func(name, help string, f func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f()) })
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mqttgw_pending_requests",
			Help: "Requests published and waiting for their reply.",
		}, func() float64 { return float64(g.pending.len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mqttgw_broker_connected",
			Help: "1 while the broker connection is up and the response subscription acknowledged, else 0.",
		}, func() float64 {
			if g.connected.Load() {
				return 1
			}
			return 0
		}),
		counter("mqttgw_broker_reconnects_total", "Times the broker connection came up again after the first time.", func() uint64 {
			return max(g.connects.Load(), 1) - 1
		}),
		counter("mqttgw_late_replies_total", "Replies dropped because their request had already timed out, been cancelled or failed.", g.pending.late.Load),
		counter("mqttgw_duplicate_replies_total", "Replies dropped because their request had already been answered.", g.pending.duplicates.Load),
		counter("mqttgw_oversized_replies_total", "Replies refused with a 502 because they are larger than --max-reply.", g.oversized.Load),
		counter("mqttgw_unknown_replies_total", "Replies dropped because their correlation data matches no request this gateway remembers.", g.pending.unknown.Load),
	}
}
