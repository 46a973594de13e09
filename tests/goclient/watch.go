package main

// Watch and lease scenarios shaped like k8s.io/apiserver/pkg/storage/etcd3/watcher.go and
// the lease manager: prefix watch from rv+1 with prev kv and progress notify, progress
// requests on the same stream, and leases shared by many keys that expire or are revoked.

import (
	"context"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ev is an event flattened for comparison and for the observations.
type ev struct {
	Type    string `json:"type"`
	Key     string `json:"key"`
	Value   string `json:"value"`
	ModRev  int64  `json:"mod_revision"`
	PrevVal string `json:"prev_value,omitempty"`
	HasPrev bool   `json:"has_prev"`
}

func (x ev) String() string {
	return fmt.Sprintf("%s %s=%q@%d prev(%v)=%q", x.Type, x.Key, x.Value, x.ModRev, x.HasPrev, x.PrevVal)
}

func flatten(e *clientv3.Event) ev {
	x := ev{Type: e.Type.String(), Key: string(e.Kv.Key), Value: string(e.Kv.Value), ModRev: e.Kv.ModRevision}
	if e.PrevKv != nil {
		x.HasPrev = true
		x.PrevVal = string(e.PrevKv.Value)
	}
	return x
}

// collect reads events from wch until n arrived, failing on a progress-less close, an error
// response or the timeout. Responses carrying no events (progress) are counted separately.
func collect(ctx context.Context, wch clientv3.WatchChan, n int, timeout time.Duration) ([]*clientv3.Event, error) {
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
			if wr.Canceled {
				return out, failf("watch canceled after %d events", len(out))
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

func scenarioWatchProgress(ctx context.Context, e *env) error {
	dir := e.prefix + "/pods/"
	a, b, c, d := dir+"a", dir+"b", dir+"c", dir+"d"
	outside := e.prefix + "/pods0"

	// The state a kube cacher listed: "a" at rv.
	ca, err := kubeCreate(ctx, e.cli, a, "a1", clientv3.NoLease)
	if err != nil || !ca.Succeeded {
		return failf("create a: %v", err)
	}
	rv := ca.Header.Revision
	// Writes between the list and the watch must be replayed from history.
	ua, err := kubeUpdate(ctx, e.cli, a, "a2", rv)
	if err != nil || !ua.Succeeded {
		return failf("update a: %v", err)
	}
	cb, err := kubeCreate(ctx, e.cli, b, "b1", clientv3.NoLease)
	if err != nil || !cb.Succeeded {
		return failf("create b: %v", err)
	}

	// kube-apiserver wraps its watch contexts with WithRequireLeader, and RequestProgress
	// must use the same metadata to reach the same gRPC stream.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := e.cli.Watch(wctx, dir, clientv3.WithPrefix(), clientv3.WithRev(rv+1), clientv3.WithPrevKV(),
		clientv3.WithProgressNotify())

	// Live writes.
	if _, err := e.cli.Put(ctx, outside, "never seen"); err != nil {
		return failf("put outside: %w", err)
	}
	da, err := kubeDelete(ctx, e.cli, a, ua.Header.Revision)
	if err != nil || !da.Succeeded {
		return failf("delete a: %v", err)
	}
	ub, err := kubeUpdate(ctx, e.cli, b, "b2", cb.Header.Revision)
	if err != nil || !ub.Succeeded {
		return failf("update b: %v", err)
	}
	// Two creates in one txn: one revision, delivered together.
	cd, err := e.cli.Txn(ctx).Then(clientv3.OpPut(c, "c1"), clientv3.OpPut(d, "d1")).Commit()
	if err != nil || !cd.Succeeded {
		return failf("txn c+d: %v", err)
	}

	want := []ev{
		{Type: "PUT", Key: a, Value: "a2", ModRev: ua.Header.Revision, HasPrev: true, PrevVal: "a1"},
		{Type: "PUT", Key: b, Value: "b1", ModRev: cb.Header.Revision},
		{Type: "DELETE", Key: a, ModRev: da.Header.Revision, HasPrev: true, PrevVal: "a2"},
		{Type: "PUT", Key: b, Value: "b2", ModRev: ub.Header.Revision, HasPrev: true, PrevVal: "b1"},
		{Type: "PUT", Key: c, Value: "c1", ModRev: cd.Header.Revision},
		{Type: "PUT", Key: d, Value: "d1", ModRev: cd.Header.Revision},
	}
	got, err := collect(ctx, wch, len(want), 15*time.Second)
	var flat []ev
	for _, g := range got {
		flat = append(flat, flatten(g))
	}
	e.observe("events", flat)
	if err != nil {
		return err
	}
	for i := range want {
		if flat[i] != want[i] {
			return failf("event %d: got %v, want %v", i, flat[i], want[i])
		}
	}
	// A DELETE event's kv carries only the key and the delete revision.
	del := got[2].Kv
	if del.CreateRevision != 0 || del.Version != 0 || len(del.Value) != 0 || del.Lease != 0 {
		return failf("delete event kv has extra fields: %v", del)
	}
	if got[0].Kv.Version != 2 || got[0].Kv.CreateRevision != rv || got[1].Kv.Version != 1 {
		return failf("event kv versions: %v / %v", got[0].Kv, got[1].Kv)
	}

	// Progress request on the same stream: an event-less response whose header revision is
	// the current one (kube uses it to serve consistent reads from its watch cache).
	now, err := e.cli.Get(ctx, "health-probe")
	if err != nil {
		return failf("get current revision: %w", err)
	}
	cur := now.Header.Revision
	if err := e.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
		return failf("RequestProgress: %w", err)
	}
	progress, err := waitProgress(ctx, wch, 10*time.Second)
	if err != nil {
		return err
	}
	e.observe("progress_revision", progress)
	e.observe("current_revision", cur)
	if progress != cur {
		return failf("progress notification at revision %d, current is %d", progress, cur)
	}

	// The watch keeps working after a progress notification.
	ud, err := e.cli.Put(ctx, d, "d2")
	if err != nil {
		return failf("put d: %w", err)
	}
	after, err := collect(ctx, wch, 1, 10*time.Second)
	if err != nil {
		return failf("after progress: %w", err)
	}
	if x := flatten(after[0]); x != (ev{Type: "PUT", Key: d, Value: "d2", ModRev: ud.Header.Revision, HasPrev: true, PrevVal: "d1"}) {
		return failf("after progress: %v", x)
	}
	// A second progress request, after new events, reports the newer revision.
	if err := e.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
		return failf("second RequestProgress: %w", err)
	}
	p2, err := waitProgress(ctx, wch, 10*time.Second)
	if err != nil {
		return failf("second progress: %w", err)
	}
	if p2 != ud.Header.Revision {
		return failf("second progress at %d, want %d", p2, ud.Header.Revision)
	}
	return nil
}

