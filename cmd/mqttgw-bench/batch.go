package main

import "context"

// batches measures (e): the stack of (c), mqttgw on its embedded broker
// and the echo responder, through POST /batch, at each QoS,
// --batch-concurrency and --batch-sizes. Its req/s count requests, a
// batch call being as many as it carries, so that they compare with (b)'s
// and (c)'s one request per round trip.
func (r *runner) batches(ctx context.Context, rep *report, emb *stack) error {
	cfg := r.cfg
	payload := makePayload(cfg.payload)
	for _, conc := range cfg.batchConc {
		for _, qos := range cfg.qos {
			for _, size := range cfg.batchSizes {
				t, err := newBatchTarget(emb.gw.base, echoTopic, qos, payload, size, conc, cfg.requestTimeout)
				if err != nil {
					return err
				}
				pt := r.measure(ctx, point{System: sysBatch, QoS: &qos, Concurrency: conc, Payload: len(payload), Batch: size}, t.do,
					emb.roles(), emb.gw.base+"/metrics")
				t.close()
				if err := r.record(ctx, &rep.Batch, pt); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
