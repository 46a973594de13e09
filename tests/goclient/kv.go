package main

// Key-value scenarios shaped like k8s.io/apiserver/pkg/storage/etcd3/store.go: create,
// get, guaranteed update, delete with precondition, paged list, count and keys-only ranges.

import (
	"bytes"
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// failf builds a scenario failure.
func failf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// kubeCreate is store.Create: put only if the key does not exist.
func kubeCreate(ctx context.Context, cli *clientv3.Client, key, val string, lease clientv3.LeaseID) (*clientv3.TxnResponse, error) {
	var opts []clientv3.OpOption
	if lease != clientv3.NoLease {
		opts = append(opts, clientv3.WithLease(lease))
	}
	return cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(key), "=", 0),
	).Then(
		clientv3.OpPut(key, val, opts...),
	).Commit()
}

// kubeUpdate is store.GuaranteedUpdate's write: put if unchanged since rev, else read back
// the current object so the caller can retry without another round trip.
func kubeUpdate(ctx context.Context, cli *clientv3.Client, key, val string, rev int64) (*clientv3.TxnResponse, error) {
	return cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(key), "=", rev),
	).Then(
		clientv3.OpPut(key, val),
	).Else(
		clientv3.OpGet(key),
	).Commit()
}

// kubeDelete is store.conditionalDelete.
func kubeDelete(ctx context.Context, cli *clientv3.Client, key string, rev int64) (*clientv3.TxnResponse, error) {
	return cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(key), "=", rev),
	).Then(
		clientv3.OpDelete(key),
	).Else(
		clientv3.OpGet(key),
	).Commit()
}

// elseObject is the object returned by the Else branch of a failed update/delete txn.
func elseObject(resp *clientv3.TxnResponse) (*clientv3.GetResponse, error) {
	if len(resp.Responses) != 1 {
		return nil, failf("else branch: %d responses, want 1", len(resp.Responses))
	}
	rr := resp.Responses[0].GetResponseRange()
	if rr == nil {
		return nil, failf("else branch: response is not a range: %v", resp.Responses[0])
	}
	return (*clientv3.GetResponse)(rr), nil
}

func scenarioCreate(ctx context.Context, e *env) error {
	lease, err := e.cli.Grant(ctx, 600)
	if err != nil {
		return failf("grant: %w", err)
	}
	defer e.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
	key := e.prefix + "/pods/default/a"
	before, err := e.cli.Get(ctx, "health-probe")
	if err != nil {
		return failf("get before: %w", err)
	}
	resp, err := kubeCreate(ctx, e.cli, key, "v1", lease.ID)
	if err != nil {
		return failf("create: %w", err)
	}
	e.observe("revision_before", before.Header.Revision)
	e.observe("create_revision", resp.Header.Revision)
	if !resp.Succeeded {
		return failf("create of a new key: succeeded=false")
	}
	if resp.Header.Revision != before.Header.Revision+1 {
		return failf("create bumped revision %d -> %d, want +1", before.Header.Revision, resp.Header.Revision)
	}
	if len(resp.Responses) != 1 || resp.Responses[0].GetResponsePut() == nil {
		return failf("create: want one put response, got %v", resp.Responses)
	}
	// A second create of the same key must not overwrite it nor bump the revision.
	again, err := kubeCreate(ctx, e.cli, key, "v2", lease.ID)
	if err != nil {
		return failf("second create: %w", err)
	}
	if again.Succeeded {
		return failf("second create of an existing key succeeded")
	}
	if len(again.Responses) != 0 {
		return failf("second create: empty else branch returned %d responses", len(again.Responses))
	}
	if again.Header.Revision != resp.Header.Revision {
		return failf("failed create moved the revision %d -> %d", resp.Header.Revision, again.Header.Revision)
	}
	got, err := e.cli.Get(ctx, key)
	if err != nil {
		return failf("get: %w", err)
	}
	if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v1" {
		return failf("after failed create: %v, want value v1", got.Kvs)
	}
	kv := got.Kvs[0]
	if kv.CreateRevision != resp.Header.Revision || kv.ModRevision != resp.Header.Revision || kv.Version != 1 {
		return failf("kv create=%d mod=%d version=%d, want %d/%d/1", kv.CreateRevision, kv.ModRevision, kv.Version,
			resp.Header.Revision, resp.Header.Revision)
	}
	if clientv3.LeaseID(kv.Lease) != lease.ID {
		return failf("kv lease %x, want %x", kv.Lease, lease.ID)
	}
	return nil
}