// waitProgress waits for a progress notification and returns its revision; events first are
// an error (none are expected).
func waitProgress(ctx context.Context, wch clientv3.WatchChan, timeout time.Duration) (int64, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case wr, ok := <-wch:
			if !ok {
				return 0, failf("watch closed while waiting for progress")
			}
			if err := wr.Err(); err != nil {
				return 0, failf("watch error while waiting for progress: %w", err)
			}
			if wr.IsProgressNotify() {
				return wr.Header.Revision, nil
			}
			if len(wr.Events) > 0 {
				return 0, failf("unexpected events while waiting for progress: %v", flatten(wr.Events[0]))
			}
		case <-t.C:
			return 0, failf("no progress notification within %v of RequestProgress", timeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// leaseKeys grants one lease, creates n keys on it (kube: many objects share a lease) and
// starts a prefix watch with prev kv from the current revision.
func leaseKeys(ctx context.Context, e *env, ttl int64, n int) (clientv3.LeaseID, []string, clientv3.WatchChan, error) {
	dir := e.prefix + "/events/"
	start, err := e.cli.Get(ctx, "health-probe")
	if err != nil {
		return 0, nil, nil, failf("get: %w", err)
	}
	wch := e.cli.Watch(clientv3.WithRequireLeader(ctx), dir, clientv3.WithPrefix(),
		clientv3.WithRev(start.Header.Revision+1), clientv3.WithPrevKV())
	l, err := e.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, nil, nil, failf("grant: %w", err)
	}
	e.observe("lease_id", fmt.Sprintf("%x", int64(l.ID)))
	e.observe("granted_ttl", l.TTL)
	if l.ID <= 0 || l.TTL < ttl {
		return 0, nil, nil, failf("grant(%d): id=%d ttl=%d", ttl, l.ID, l.TTL)
	}
	var keys []string
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("%sev-%02d", dir, i)
		r, err := kubeCreate(ctx, e.cli, k, fmt.Sprintf("event-%d", i), l.ID)
		if err != nil || !r.Succeeded {
			return 0, nil, nil, failf("create %s: %v", k, err)
		}
		keys = append(keys, k)
	}
	ttlResp, err := e.cli.TimeToLive(ctx, l.ID, clientv3.WithAttachedKeys())
	if err != nil {
		return 0, nil, nil, failf("time to live: %w", err)
	}
	var attached []string
	for _, k := range ttlResp.Keys {
		attached = append(attached, string(k))
	}
	sort.Strings(attached)
	e.observe("ttl_keys", len(attached))
	if fmt.Sprint(attached) != fmt.Sprint(keys) || ttlResp.GrantedTTL != l.TTL || ttlResp.TTL <= 0 || ttlResp.TTL > l.TTL {
		return 0, nil, nil, failf("time to live: ttl=%d granted=%d keys=%v, want granted %d keys %v",
			ttlResp.TTL, ttlResp.GrantedTTL, attached, l.TTL, keys)
	}
	// The creates are the first n events.
	if _, err := collect(ctx, wch, n, 15*time.Second); err != nil {
		return 0, nil, nil, failf("create events: %w", err)
	}
	return l.ID, keys, wch, nil
}

