package main

// Status, MemberList, typed errors, kube-style compaction and watching from a compacted
// revision.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-semver/semver"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"
)

func scenarioStatus(ctx context.Context, e *env) error {
	s, err := e.cli.Status(ctx, e.endpoint)
	if err != nil {
		return failf("status: %w", err)
	}
	e.observe("version", s.Version)
	e.observe("leader", fmt.Sprintf("%x", s.Leader))
	e.observe("member_id", fmt.Sprintf("%x", s.Header.MemberId))
	e.observe("raft_index", s.RaftIndex)
	e.observe("raft_term", s.RaftTerm)
	e.observe("db_size", s.DbSize)
	// kube-apiserver parses this with a semver parser and turns watch progress requests on
	// only for >= 3.5.13 (older etcd answered them before the watchers were synced).
	v, err := semver.NewVersion(s.Version)
	if err != nil {
		return failf("status version %q is not semver: %w", s.Version, err)
	}
	minV, err := semver.NewVersion(e.minVersion)
	if err != nil {
		return failf("--min-server-version %q: %w", e.minVersion, err)
	}
	if v.LessThan(*minV) {
		return failf("status version %s < %s", v, minV)
	}
	if s.Leader == 0 || s.Header.MemberId != s.Leader {
		return failf("single member: leader %x, member %x", s.Leader, s.Header.MemberId)
	}
	if s.Header.ClusterId == 0 || s.RaftTerm == 0 || s.RaftIndex == 0 || s.Header.Revision < 1 || s.DbSize <= 0 {
		return failf("status fields: %+v", s)
	}
	if s.IsLearner {
		return failf("single member reports itself as a learner")
	}
	return nil
}

func scenarioMemberList(ctx context.Context, e *env) error {
	ml, err := e.cli.MemberList(ctx)
	if err != nil {
		return failf("member list: %w", err)
	}
	s, err := e.cli.Status(ctx, e.endpoint)
	if err != nil {
		return failf("status: %w", err)
	}
	var members []map[string]any
	for _, m := range ml.Members {
		members = append(members, map[string]any{"name": m.Name, "peer_urls": m.PeerURLs,
			"client_urls": m.ClientURLs, "is_learner": m.IsLearner})
	}
	e.observe("members", members)
	if len(ml.Members) != 1 {
		return failf("%d members, want 1", len(ml.Members))
	}
	m := ml.Members[0]
	if m.ID != s.Header.MemberId || ml.Header.ClusterId != s.Header.ClusterId || ml.Header.MemberId != m.ID {
		return failf("member id %x / header member %x / status member %x, cluster %x vs %x",
			m.ID, ml.Header.MemberId, s.Header.MemberId, ml.Header.ClusterId, s.Header.ClusterId)
	}
	if m.Name == "" || len(m.PeerURLs) != 1 || m.IsLearner {
		return failf("member %+v", m)
	}
	found := false
	for _, u := range m.ClientURLs {
		found = found || strings.TrimRight(u, "/") == strings.TrimRight(e.endpoint, "/")
	}
	if !found {
		return failf("client urls %v do not include %s", m.ClientURLs, e.endpoint)
	}
	return nil
}

// errCase is one error the client must recognise: through clientv3 (typed, errors.Is) and
// on the raw gRPC call (exact status code and message).
type errCase struct {
	name   string
	want   error // rpctypes.ErrXxx (client side)
	wantPB error // rpctypes.ErrGRPCXxx (wire)
	client func(ctx context.Context) error
	raw    func(ctx context.Context) error
}

