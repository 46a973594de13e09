//! Normalising responses into comparable JSON: ids that differ between runs (cluster, member,
//! raft term, randomly chosen lease ids) are masked, everything clients can observe is kept.

use std::collections::HashMap;

use etcd_client::{
    DeleteResponse, Event, EventType, GetResponse, KeyValue, PutResponse, ResponseHeader,
    TxnOpResponse, TxnResponse,
};
use serde_json::{json, Value};

/// Replaces each distinct lease id with its order of first appearance, so two servers that pick
/// different ids for the same sequence of grants compare equal.
#[derive(Debug, Default)]
pub struct IdMasker {
    leases: HashMap<i64, usize>,
}

impl IdMasker {
    pub fn lease(&mut self, id: i64) -> Value {
        if id == 0 {
            return json!(0);
        }
        let n = self.leases.len() + 1;
        let idx = *self.leases.entry(id).or_insert(n);
        json!(format!("lease#{idx}"))
    }

    pub fn header(&self, h: Option<&ResponseHeader>) -> Value {
        // cluster_id, member_id and raft_term are per-deployment; only the revision is data.
        json!({ "revision": h.map(|h| h.revision()) })
    }

    pub fn kv(&mut self, kv: &KeyValue) -> Value {
        json!({
            "key": String::from_utf8_lossy(kv.key()),
            "value": String::from_utf8_lossy(kv.value()),
            "create_revision": kv.create_revision(),
            "mod_revision": kv.mod_revision(),
            "version": kv.version(),
            "lease": self.lease(kv.lease()),
        })
    }

    pub fn get(&mut self, r: &GetResponse) -> Value {
        let kvs: Vec<Value> = r.kvs().iter().map(|kv| self.kv(kv)).collect();
        json!({
            "header": self.header(r.header()),
            "kvs": kvs,
            "more": r.more(),
            "count": r.count(),
        })
    }

    pub fn put(&mut self, r: &PutResponse) -> Value {
        let prev = r.prev_key().map(|kv| self.kv(kv));
        json!({ "header": self.header(r.header()), "prev_kv": prev })
    }

    pub fn delete(&mut self, r: &DeleteResponse) -> Value {
        let prev: Vec<Value> = r.prev_kvs().iter().map(|kv| self.kv(kv)).collect();
        json!({
            "header": self.header(r.header()),
            "deleted": r.deleted(),
            "prev_kvs": prev,
        })
    }

    pub fn txn(&mut self, r: &TxnResponse) -> Value {
        let ops: Vec<Value> = r
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Put(p) => json!({ "put": self.put(p) }),
                TxnOpResponse::Get(g) => json!({ "range": self.get(g) }),
                TxnOpResponse::Delete(d) => json!({ "delete": self.delete(d) }),
                TxnOpResponse::Txn(t) => json!({ "txn": self.txn(t) }),
            })
            .collect();
        json!({
            "header": self.header(r.header()),
            "succeeded": r.succeeded(),
            "responses": ops,
        })
    }

    pub fn event(&mut self, e: &Event) -> Value {
        let ty = match e.event_type() {
            EventType::Put => "PUT",
            EventType::Delete => "DELETE",
        };
        let kv = e.kv().map(|kv| self.kv(kv));
        let prev = e.prev_kv().map(|kv| self.kv(kv));
        json!({ "type": ty, "kv": kv, "prev_kv": prev })
    }

    /// Either side of a call: the normalised response, or the gRPC code and message.
    pub fn outcome<T>(
        &mut self,
        r: &Result<T, etcd_client::Error>,
        f: impl FnOnce(&mut Self, &T) -> Value,
    ) -> Value {
        match r {
            Ok(v) => f(self, v),
            Err(e) => error_json(e),
        }
    }
}

/// `{"error": {"code": .., "message": ..}}` for a gRPC error, the text for anything else.
pub fn error_json(e: &etcd_client::Error) -> Value {
    match crate::client::grpc_error(e) {
        Some((code, msg)) => json!({ "error": { "code": format!("{code:?}"), "message": msg } }),
        None => json!({ "error": { "other": e.to_string() } }),
    }
}

/// Field names whose values differ per deployment in etcdctl `-w json` output.
const MASKED_FIELDS: &[&str] = &["cluster_id", "member_id", "raft_term", "ID", "leader"];

/// Zeroes per-deployment ids anywhere in an etcdctl JSON document.
pub fn mask_ids(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if MASKED_FIELDS.contains(&k.as_str()) && val.is_number() {
                    *val = json!(0);
                } else {
                    mask_ids(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask_ids),
        _ => {}
    }
}

/// Describes the first step where two recorded sequences differ, with both sides pretty
/// printed, or `None` when they are equal.
pub fn first_mismatch(steps: &[String], left: &[Value], right: &[Value]) -> Option<String> {
    let n = left.len().max(right.len());
    for i in 0..n {
        let (l, r) = (left.get(i), right.get(i));
        if l != r {
            let show = |v: Option<&Value>| {
                v.map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
                    .unwrap_or_else(|| "<missing>".into())
            };
            let step = steps.get(i).map(String::as_str).unwrap_or("?");
            return Some(format!(
                "first mismatch at step {i} ({step}):\n--- etcd\n{}\n+++ ferrokv\n{}",
                show(l),
                show(r)
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_masked_by_first_appearance() {
        let mut m = IdMasker::default();
        assert_eq!(m.lease(0), json!(0));
        assert_eq!(m.lease(77), json!("lease#1"));
        assert_eq!(m.lease(5), json!("lease#2"));
        assert_eq!(m.lease(77), json!("lease#1"));
    }

    #[test]
    fn mask_ids_zeroes_only_deployment_ids() {
        let mut v = json!({"header": {"cluster_id": 1, "member_id": 2, "revision": 3,
                           "raft_term": 4}, "members": [{"ID": 9, "name": "m1"}]});
        mask_ids(&mut v);
        assert_eq!(
            v,
            json!({"header": {"cluster_id": 0, "member_id": 0, "revision": 3, "raft_term": 0},
                   "members": [{"ID": 0, "name": "m1"}]})
        );
    }

    #[test]
    fn first_mismatch_names_the_step() {
        let steps = vec!["a".to_string(), "b".to_string()];
        assert!(first_mismatch(&steps, &[json!(1), json!(2)], &[json!(1), json!(2)]).is_none());
        let d = first_mismatch(&steps, &[json!(1), json!(2)], &[json!(1), json!(3)]);
        assert!(d.is_some_and(|d| d.contains("step 1 (b)")));
        assert!(first_mismatch(&steps, &[json!(1)], &[json!(1), json!(3)]).is_some());
    }
}
