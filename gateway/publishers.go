package gateway

import (
	"context"
	"runtime"
	"sync"
	"time"
)

// publishers are a few long-lived goroutines that run the embedded
// broker's publish path for requests.
//
// mochi's hooks take its 800-byte packets by value, level after level, so
// its publish path needs a deep stack. Run on the goroutine of an HTTP
// request, it grows that stack to 16–32 KiB, which the request then keeps
// while it waits for its reply (until a later collection shrinks it); run
// on a fresh goroutine (each item of a batch), it copies the stack through
// every size on the way up: a fifth of the CPU of a batch. The
// publishers' stacks grow once and stay grown, and the hand-over to one
// that waits for work is a switch between goroutines on the same core.
//
// A publish that may wait (for a responder to subscribe, or for a PUBACK
// over the network) keeps to the caller's goroutine, so that a publisher
// is never held up: a caller waits for one only as long as it takes to
// publish what is ahead of it, work that has to be done anyway.
type publishers struct {
	jobs    chan *publishJob
	stopped <-chan struct{} // closed when the publishers have ended
	free    sync.Pool       // of *publishJob, each with its done channel
}

type publishJob struct {
	ctx      context.Context
	m        *Message
	deadline time.Time
	done     chan error // cap 1
}

// run starts n publishers that call publish until ctx ends.
func (p *publishers) run(ctx context.Context, wg *sync.WaitGroup, n int, publish func(context.Context, *Message, time.Time) error) {
	p.jobs = make(chan *publishJob)
	p.stopped = ctx.Done()
	for range n {
		wg.Go(func() {
			for {
				select {
				case j := <-p.jobs:
					j.done <- publish(j.ctx, j.m, j.deadline)
				case <-ctx.Done():
					return
				}
			}
		})
	}
}

// publish hands m to a publisher and waits for its result; handed is
// false, and nothing was done, when the publishers have not started or
// have ended.
func (p *publishers) publish(ctx context.Context, m *Message, deadline time.Time) (handed bool, err error) {
	if p.jobs == nil {
		return false, nil
	}
	j, _ := p.free.Get().(*publishJob)
	if j == nil {
		j = &publishJob{done: make(chan error, 1)}
	}
	j.ctx, j.m, j.deadline = ctx, m, deadline
	select {
	case p.jobs <- j:
		handed, err = true, <-j.done
	case <-p.stopped:
	}
	*j = publishJob{done: j.done}
	p.free.Put(j)
	return handed, err
}

// defaultPublishers is how many publishers a gateway runs: publishing
// never waits, so a few per core keep every core busy.
func defaultPublishers() int { return 2 * runtime.GOMAXPROCS(0) }