func scenarioErrors(ctx context.Context, e *env) error {
	kv := pb.NewKVClient(e.cli.ActiveConnection())
	key := e.prefix + "/k"
	var revs []int64
	for i := 1; i <= 3; i++ {
		r, err := e.cli.Put(ctx, key, fmt.Sprintf("v%d", i))
		if err != nil {
			return failf("put: %w", err)
		}
		revs = append(revs, r.Header.Revision)
	}
	if _, err := e.cli.Compact(ctx, revs[1]); err != nil {
		return failf("compact %d: %w", revs[1], err)
	}
	// Reading exactly at the compacted revision is allowed.
	at, err := e.cli.Get(ctx, key, clientv3.WithRev(revs[1]))
	if err != nil || len(at.Kvs) != 1 || string(at.Kvs[0].Value) != "v2" {
		return failf("get at the compacted revision: err=%v resp=%v", err, at)
	}
	future := revs[2] + 1000
	dup := e.prefix + "/dup"
	var many []clientv3.Op
	var manyPB []*pb.RequestOp
	for i := 0; i < 129; i++ {
		k := fmt.Sprintf("%s/many/%03d", e.prefix, i)
		many = append(many, clientv3.OpPut(k, "x"))
		manyPB = append(manyPB, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte("x")}}})
	}
	put := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte("x")}}}
	}
	missing := e.prefix + "/never-written"
	cases := []errCase{
		{"get compacted revision", rpctypes.ErrCompacted, rpctypes.ErrGRPCCompacted,
			func(ctx context.Context) error { _, err := e.cli.Get(ctx, key, clientv3.WithRev(revs[0])); return err },
			func(ctx context.Context) error {
				_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte(key), Revision: revs[0]})
				return err
			}},
		{"compact compacted revision", rpctypes.ErrCompacted, rpctypes.ErrGRPCCompacted,
			func(ctx context.Context) error { _, err := e.cli.Compact(ctx, revs[0]); return err },
			func(ctx context.Context) error {
				_, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: revs[1]})
				return err
			}},
		{"get future revision", rpctypes.ErrFutureRev, rpctypes.ErrGRPCFutureRev,
			func(ctx context.Context) error { _, err := e.cli.Get(ctx, key, clientv3.WithRev(future)); return err },
			func(ctx context.Context) error {
				_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte(key), Revision: future})
				return err
			}},
		{"compact future revision", rpctypes.ErrFutureRev, rpctypes.ErrGRPCFutureRev,
			func(ctx context.Context) error { _, err := e.cli.Compact(ctx, future); return err },
			func(ctx context.Context) error {
				_, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: future})
				return err
			}},
		{"txn duplicate put", rpctypes.ErrDuplicateKey, rpctypes.ErrGRPCDuplicateKey,
			func(ctx context.Context) error {
				_, err := e.cli.Txn(ctx).Then(clientv3.OpPut(dup, "1"), clientv3.OpPut(dup, "2")).Commit()
				return err
			},
			func(ctx context.Context) error {
				_, err := kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put(dup), put(dup)}})
				return err
			}},
		{"txn put and delete of one key", rpctypes.ErrDuplicateKey, rpctypes.ErrGRPCDuplicateKey,
			func(ctx context.Context) error {
				_, err := e.cli.Txn(ctx).Then(clientv3.OpPut(dup, "1"), clientv3.OpDelete(dup)).Commit()
				return err
			},
			func(ctx context.Context) error {
				_, err := kv.Txn(ctx, &pb.TxnRequest{Failure: []*pb.RequestOp{put(dup), {Request: &pb.RequestOp_RequestDeleteRange{
					RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(dup)}}}}})
				return err
			}},
		{"txn too many ops", rpctypes.ErrTooManyOps, rpctypes.ErrGRPCTooManyOps,
			func(ctx context.Context) error { _, err := e.cli.Txn(ctx).Then(many...).Commit(); return err },
			func(ctx context.Context) error {
				_, err := kv.Txn(ctx, &pb.TxnRequest{Failure: manyPB})
				return err
			}},
		{"put ignore_value on missing key", rpctypes.ErrKeyNotFound, rpctypes.ErrGRPCKeyNotFound,
			func(ctx context.Context) error {
				_, err := e.cli.Put(ctx, missing, "", clientv3.WithIgnoreValue())
				return err
			},
			func(ctx context.Context) error {
				_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte(missing), IgnoreValue: true})
				return err
			}},
		{"put ignore_value with a value", rpctypes.ErrValueProvided, rpctypes.ErrGRPCValueProvided,
			func(ctx context.Context) error {
				_, err := e.cli.Put(ctx, key, "x", clientv3.WithIgnoreValue())
				return err
			},
			func(ctx context.Context) error {
				_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte(key), Value: []byte("x"), IgnoreValue: true})
				return err
			}},
		{"put with unknown lease", rpctypes.ErrLeaseNotFound, rpctypes.ErrGRPCLeaseNotFound,
			func(ctx context.Context) error {
				_, err := e.cli.Put(ctx, key, "x", clientv3.WithLease(0x7e57_1ea5e))
				return err
			},
			func(ctx context.Context) error {
				_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte(key), Value: []byte("x"), Lease: 0x7e57_1ea5e})
				return err
			}},
		{"put empty key", rpctypes.ErrEmptyKey, rpctypes.ErrGRPCEmptyKey,
			func(ctx context.Context) error { _, err := e.cli.Put(ctx, "", "x"); return err },
			func(ctx context.Context) error { _, err := kv.Put(ctx, &pb.PutRequest{Value: []byte("x")}); return err }},
	}
	seen := map[string]string{}
	var problems []string
	for _, c := range cases {
		cerr := c.client(ctx)
		rerr := c.raw(ctx)
		st := status.Convert(rerr)
		seen[c.name] = fmt.Sprintf("client=%v | wire=%s %q", cerr, st.Code(), st.Message())
		wantSt := status.Convert(c.wantPB)
		if !errors.Is(cerr, c.want) {
			problems = append(problems, fmt.Sprintf("%s: client error %v, want errors.Is %v", c.name, cerr, c.want))
		}
		var typed rpctypes.EtcdError
		if errors.As(cerr, &typed) && typed.Code() != wantSt.Code() {
			problems = append(problems, fmt.Sprintf("%s: typed code %s, want %s", c.name, typed.Code(), wantSt.Code()))
		}
		if rerr == nil || st.Code() != wantSt.Code() || st.Message() != wantSt.Message() {
			problems = append(problems, fmt.Sprintf("%s: wire status %s %q, want %s %q", c.name, st.Code(), st.Message(),
				wantSt.Code(), wantSt.Message()))
		}
	}
	e.observe("errors", seen)
	// None of the failing requests may have written anything.
	for _, k := range []string{dup, missing, e.prefix + "/many/000"} {
		g, err := e.cli.Get(ctx, k)
		if err != nil || len(g.Kvs) != 0 {
			problems = append(problems, fmt.Sprintf("%s written by a failed request: err=%v resp=%v", k, err, g))
		}
	}
	// The limit is inclusive: exactly 128 ops are fine.
	if _, err := e.cli.Txn(ctx).Then(many[:128]...).Commit(); err != nil {
		problems = append(problems, fmt.Sprintf("txn with 128 ops: %v", err))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

const compactRevKey = "compact_rev_key"

// kubeCompact is k8s.io/apiserver/pkg/storage/etcd3/compact.go's compact(): bump the shared
// compact_rev_key only if nobody else did since version t, and compact only then.
func kubeCompact(ctx context.Context, cli *clientv3.Client, t, rev int64) (int64, int64, bool, error) {
	resp, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.Version(compactRevKey), "=", t),
	).Then(
		clientv3.OpPut(compactRevKey, strconv.FormatInt(rev, 10)),
	).Else(
		clientv3.OpGet(compactRevKey),
	).Commit()
	if err != nil {
		return t, rev, false, err
	}
	curRev := resp.Header.Revision
	if !resp.Succeeded {
		o, err := elseObject(resp)
		if err != nil {
			return t, rev, false, err
		}
		if len(o.Kvs) != 1 {
			return t, rev, false, failf("compact txn else: %d kvs for %s", len(o.Kvs), compactRevKey)
		}
		return o.Kvs[0].Version, curRev, false, nil
	}
	if rev == 0 {
		return t + 1, curRev, true, nil
	}
	if _, err := cli.Compact(ctx, rev); err != nil {
		return t + 1, curRev, true, err
	}
	return t + 1, curRev, true, nil
}

