package gatewaytest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric reads one series from collectors: the counter or gauge name
// whose labels include label ("name=value"), or its first series when
// label is "". A missing series fails the test.
func Metric(tb testing.TB, collectors []prometheus.Collector, name, label string) float64 {
	tb.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors...)
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				match = match || lp.GetName()+"="+lp.GetValue() == label
			}
			if match {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	tb.Fatalf("no metric %s{%s}", name, label)
	return 0
}
