package main

// The promise kube-apiserver's consistent reads from the watch cache rest on (etcd >= 3.5.13):
// a progress notification at revision P, answered to RequestProgress, comes only after every
// event of the watch up to P was delivered. Checked under concurrent writes.

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/coreos/go-semver/semver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// progressSeen is one progress notification: its revision and how many events of the watch
// had arrived before it.
type progressSeen struct {
	rev    int64
	before int
}

// progressSafeVersion is the first etcd whose progress replies wait for pending events
// (etcd-io/etcd#15220); kube-apiserver sends progress requests only from this version on.
const progressSafeVersion = "3.5.13"

func scenarioWatchProgressLoad(ctx context.Context, e *env) error {
	if ok, err := progressGate(ctx, e); !ok || err != nil {
		return err
	}
	dir := e.prefix + "/pods/"
	start, err := e.cli.Get(ctx, "health-probe")
	if err != nil {
		return failf("get: %w", err)
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := e.cli.Watch(wctx, dir, clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())

	const writers, perWriter = 3, 100
	var mu sync.Mutex
	var writeRevs []int64
	var writeErr error
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				k := fmt.Sprintf("%sw%d-%03d", dir, w, i%10)
				r, err := e.cli.Put(ctx, k, fmt.Sprint(i))
				// Writes outside the watched prefix move the revision without events, so a
				// progress revision may be ahead of the last event.
				if err == nil && i%7 == 0 {
					_, err = e.cli.Put(ctx, e.prefix+"/other", fmt.Sprint(i))
				}
				mu.Lock()
				if err != nil && writeErr == nil {
					writeErr = err
				}
				if r != nil {
					writeRevs = append(writeRevs, r.Header.Revision)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}(w)
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()

	// Ask for progress continuously while the writes run, as a loaded apiserver would.
	requestErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(3 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-writersDone:
				return
			case <-t.C:
				if err := e.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
					requestErr <- err
					return
				}
			}
		}
	}()

	var eventRevs []int64
	var progress []progressSeen
	var lastProgress, lastEvent int64
	finalAsked := false
	deadline := time.NewTimer(45 * time.Second)
	defer deadline.Stop()
	for {
		// Once the writers are done, one last progress request must eventually cover the last
		// write; the loop ends at the first progress notification that does.
		if !finalAsked {
			select {
			case <-writersDone:
				if err := e.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
					return failf("final RequestProgress: %w", err)
				}
				finalAsked = true
			default:
			}
		}
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-wch:
		case err := <-requestErr:
			return failf("RequestProgress: %w", err)
		case <-deadline.C:
			return failf("timed out: %d events, %d progress notifications, writers done=%v", len(eventRevs), len(progress), finalAsked)
		case <-time.After(200 * time.Millisecond):
			if finalAsked {
				// Progress replies can be dropped by neither side, but a request racing the
				// end of the writes may have been answered already; ask again.
				finalAsked = false
			}
			continue
		}
		if !ok {
			return failf("watch closed after %d events", len(eventRevs))
		}
		if err := wr.Err(); err != nil {
			return failf("watch error after %d events: %w", len(eventRevs), err)
		}
		for _, ev := range wr.Events {
			r := ev.Kv.ModRevision
			if r <= lastEvent {
				return failf("event revision %d after %d: not ordered/unique", r, lastEvent)
			}
			if r <= lastProgress {
				return failf("event at revision %d delivered after a progress notification at %d", r, lastProgress)
			}
			if ev.Kv.Version > 1 && ev.PrevKv == nil {
				return failf("update event at %d without prev kv", r)
			}
			lastEvent = r
			eventRevs = append(eventRevs, r)
		}
		if wr.IsProgressNotify() {
			p := wr.Header.Revision
			if p < lastProgress {
				return failf("progress went back from %d to %d", lastProgress, p)
			}
			if p < lastEvent {
				return failf("progress at %d behind the delivered event at %d", p, lastEvent)
			}
			lastProgress = p
			progress = append(progress, progressSeen{rev: p, before: len(eventRevs)})
			if finalAsked {
				mu.Lock()
				done := len(writeRevs) == writers*perWriter && p >= maxRev(writeRevs)
				mu.Unlock()
				if done {
					break
				}
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if writeErr != nil {
		return failf("write: %w", writeErr)
	}
	sort.Slice(writeRevs, func(i, j int) bool { return writeRevs[i] < writeRevs[j] })
	e.observe("writes", len(writeRevs))
	e.observe("events", len(eventRevs))
	e.observe("progress_notifications", len(progress))
	if len(eventRevs) != len(writeRevs) {
		return failf("%d events for %d writes", len(eventRevs), len(writeRevs))
	}
	for i := range writeRevs {
		if writeRevs[i] != eventRevs[i] {
			return failf("event %d at revision %d, write at %d", i, eventRevs[i], writeRevs[i])
		}
	}
	// Every progress notification came after exactly the events up to its revision.
	for _, p := range progress {
		upTo := sort.Search(len(writeRevs), func(i int) bool { return writeRevs[i] > p.rev })
		if upTo != p.before {
			return failf("progress at %d arrived after %d events, but %d writes had revision <= %d",
				p.rev, p.before, upTo, p.rev)
		}
	}
	if len(progress) < 2 {
		return failf("only %d progress notifications for the whole run", len(progress))
	}
	return nil
}

func maxRev(revs []int64) int64 {
	var m int64
	for _, r := range revs {
		m = max(m, r)
	}
	return m
}

// progressGate reports whether the server is new enough for kube to send progress requests;
// when not, it records why the scenario was skipped.
func progressGate(ctx context.Context, e *env) (bool, error) {
	st, err := e.cli.Status(ctx, e.endpoint)
	if err != nil {
		return false, failf("status: %w", err)
	}
	v, err := semver.NewVersion(st.Version)
	if err != nil {
		return false, failf("status version %q is not semver: %w", st.Version, err)
	}
	if v.LessThan(*semver.New(progressSafeVersion)) {
		e.observe("skipped", fmt.Sprintf("server %s < %s: progress replies may overtake events there", v, progressSafeVersion))
		return false, nil
	}
	e.observe("server_version", st.Version)
	return true, nil
}

// scenarioWatchProgressMulti: kube-apiserver runs one watch per resource type on one gRPC
// stream (same context metadata) and a progress request covers them all. Two watchers
// replay history (started at rv+1, so unsynced at first), one starts from now; one
// progress request (repeated until served, as kube does) must reach each of them after all
// its events, at the current revision.
func scenarioWatchProgressMulti(ctx context.Context, e *env) error {
	if ok, err := progressGate(ctx, e); !ok || err != nil {
		return err
	}
	start, err := e.cli.Get(ctx, "health-probe")
	if err != nil {
		return failf("get: %w", err)
	}
	rv := start.Header.Revision
	dirs := []string{e.prefix + "/pods/", e.prefix + "/secrets/", e.prefix + "/nodes/"}
	const history, live = 40, 5
	for i := 0; i < history; i++ {
		for _, d := range dirs {
			if _, err := e.cli.Put(ctx, fmt.Sprintf("%s%03d", d, i%15), fmt.Sprint(i)); err != nil {
				return failf("put: %w", err)
			}
		}
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithProgressNotify()}
	chans := []clientv3.WatchChan{
		e.cli.Watch(wctx, dirs[0], append(opts, clientv3.WithRev(rv+1))...),
		e.cli.Watch(wctx, dirs[1], append(opts, clientv3.WithRev(rv+1))...),
		e.cli.Watch(wctx, dirs[2], opts...), // from now: only the live writes
	}
	wantEvents := []int{history + live, history + live, live}
	for i := 0; i < live; i++ {
		for _, d := range dirs {
			if _, err := e.cli.Put(ctx, fmt.Sprintf("%slive-%d", d, i), "x"); err != nil {
				return failf("put: %w", err)
			}
		}
	}
	now, err := e.cli.Get(ctx, "health-probe")
	if err != nil {
		return failf("get: %w", err)
	}
	cur := now.Header.Revision
	// etcd drops a progress request while any watcher of the stream is still catching up, so
	// kube-apiserver repeats it (every 100 ms) until its watch cache is fresh; do the same.
	rctx, stopRequests := context.WithCancel(ctx)
	defer stopRequests()
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			// Errors surface as a missing notification below.
			_ = e.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var seen []map[string]any
	for i, wch := range chans {
		got, err := eventsBeforeProgress(ctx, wch, wantEvents[i], cur, 15*time.Second)
		if err != nil {
			return failf("watcher %d (%s): %w", i, dirs[i], err)
		}
		for j := 1; j < len(got); j++ {
			if got[j].Kv.ModRevision <= got[j-1].Kv.ModRevision {
				return failf("watcher %d: revisions %d then %d", i, got[j-1].Kv.ModRevision, got[j].Kv.ModRevision)
			}
		}
		p, err := waitProgress(ctx, wch, 10*time.Second)
		if err != nil {
			return failf("watcher %d (%s): %w", i, dirs[i], err)
		}
		seen = append(seen, map[string]any{"events": len(got), "progress_revision": p})
		if p != cur {
			return failf("watcher %d: progress at %d, current revision %d", i, p, cur)
		}
	}
	e.observe("watchers", seen)
	return nil
}

// eventsBeforeProgress collects n events like collect, but fails when a progress notification
// at revision >= cur (every expected event is at or below cur) arrives before all of them.
func eventsBeforeProgress(ctx context.Context, wch clientv3.WatchChan, n int, cur int64, timeout time.Duration) ([]*clientv3.Event, error) {
	var out []*clientv3.Event
	t := time.NewTimer(timeout)
	defer t.Stop()
	for len(out) < n {
		select {
		case wr, ok := <-wch:
			if !ok {
				return out, failf("watch channel closed after %d of %d events", len(out), n)
			}
			if err := wr.Err(); err != nil {
				return out, failf("watch error after %d of %d events: %w", len(out), n, err)
			}
			if wr.IsProgressNotify() && wr.Header.Revision >= cur {
				return out, failf("progress notification at %d after only %d of %d events (all <= %d)",
					wr.Header.Revision, len(out), n, cur)
			}
			out = append(out, wr.Events...)
		case <-t.C:
			return out, failf("timed out after %v with %d of %d events", timeout, len(out), n)
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
	if len(out) > n {
		return out, failf("got %d events, want %d", len(out), n)
	}
	return out, nil
}