// expectLeaseDeletes checks that every key of the lease got a DELETE event with its prev kv,
// all at one revision, and returns that revision.
func expectLeaseDeletes(ctx context.Context, e *env, wch clientv3.WatchChan, keys []string, timeout time.Duration) (int64, error) {
	got, err := collect(ctx, wch, len(keys), timeout)
	if err != nil {
		return 0, failf("delete events: %w", err)
	}
	rev := got[0].Kv.ModRevision
	seen := map[string]bool{}
	for i, g := range got {
		if g.Type != mvccpb.DELETE {
			return 0, failf("event %d: %v, want DELETE", i, flatten(g))
		}
		if g.Kv.ModRevision != rev {
			return 0, failf("lease deletes split over revisions %d and %d", rev, g.Kv.ModRevision)
		}
		if g.PrevKv == nil || string(g.PrevKv.Key) != string(g.Kv.Key) || len(g.PrevKv.Value) == 0 || g.PrevKv.Lease == 0 {
			return 0, failf("delete event %d without full prev kv: %v", i, g.PrevKv)
		}
		seen[string(g.Kv.Key)] = true
	}
	for _, k := range keys {
		if !seen[k] {
			return 0, failf("no DELETE event for %s", k)
		}
	}
	left, err := e.cli.Get(ctx, e.prefix+"/events/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || left.Count != 0 {
		return 0, failf("keys left after the lease ended: err=%v resp=%v", err, left)
	}
	return rev, nil
}

func scenarioLeaseExpire(ctx context.Context, e *env) error {
	// 2 s is at or above both backends' minimum TTL for default timings.
	id, keys, wch, err := leaseKeys(ctx, e, 2, 8)
	if err != nil {
		return err
	}
	start := time.Now()
	rev, err := expectLeaseDeletes(ctx, e, wch, keys, 20*time.Second)
	if err != nil {
		return err
	}
	e.observe("expired_after_ms", time.Since(start).Milliseconds())
	e.observe("delete_revision", rev)
	ttl, err := e.cli.TimeToLive(ctx, id)
	if err != nil {
		return failf("time to live of an expired lease: %w", err)
	}
	if ttl.TTL != -1 {
		return failf("expired lease TTL %d, want -1", ttl.TTL)
	}
	return nil
}

func scenarioLeaseRevoke(ctx context.Context, e *env) error {
	id, keys, wch, err := leaseKeys(ctx, e, 600, 5)
	if err != nil {
		return err
	}
	r, err := e.cli.Revoke(ctx, id)
	if err != nil {
		return failf("revoke: %w", err)
	}
	rev, err := expectLeaseDeletes(ctx, e, wch, keys, 10*time.Second)
	if err != nil {
		return err
	}
	e.observe("revoke_revision", r.Header.Revision)
	if rev != r.Header.Revision {
		return failf("delete events at %d, revoke answered revision %d", rev, r.Header.Revision)
	}
	return nil
}