func scenarioGet(ctx context.Context, e *env) error {
	key := e.prefix + "/configmaps/ns/x"
	put, err := kubeCreate(ctx, e.cli, key, "payload", clientv3.NoLease)
	if err != nil || !put.Succeeded {
		return failf("create: %v (succeeded=%v)", err, put != nil && put.Succeeded)
	}
	got, err := e.cli.Get(ctx, key)
	if err != nil {
		return failf("get: %w", err)
	}
	e.observe("count", got.Count)
	e.observe("more", got.More)
	if got.Count != 1 || len(got.Kvs) != 1 || got.More {
		return failf("get: count=%d kvs=%d more=%v, want 1/1/false", got.Count, len(got.Kvs), got.More)
	}
	kv := got.Kvs[0]
	if string(kv.Key) != key || string(kv.Value) != "payload" || kv.ModRevision != put.Header.Revision || kv.Lease != 0 {
		return failf("get returned %v", kv)
	}
	if got.Header.Revision < put.Header.Revision {
		return failf("get header revision %d older than the write %d", got.Header.Revision, put.Header.Revision)
	}
	// A missing key is not an error: empty kvs, count 0 (kube's health check reads one).
	miss, err := e.cli.Get(ctx, e.prefix+"/missing")
	if err != nil {
		return failf("get missing: %w", err)
	}
	if len(miss.Kvs) != 0 || miss.Count != 0 {
		return failf("get missing: %d kvs count %d", len(miss.Kvs), miss.Count)
	}
	// A serializable read (kube uses them for consistent-list fallbacks) also sees the key
	// on a single member.
	ser, err := e.cli.Get(ctx, key, clientv3.WithSerializable())
	if err != nil {
		return failf("serializable get: %w", err)
	}
	if len(ser.Kvs) != 1 {
		return failf("serializable get: %d kvs", len(ser.Kvs))
	}
	return nil
}