func scenarioCompactionKube(ctx context.Context, e *env) error {
	g, err := e.cli.Get(ctx, compactRevKey)
	if err != nil {
		return failf("get %s: %w", compactRevKey, err)
	}
	var t int64
	if len(g.Kvs) == 1 {
		t = g.Kvs[0].Version
	}
	// First round: nothing to compact yet, only remember the revision.
	t1, rev1, ok, err := kubeCompact(ctx, e.cli, t, 0)
	if err != nil || !ok || t1 != t+1 {
		return failf("first compact round: t=%d ok=%v err=%v", t1, ok, err)
	}
	// Another apiserver with a stale view loses and learns the current version.
	t2, _, ok, err := kubeCompact(ctx, e.cli, t, rev1)
	if err != nil || ok || t2 != t1 {
		return failf("stale compact round: t=%d ok=%v err=%v, want t=%d and no success", t2, ok, err, t1)
	}
	key := e.prefix + "/k"
	p1, err := e.cli.Put(ctx, key, "old")
	if err != nil {
		return failf("put: %w", err)
	}
	p2, err := e.cli.Put(ctx, key, "new")
	if err != nil {
		return failf("put: %w", err)
	}
	t3, _, ok, err := kubeCompact(ctx, e.cli, t1, p2.Header.Revision)
	e.observe("compacted_revision", p2.Header.Revision)
	if err != nil || !ok || t3 != t1+1 {
		return failf("compact round at %d: t=%d ok=%v err=%v", p2.Header.Revision, t3, ok, err)
	}
	cur, err := e.cli.Get(ctx, compactRevKey)
	if err != nil || len(cur.Kvs) != 1 || cur.Kvs[0].Version != t3 || string(cur.Kvs[0].Value) != strconv.FormatInt(p2.Header.Revision, 10) {
		return failf("%s after compaction: err=%v resp=%v", compactRevKey, err, cur)
	}
	// The checks after the compaction are independent: report every one that fails.
	var problems []string
	if _, err := e.cli.Get(ctx, key, clientv3.WithRev(p1.Header.Revision)); !errors.Is(err, rpctypes.ErrCompacted) {
		problems = append(problems, fmt.Sprintf("read below the compaction: %v, want ErrCompacted", err))
	}
	at, err := e.cli.Get(ctx, key, clientv3.WithRev(p2.Header.Revision))
	if err != nil || len(at.Kvs) != 1 || string(at.Kvs[0].Value) != "new" {
		problems = append(problems, fmt.Sprintf("read at the compaction revision: err=%v resp=%v", err, at))
	}
	if _, err := e.cli.Compact(ctx, p2.Header.Revision); !errors.Is(err, rpctypes.ErrCompacted) {
		problems = append(problems, fmt.Sprintf("compacting again: %v, want ErrCompacted", err))
	}
	// The next kube round (5 minutes later) compacts further.
	p3, err := e.cli.Put(ctx, key, "newer")
	if err != nil {
		return failf("put: %w", err)
	}
	t4, _, ok, err := kubeCompact(ctx, e.cli, t3, p3.Header.Revision)
	if err != nil || !ok || t4 != t3+1 {
		problems = append(problems, fmt.Sprintf("second compact round at %d: t=%d ok=%v err=%v", p3.Header.Revision, t4, ok, err))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func scenarioWatchCompacted(ctx context.Context, e *env) error {
	dir := e.prefix + "/w/"
	p1, err := e.cli.Put(ctx, dir+"a", "1")
	if err != nil {
		return failf("put: %w", err)
	}
	p2, err := e.cli.Put(ctx, dir+"a", "2")
	if err != nil {
		return failf("put: %w", err)
	}
	compactAt := p2.Header.Revision
	if _, err := e.cli.Compact(ctx, compactAt, clientv3.WithCompactPhysical()); err != nil {
		return failf("compact: %w", err)
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := e.cli.Watch(wctx, dir, clientv3.WithPrefix(), clientv3.WithRev(p1.Header.Revision), clientv3.WithPrevKV())
	select {
	case wr, ok := <-wch:
		if !ok {
			return failf("watch closed without a response")
		}
		e.observe("compact_revision", wr.CompactRevision)
		e.observe("canceled", wr.Canceled)
		e.observe("error", fmt.Sprint(wr.Err()))
		if !errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			return failf("watch from compacted revision %d: err=%v, want ErrCompacted", p1.Header.Revision, wr.Err())
		}
		if wr.CompactRevision != compactAt || !wr.Canceled || len(wr.Events) != 0 {
			return failf("compacted watch response: compact_revision=%d canceled=%v events=%d, want %d/true/0",
				wr.CompactRevision, wr.Canceled, len(wr.Events), compactAt)
		}
	case <-time.After(10 * time.Second):
		return failf("no response to a watch from a compacted revision")
	}
	// The channel closes after the compaction response.
	select {
	case wr, ok := <-wch:
		if ok {
			return failf("compacted watch went on: %+v", wr)
		}
	case <-time.After(10 * time.Second):
		return failf("compacted watch channel not closed")
	}
	// Starting exactly at the compacted revision works and replays it (kube relists and
	// resumes from the compaction point).
	wch2 := e.cli.Watch(wctx, dir, clientv3.WithPrefix(), clientv3.WithRev(compactAt), clientv3.WithPrevKV())
	got, err := collect(ctx, wch2, 1, 10*time.Second)
	if err != nil {
		return failf("watch at the compacted revision: %w", err)
	}
	if x := flatten(got[0]); x != (ev{Type: "PUT", Key: dir + "a", Value: "2", ModRev: compactAt, HasPrev: true, PrevVal: "1"}) {
		// etcd cannot return the prev kv of an event at the compaction revision once the
		// older version is gone; accept it missing but nothing else different.
		x.HasPrev, x.PrevVal = true, "1"
		if x != (ev{Type: "PUT", Key: dir + "a", Value: "2", ModRev: compactAt, HasPrev: true, PrevVal: "1"}) {
			return failf("event at the compacted revision: %v", flatten(got[0]))
		}
		e.observe("prev_kv_at_compaction", "missing")
	}
	return nil
}
