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
		counter("mqttgw_progress_replies_skipped_total", "Progress replies (user property progress) passed over by requests that wait for their final reply.", g.pending.progress.Load),
		counter("mqttgw_canceled_replies_total", "Replies dropped because their request had been canceled.", g.records.canceledReplies.Load),
		counter("mqttgw_request_store_full_total", "Requests refused (503 store-full), or timed-out requests whose late reply could not be kept, because --max-records or --max-record-bytes was reached.", g.records.full.Load),
		counter("mqttgw_request_record_write_errors_total", "Writes of request records to the broker that failed and were retried.", g.records.writeErrors.Load),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mqttgw_request_record_bytes",
			Help: "Bytes held by request records, payloads and replies included.",
		}, func() float64 {
			_, bytes := g.records.stats()
			return float64(bytes)
		}),
		recordsByState{g.records},
	}
}

// recordsByState is the mqttgw_request_records gauge, one series per
// state, read under one lock when scraped.
type recordsByState struct{ s *recordStore }

var recordsDesc = prometheus.NewDesc("mqttgw_request_records", "Request records held, by state.", []string{"state"}, nil)

func (c recordsByState) Describe(ch chan<- *prometheus.Desc) { ch <- recordsDesc }

func (c recordsByState) Collect(ch chan<- prometheus.Metric) {
	counts, _ := c.s.stats()
	for _, st := range States {
		ch <- prometheus.MustNewConstMetric(recordsDesc, prometheus.GaugeValue, float64(counts[st]), st.String())
	}
}