func scenarioGuaranteedUpdate(ctx context.Context, e *env) error {
	key := e.prefix + "/deployments/ns/web"
	c, err := kubeCreate(ctx, e.cli, key, "gen1", clientv3.NoLease)
	if err != nil || !c.Succeeded {
		return failf("create: %v", err)
	}
	rev1 := c.Header.Revision
	u, err := kubeUpdate(ctx, e.cli, key, "gen2", rev1)
	if err != nil {
		return failf("update: %w", err)
	}
	if !u.Succeeded {
		return failf("update with the current revision did not succeed")
	}
	rev2 := u.Header.Revision
	if rev2 != rev1+1 {
		return failf("update revision %d, want %d", rev2, rev1+1)
	}
	// A writer holding the stale revision loses and gets the current object back.
	stale, err := kubeUpdate(ctx, e.cli, key, "gen2-lost", rev1)
	if err != nil {
		return failf("stale update: %w", err)
	}
	if stale.Succeeded {
		return failf("update with stale revision %d succeeded", rev1)
	}
	if stale.Header.Revision != rev2 {
		return failf("failed update moved revision to %d", stale.Header.Revision)
	}
	cur, err := elseObject(stale)
	if err != nil {
		return err
	}
	if len(cur.Kvs) != 1 {
		return failf("else branch returned %d kvs, want the current object", len(cur.Kvs))
	}
	kv := cur.Kvs[0]
	e.observe("conflict_object", map[string]any{"value": string(kv.Value), "mod_revision": kv.ModRevision, "version": kv.Version})
	if string(kv.Value) != "gen2" || kv.ModRevision != rev2 || kv.Version != 2 || kv.CreateRevision != rev1 {
		return failf("else object value=%q mod=%d version=%d create=%d, want gen2/%d/2/%d",
			kv.Value, kv.ModRevision, kv.Version, kv.CreateRevision, rev2, rev1)
	}
	// Retry with the revision from the conflict, as GuaranteedUpdate does.
	retry, err := kubeUpdate(ctx, e.cli, key, "gen3", kv.ModRevision)
	if err != nil || !retry.Succeeded {
		return failf("retry update: err=%v succeeded=%v", err, retry != nil && retry.Succeeded)
	}
	got, err := e.cli.Get(ctx, key)
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "gen3" || got.Kvs[0].Version != 3 {
		return failf("after retry: err=%v kvs=%v", err, got)
	}
	// Updating a key that was never created (rev 0 compare on a missing key) is a create.
	missing := e.prefix + "/deployments/ns/none"
	m, err := kubeUpdate(ctx, e.cli, missing, "x", 5)
	if err != nil {
		return failf("update missing: %w", err)
	}
	if m.Succeeded {
		return failf("update of a missing key with rev 5 succeeded")
	}
	mo, err := elseObject(m)
	if err != nil {
		return err
	}
	if len(mo.Kvs) != 0 {
		return failf("else branch for a missing key returned %d kvs", len(mo.Kvs))
	}
	return nil
}

func scenarioDeletePrecondition(ctx context.Context, e *env) error {
	key := e.prefix + "/secrets/ns/s"
	c, err := kubeCreate(ctx, e.cli, key, "one", clientv3.NoLease)
	if err != nil || !c.Succeeded {
		return failf("create: %v", err)
	}
	u, err := kubeUpdate(ctx, e.cli, key, "two", c.Header.Revision)
	if err != nil || !u.Succeeded {
		return failf("update: %v", err)
	}
	d, err := kubeDelete(ctx, e.cli, key, c.Header.Revision)
	if err != nil {
		return failf("stale delete: %w", err)
	}
	if d.Succeeded {
		return failf("delete with stale revision succeeded")
	}
	cur, err := elseObject(d)
	if err != nil {
		return err
	}
	if len(cur.Kvs) != 1 || string(cur.Kvs[0].Value) != "two" || cur.Kvs[0].ModRevision != u.Header.Revision {
		return failf("stale delete else object %v, want value two at %d", cur.Kvs, u.Header.Revision)
	}
	ok, err := kubeDelete(ctx, e.cli, key, u.Header.Revision)
	if err != nil {
		return failf("delete: %w", err)
	}
	if !ok.Succeeded || len(ok.Responses) != 1 {
		return failf("delete: succeeded=%v responses=%d", ok.Succeeded, len(ok.Responses))
	}
	dr := ok.Responses[0].GetResponseDeleteRange()
	if dr == nil || dr.Deleted != 1 {
		return failf("delete response %v, want deleted=1", ok.Responses[0])
	}
	e.observe("delete_revision", ok.Header.Revision)
	if ok.Header.Revision != u.Header.Revision+1 {
		return failf("delete revision %d, want %d", ok.Header.Revision, u.Header.Revision+1)
	}
	got, err := e.cli.Get(ctx, key)
	if err != nil || len(got.Kvs) != 0 {
		return failf("after delete: err=%v kvs=%v", err, got)
	}
	// Deleting again: the key is gone, the compare on rev fails and Else finds nothing.
	again, err := kubeDelete(ctx, e.cli, key, u.Header.Revision)
	if err != nil {
		return failf("second delete: %w", err)
	}
	if again.Succeeded {
		return failf("second delete succeeded")
	}
	ao, err := elseObject(again)
	if err != nil {
		return err
	}
	if len(ao.Kvs) != 0 || again.Header.Revision != ok.Header.Revision {
		return failf("second delete: kvs=%v revision=%d", ao.Kvs, again.Header.Revision)
	}
	return nil
}

