//! Permission checks as etcd makes them: a request range is permitted when the union of the
//! ranges the user's roles grant for that access covers it entirely; the root role permits
//! everything. Pure functions over one [`AuthData`] snapshot.

use ferrokv_proto::authpb::permission::Type as PermType;
use ferrokv_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};

use super::{has_root_role, AuthData};
use crate::error::{Error, Result};

/// One user's view of the auth store, for checking requests.
pub struct AuthView<'a> {
    pub data: &'a AuthData,
    /// "" when the request carried no token (etcd then answers "user name is empty").
    pub user: &'a str,
}

/// `[start, end)`; `None` as the end means "to the end of the keyspace".
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// A key/range_end pair as an interval: an empty end is the single key, `"\0"` is open ended.
fn interval(key: &[u8], end: &[u8]) -> Interval {
    if end.is_empty() {
        let mut next = key.to_vec();
        next.push(0);
        (key.to_vec(), Some(next))
    } else if end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(end.to_vec()))
    }
}

/// etcd refuses to grant an empty or inverted range ("invalid auth management").
pub fn is_valid_range(key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() || end == [0] {
        return true;
    }
    key < end
}

fn end_le(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a <= b,
    }
}

impl AuthView<'_> {
    /// etcd's `IsAdminPermitted`.
    pub fn admin(&self) -> Result<()> {
        if !self.data.enabled {
            return Ok(());
        }
        if self.user.is_empty() {
            return Err(Error::UserEmpty);
        }
        let user = self.data.users.get(self.user).ok_or(Error::UserNotFound)?;
        if !has_root_role(user) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }

    pub fn is_admin(&self) -> bool {
        self.admin().is_ok()
    }

    /// etcd's `isOpPermitted`.
    fn permitted(&self, key: &[u8], end: &[u8], want: PermType) -> Result<()> {
        if !self.data.enabled {
            return Ok(());
        }
        if self.user.is_empty() {
            return Err(Error::UserEmpty);
        }
        let user = self
            .data
            .users
            .get(self.user)
            .ok_or(Error::PermissionDenied)?;
        if has_root_role(user) {
            return Ok(());
        }
        let mut granted: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|r| self.data.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| {
                let t = PermType::try_from(p.perm_type).unwrap_or(PermType::Read);
                t == PermType::Readwrite || t == want
            })
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        granted.sort();
        let (start, end) = interval(key, end);
        // Merge touching/overlapping grants and look for one that covers the request.
        let mut merged: Vec<Interval> = Vec::new();
        for (s, e) in granted {
            match merged.last_mut() {
                Some((_, last_end)) if last_end.as_ref().is_none_or(|le| s <= *le) => {
                    if !end_le(&e, last_end) {
                        *last_end = e;
                    }
                }
                _ => merged.push((s, e)),
            }
        }
        if merged.iter().any(|(s, e)| *s <= start && end_le(&end, e)) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    pub fn range(&self, key: &[u8], end: &[u8]) -> Result<()> {
        self.permitted(key, end, PermType::Read)
    }

    pub fn write(&self, key: &[u8], end: &[u8]) -> Result<()> {
        self.permitted(key, end, PermType::Write)
    }

    pub fn range_request(&self, r: &RangeRequest) -> Result<()> {
        self.range(&r.key, &r.range_end)
    }

    /// A put with `prev_kv` reads the key as well.
    pub fn put(&self, r: &PutRequest) -> Result<()> {
        self.write(&r.key, &[])?;
        if r.prev_kv {
            self.range(&r.key, &[])?;
        }
        Ok(())
    }

    pub fn delete(&self, r: &DeleteRangeRequest) -> Result<()> {
        self.write(&r.key, &r.range_end)?;
        if r.prev_kv {
            self.range(&r.key, &r.range_end)?;
        }
        Ok(())
    }

    /// Every compare reads its key; every op of both branches is checked.
    pub fn txn(&self, t: &TxnRequest) -> Result<()> {
        for c in &t.compare {
            self.range(&c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(t.failure.iter()) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => self.range_request(r)?,
                Some(request_op::Request::RequestPut(r)) => self.put(r)?,
                Some(request_op::Request::RequestDeleteRange(r)) => self.delete(r)?,
                Some(request_op::Request::RequestTxn(r)) => self.txn(r)?,
                None => {}
            }
        }
        Ok(())
    }
}