// fill creates n keys under dir (one create txn each, as kube writes objects) and returns
// them sorted plus the revision after the last write.
func fill(ctx context.Context, e *env, dir string, n int) ([]string, int64, error) {
	keys := make([]string, 0, n)
	var rev int64
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("%s/obj-%03d", dir, i)
		r, err := kubeCreate(ctx, e.cli, k, fmt.Sprintf("value-%03d", i), clientv3.NoLease)
		if err != nil || !r.Succeeded {
			return nil, 0, failf("create %s: %v", k, err)
		}
		keys = append(keys, k)
		rev = r.Header.Revision
	}
	return keys, rev, nil
}

func scenarioPagedList(ctx context.Context, e *env) error {
	dir := e.prefix + "/pods/"
	keys, _, err := fill(ctx, e, e.prefix+"/pods", 25)
	if err != nil {
		return err
	}
	// Neighbours outside the prefix must never show up ("/pods0" sorts right after "/pods/").
	for _, k := range []string{e.prefix + "/pods0", e.prefix + "/pod", e.prefix + "/pods"} {
		if _, err := e.cli.Put(ctx, k, "outside"); err != nil {
			return failf("put %s: %w", k, err)
		}
	}
	// The list revision comes from the first page, as kube does when no RV is given; later
	// writes must not show up in the following pages.
	end := clientv3.GetPrefixRangeEnd(dir)
	const limit = 10
	first, err := e.cli.Get(ctx, dir, clientv3.WithRange(end), clientv3.WithLimit(limit))
	if err != nil {
		return failf("first page: %w", err)
	}
	listRev := first.Header.Revision
	if _, err := e.cli.Put(ctx, keys[24], "changed-after-list"); err != nil {
		return failf("put after list: %w", err)
	}
	if _, err := e.cli.Put(ctx, dir+"obj-999", "created-after-list"); err != nil {
		return failf("put after list: %w", err)
	}
	if _, err := e.cli.Delete(ctx, keys[20]); err != nil {
		return failf("delete after list: %w", err)
	}
	var seen []string
	var pages []map[string]any
	resp := first
	key := dir
	for page := 0; ; page++ {
		if page > 0 {
			resp, err = e.cli.Get(ctx, key, clientv3.WithRange(end), clientv3.WithLimit(limit), clientv3.WithRev(listRev))
			if err != nil {
				return failf("page %d from %q at rev %d: %w", page, key, listRev, err)
			}
		}
		remaining := int64(len(keys) - len(seen))
		pages = append(pages, map[string]any{"kvs": len(resp.Kvs), "count": resp.Count, "more": resp.More,
			"header_revision": resp.Header.Revision})
		if resp.Count != remaining {
			return failf("page %d: count=%d, want %d (keys left in the range at rev %d, limit ignored)",
				page, resp.Count, remaining, listRev)
		}
		wantKvs := remaining
		if wantKvs > limit {
			wantKvs = limit
		}
		if int64(len(resp.Kvs)) != wantKvs {
			return failf("page %d: %d kvs, want %d", page, len(resp.Kvs), wantKvs)
		}
		if resp.More != (resp.Count > int64(len(resp.Kvs))) {
			return failf("page %d: more=%v with count=%d kvs=%d", page, resp.More, resp.Count, len(resp.Kvs))
		}
		if page > 0 && resp.Header.Revision < listRev {
			return failf("page %d: header revision %d < list revision %d", page, resp.Header.Revision, listRev)
		}
		for _, kv := range resp.Kvs {
			i := len(seen)
			if i >= len(keys) || string(kv.Key) != keys[i] {
				return failf("page %d: key %q at position %d, want %q", page, kv.Key, i, keys[min(i, len(keys)-1)])
			}
			if want := fmt.Sprintf("value-%03d", i); string(kv.Value) != want {
				return failf("key %s = %q at rev %d, want %q", kv.Key, kv.Value, listRev, want)
			}
			if kv.ModRevision > listRev {
				return failf("key %s mod_revision %d newer than the list revision %d", kv.Key, kv.ModRevision, listRev)
			}
			seen = append(seen, string(kv.Key))
		}
		if !resp.More {
			break
		}
		if page > 10 {
			return failf("more than 10 pages for 25 keys")
		}
		// kube: the next page starts right after the last key.
		key = string(append(bytes.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0))
	}
	e.observe("pages", pages)
	e.observe("list_revision", listRev)
	if len(seen) != len(keys) {
		return failf("listed %d keys, want %d", len(seen), len(keys))
	}
	// The latest state reflects the writes after the list.
	now, err := e.cli.Get(ctx, dir, clientv3.WithRange(end), clientv3.WithLimit(limit))
	if err != nil {
		return failf("latest list: %w", err)
	}
	if now.Count != 25 || !now.More || len(now.Kvs) != limit {
		return failf("latest list: count=%d more=%v kvs=%d, want 25/true/%d", now.Count, now.More, len(now.Kvs), limit)
	}
	return nil
}

func scenarioCountOnly(ctx context.Context, e *env) error {
	dir := e.prefix + "/events/"
	if _, _, err := fill(ctx, e, e.prefix+"/events", 17); err != nil {
		return err
	}
	if _, err := e.cli.Put(ctx, e.prefix+"/events0", "outside"); err != nil {
		return failf("put: %w", err)
	}
	resp, err := e.cli.Get(ctx, dir, clientv3.WithRange(clientv3.GetPrefixRangeEnd(dir)), clientv3.WithCountOnly())
	if err != nil {
		return failf("count: %w", err)
	}
	e.observe("count", resp.Count)
	e.observe("kvs", len(resp.Kvs))
	e.observe("more", resp.More)
	if resp.Count != 17 || len(resp.Kvs) != 0 {
		return failf("count-only: count=%d kvs=%d, want 17 and none", resp.Count, len(resp.Kvs))
	}
	// WithPrefix is the same range spelled the clientv3 way.
	p, err := e.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || p.Count != 17 {
		return failf("count-only with prefix: err=%v count=%v", err, p)
	}
	return nil
}

func scenarioKeysOnly(ctx context.Context, e *env) error {
	dir := e.prefix + "/leases/"
	keys, rev, err := fill(ctx, e, e.prefix+"/leases", 6)
	if err != nil {
		return err
	}
	resp, err := e.cli.Get(ctx, dir, clientv3.WithRange(clientv3.GetPrefixRangeEnd(dir)), clientv3.WithKeysOnly())
	if err != nil {
		return failf("keys-only: %w", err)
	}
	e.observe("count", resp.Count)
	if resp.Count != 6 || len(resp.Kvs) != 6 {
		return failf("keys-only: count=%d kvs=%d, want 6/6", resp.Count, len(resp.Kvs))
	}
	for i, kv := range resp.Kvs {
		if string(kv.Key) != keys[i] || len(kv.Value) != 0 {
			return failf("keys-only kv %d: key %q value %q", i, kv.Key, kv.Value)
		}
		if kv.ModRevision == 0 || kv.ModRevision > rev || kv.Version != 1 {
			return failf("keys-only kv %s: mod=%d version=%d", kv.Key, kv.ModRevision, kv.Version)
		}
	}
	// Keys-only with a limit, sorted descending by key (kube's "last key" probes do this).
	last, err := e.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return failf("keys-only descending: %w", err)
	}
	if len(last.Kvs) != 1 || string(last.Kvs[0].Key) != keys[5] || !last.More || last.Count != 6 {
		return failf("keys-only descending limit 1: %v count=%d more=%v", last.Kvs, last.Count, last.More)
	}
	return nil
}
