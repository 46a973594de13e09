//! The keyspace in etcd's backend format: a bbolt database with etcd 3.6's buckets
//! (`server/storage/schema`), so that `etcdctl snapshot save` from a ferrokv member gives a
//! file etcd can restore, and an etcd snapshot restores into a ferrokv keyspace.
//!
//! Mapping (etcd bucket ← ferrokv table):
//! - `key`: revision `main BE8 '_' sub BE8` (+ `'t'` for a tombstone) → `mvccpb.KeyValue`
//!   (a tombstone's value holds the key only) ← `history`, already in revision order.
//! - `lease`: lease id BE8 → `leasepb.Lease{ID, TTL, RemainingTTL}` ← `leases`.
//! - `meta`: `consistent_index`/`term` (BE8) ← applied index; `finishedCompactRev` and
//!   `scheduledCompactRev` (a revision key) ← compacted revision; `confState` (JSON) and the
//!   `members` bucket (id in hex → JSON) ← the member list; `storageVersion`.
//! - `auth`/`authUsers`/`authRoles`: `authEnabled`, `authRevision` BE8, `authpb.User`/`Role`
//!   by name ← the auth state entry.
//!
//! What etcd rebuilds on its own (`latest`, `key_index`, `lease_keys`) is derived again on
//! import. Membership is never imported: a restore always gets its members from its flags.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::Path;

use ferrokv_bbolt::{Reader, Writer};
use ferrokv_proto::ferrokvpb::AuthState;
use ferrokv_proto::{authpb, etcdserverpb as pb, mvccpb};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable};

use crate::record::{decode_history, encode_history, Header};
use crate::tables::*;
use crate::view::assemble;
use crate::{meta_applied, meta_i64, Error, Result, Store};

/// The storage version etcd 3.6 writes, and the cluster version we present.
const STORAGE_VERSION: &str = "3.6.0";
/// Free-form meta entries (see `WriteBatch::set_meta`) owned by the server.
const MEMBERS_META: &str = "members";
const AUTH_META: &str = "auth";

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

impl From<ferrokv_bbolt::Error> for Error {
    fn from(e: ferrokv_bbolt::Error) -> Error {
        match e {
            ferrokv_bbolt::Error::Corrupt(_) => Error::BadSnapshot(e.to_string()),
            _ => Error::Backend(e.to_string()),
        }
    }
}

/// etcd's revision key: main and sub big-endian around `'_'`, `'t'` marking a tombstone.
pub(crate) fn revision_key(main: u64, sub: u64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// etcd's `key` bucket value for one key revision: the `mvccpb.KeyValue`, of which a
/// tombstone keeps only the key.
pub(crate) fn etcd_value(h: &Header, key: &[u8], value: &[u8]) -> Vec<u8> {
    let kv = if h.tombstone {
        mvccpb::KeyValue {
            key: key.to_vec(),
            ..Default::default()
        }
    } else {
        mvccpb::KeyValue {
            key: key.to_vec(),
            create_revision: h.create_revision,
            mod_revision: h.mod_revision,
            version: h.version,
            value: value.to_vec(),
            lease: h.lease,
        }
    };
    kv.encode_to_vec()
}

fn parse_revision_key(k: &[u8]) -> Result<(u64, u64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => {
            return Err(Error::BadSnapshot(format!(
                "key bucket: {} byte key is not a revision",
                k.len()
            )))
        }
    };
    if k[8] != b'_' {
        return Err(Error::BadSnapshot(
            "key bucket: revision key without '_'".into(),
        ));
    }
    let be = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    };
    Ok((be(&k[..8]), be(&k[9..17]), tombstone))
}

impl Store {
    /// Writes the keyspace as an etcd backend database (bbolt) to `out`, from one read
    /// snapshot (writers are not blocked). Pages are written as the tables are read, so
    /// memory stays small whatever the keyspace size.
    pub fn export_etcd<W: Write + Seek>(&self, out: W) -> Result<W> {
        Ok(self.export_etcd_with_revision(out)?.0)
    }

    fn export_etcd_with_revision<W: Write + Seek>(&self, out: W) -> Result<(W, i64)> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let history = rtx.open_table(HISTORY)?;
        let chunks = rtx.open_table(CHUNKS)?;
        let leases = rtx.open_table(LEASES)?;
        let meta = rtx.open_table(META)?;
        let compacted = meta_i64(&meta, META_COMPACTED)?.unwrap_or(0);
        let revision = meta_i64(&meta, META_REVISION)?.unwrap_or(1);
        let applied = meta_applied(&meta)?;
        let user_meta = |key: &str| -> Result<Option<Vec<u8>>> {
            Ok(meta
                .get(user_meta_key(key).as_str())?
                .map(|g| g.value().to_vec()))
        };
        let members = match user_meta(MEMBERS_META)? {
            None => Vec::new(),
            Some(b) => {
                pb::MemberListResponse::decode(b.as_slice())
                    .map_err(|e| Error::Corrupt(format!("member list: {e}")))?
                    .members
            }
        };
        let auth = match user_meta(AUTH_META)? {
            None => None,
            Some(b) => Some(
                AuthState::decode(b.as_slice())
                    .map_err(|e| Error::Corrupt(format!("auth state: {e}")))?,
            ),
        };

        let mut w = Writer::new(out)?;
        // Buckets may be written in any order: the writer sorts the root.
        let mut b = w.bucket(b"key")?;
        for r in history.iter()? {
            let (k, rec) = r?;
            let (main, sub) = k.value();
            let (h, key, body) = decode_history(main, sub, rec.value())?;
            let value = assemble(&chunks, main, sub, body)?;
            b.put(
                &revision_key(main, u64::from(sub), h.tombstone),
                &etcd_value(&h, key, &value),
            )?;
        }
        b.finish()?;

        // bbolt orders by bytes: negative ids (never granted by etcd, but storable) sort last.
        let mut rows = Vec::new();
        for r in leases.iter()? {
            let (k, v) = r?;
            let (ttl, remaining_ttl) = v.value();
            let id = k.value();
            rows.push((
                (id as u64).to_be_bytes().to_vec(),
                LeasePb {
                    id,
                    ttl,
                    remaining_ttl,
                }
                .encode_to_vec(),
            ));
        }
        rows.sort();
        put_all(&mut w, b"lease", rows)?;

        let mut m = BTreeMap::new();
        if applied.0 > 0 {
            m.insert(
                b"consistent_index".to_vec(),
                applied.0.to_be_bytes().to_vec(),
            );
            m.insert(b"term".to_vec(), applied.1.to_be_bytes().to_vec());
        }
        if compacted > 0 {
            let rev = revision_key(compacted as u64, 0, false);
            m.insert(b"finishedCompactRev".to_vec(), rev.clone());
            m.insert(b"scheduledCompactRev".to_vec(), rev);
        }
        m.insert(
            b"storageVersion".to_vec(),
            STORAGE_VERSION.as_bytes().to_vec(),
        );
        let ids = |learner: bool| -> Vec<u64> {
            members
                .iter()
                .filter(|x| x.is_learner == learner)
                .map(|x| x.id)
                .collect()
        };
        if !members.is_empty() {
            let mut cs = serde_json::json!({ "voters": ids(false), "auto_leave": false });
            if !ids(true).is_empty() {
                cs["learners"] = serde_json::json!(ids(true));
            }
            m.insert(b"confState".to_vec(), cs.to_string().into_bytes());
        }
        put_all(&mut w, b"meta", m)?;

        let mut mb = BTreeMap::new();
        for x in &members {
            let mut j = serde_json::json!({ "id": x.id, "peerURLs": x.peer_ur_ls });
            if !x.name.is_empty() {
                j["name"] = x.name.clone().into();
            }
            if !x.client_ur_ls.is_empty() {
                j["clientURLs"] = serde_json::json!(x.client_ur_ls);
            }
            if x.is_learner {
                j["isLearner"] = true.into();
            }
            mb.insert(
                format!("{:x}", x.id).into_bytes(),
                j.to_string().into_bytes(),
            );
        }
        put_all(&mut w, b"members", mb)?;
        put_all(&mut w, b"members_removed", BTreeMap::new())?;
        put_all(
            &mut w,
            b"cluster",
            BTreeMap::from([(
                b"clusterVersion".to_vec(),
                STORAGE_VERSION.as_bytes().to_vec(),
            )]),
        )?;
        put_all(&mut w, b"alarm", BTreeMap::new())?;

        // A store that never saw an auth request is etcd's fresh auth store: off, revision 1.
        let auth = auth.unwrap_or(AuthState {
            enabled: false,
            revision: 1,
            ..Default::default()
        });
        put_all(
            &mut w,
            b"auth",
            BTreeMap::from([
                (b"authEnabled".to_vec(), vec![u8::from(auth.enabled)]),
                (
                    b"authRevision".to_vec(),
                    auth.revision.to_be_bytes().to_vec(),
                ),
            ]),
        )?;
        let users: BTreeMap<_, _> = auth
            .users
            .iter()
            .map(|u| (u.name.clone(), u.encode_to_vec()))
            .collect();
        put_all(&mut w, b"authUsers", users)?;
        let roles: BTreeMap<_, _> = auth
            .roles
            .iter()
            .map(|r| (r.name.clone(), r.encode_to_vec()))
            .collect();
        put_all(&mut w, b"authRoles", roles)?;
        Ok((w.finish()?, revision))
    }

    /// [`Store::export_etcd`] into a new file at `dest`, synced. Returns the file's length
    /// and the revision it holds.
    pub fn export_etcd_to(&self, dest: &Path) -> Result<(u64, i64)> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)?;
        let (file, revision) =
            self.export_etcd_with_revision(std::io::BufWriter::with_capacity(1 << 20, file))?;
        let file = file
            .into_inner()
            .map_err(|e| Error::Backend(e.error().to_string()))?;
        file.sync_all()?;
        let len = file.metadata()?.len();
        tracing::info!(dest = %dest.display(), bytes = len, revision, "wrote etcd-format keyspace snapshot");
        Ok((len, revision))
    }
}

fn put_all<W: Write + Seek>(
    w: &mut Writer<W>,
    name: &[u8],
    rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let mut b = w.bucket(name)?;
    for (k, v) in rows {
        b.put(&k, &v)?;
    }
    b.finish()?;
    Ok(())
}

/// What an etcd-format database holds, as `etcdutl snapshot status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdDbStatus {
    /// CRC-32C over every bucket name, key and value (etcdutl's `hash`).
    pub hash: u32,
    /// The main revision of the last entry of the `key` bucket.
    pub revision: i64,
    /// Entries in all buckets together (etcdutl 3.6 reports live keys instead: see
    /// [`Imported`] and `Store::range`).
    pub entries: i64,
    /// Size of the database (pages in use times page size).
    pub total_size: u64,
    /// `storageVersion` from the meta bucket, empty before etcd 3.6.
    pub version: String,
}

/// Reads every bucket of the database, checking each page, and reports what etcdutl does.
pub fn etcd_db_status(db: &Reader) -> Result<EtcdDbStatus> {
    let mut crc = Crc32c::default();
    let mut revision = 0;
    let mut entries = 0;
    let mut version = String::new();
    for name in db.buckets()? {
        crc.update(&name);
        let is_key = name == b"key";
        let is_meta = name == b"meta";
        db.for_each::<Error>(&name, |k, v| {
            crc.update(k);
            crc.update(v);
            if is_key {
                revision = parse_revision_key(k)?.0 as i64;
            }
            if is_meta && k == b"storageVersion" {
                version = String::from_utf8_lossy(v).into_owned();
            }
            entries += 1;
            Ok(())
        })?;
    }
    Ok(EtcdDbStatus {
        hash: crc.finish(),
        revision,
        entries,
        total_size: db.size(),
        version,
    })
}

/// What an import found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub revision: i64,
    pub compacted: i64,
    pub key_revisions: u64,
    pub leases: u64,
    pub applied: (u64, u64),
}

/// Builds a new keyspace at `dest` (which must not exist) from an etcd backend database:
/// history, the newest state of each key, the key index, leases with their attached keys,
/// compaction, applied index and auth. The member list is left out (a restore sets it).
/// Any malformed entry fails the import with [`Error::BadSnapshot`]; the caller removes
/// `dest` then.
pub fn import_etcd(db: &Reader, dest: &Path) -> Result<Imported> {
    if dest.exists() {
        return Err(Error::Backend(format!(
            "import destination {} already exists",
            dest.display()
        )));
    }
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::BadSnapshot(format!("{what}: {e}"));
    let out = crate::create_db(dest)?;
    let mut wtx = out.begin_write()?;
    crate::migrate::to_current(&wtx)?;
    let mut imported = Imported {
        revision: 1,
        compacted: 0,
        key_revisions: 0,
        leases: 0,
        applied: (0, 0),
    };
    {
        let mut latest = wtx.open_table(LATEST)?;
        let mut history = wtx.open_table(HISTORY)?;
        let mut chunks = wtx.open_table(CHUNKS)?;
        let mut index = wtx.open_table(KEY_INDEX)?;
        let mut leases = wtx.open_table(LEASES)?;
        let mut lease_keys = wtx.open_table(LEASE_KEYS)?;
        let mut meta = wtx.open_table(META)?;

        let mut last_main = 0u64;
        let found = db.for_each::<Error>(b"key", |k, v| {
            let (main, sub, tombstone) = parse_revision_key(k)?;
            let sub = u32::try_from(sub)
                .map_err(|_| bad("key bucket", &format!("sub revision {sub} too large")))?;
            let mut kv = mvccpb::KeyValue::decode(v).map_err(|e| bad("key bucket value", &e))?;
            let h = if tombstone {
                Header::tombstone(main as i64, sub)
            } else {
                Header {
                    tombstone: false,
                    create_revision: kv.create_revision,
                    mod_revision: main as i64,
                    sub,
                    version: kv.version,
                    lease: kv.lease,
                }
            };
            let key = std::mem::take(&mut kv.key);
            if key.is_empty() {
                return Err(bad("key bucket", &format!("revision {main}: empty key")));
            }
            let (rec, pieces) = encode_history(&h, &key, &kv.value);
            history.insert((main, sub), rec.as_slice())?;
            for (n, c) in pieces.iter().enumerate() {
                chunks.insert((main, sub, n as u32), *c)?;
            }
            // Revisions arrive in order, so the last write of a key is its newest state and
            // each earlier one goes to the key index as the next one replaces it.
            crate::write::set_latest(&mut latest, &mut index, &key, &h)?;
            last_main = main;
            imported.key_revisions += 1;
            Ok(())
        })?;
        if !found {
            return Err(Error::BadSnapshot(
                "not an etcd database: no \"key\" bucket".into(),
            ));
        }

        db.for_each::<Error>(b"lease", |_, v| {
            let l = LeasePb::decode(v).map_err(|e| bad("lease bucket", &e))?;
            leases.insert(l.id, (l.ttl, l.remaining_ttl))?;
            imported.leases += 1;
            Ok(())
        })?;
        // etcd reattaches each live key to its lease when it loads the keyspace.
        for r in latest.iter()? {
            let (k, rec) = r?;
            let h = crate::record::decode_latest(rec.value())?;
            if !h.tombstone && h.lease != 0 && leases.get(h.lease)?.is_some() {
                lease_keys.insert((h.lease, k.value()), ())?;
            }
        }

        let mut etcd_meta = BTreeMap::new();
        db.for_each::<Error>(b"meta", |k, v| {
            etcd_meta.insert(k.to_vec(), v.to_vec());
            Ok(())
        })?;
        let be8 = |name: &str| -> Result<Option<u64>> {
            match etcd_meta.get(name.as_bytes()) {
                None => Ok(None),
                Some(v) => <[u8; 8]>::try_from(v.as_slice())
                    .map(|b| Some(u64::from_be_bytes(b)))
                    .map_err(|_| bad("meta bucket", &format!("{name} is not 8 bytes"))),
            }
        };
        let compacted = match etcd_meta.get(b"finishedCompactRev".as_slice()) {
            None => 0,
            Some(v) => parse_revision_key(v)?.0 as i64,
        };
        let applied = (
            be8("consistent_index")?.unwrap_or(0),
            be8("term")?.unwrap_or(0),
        );
        // As etcd: the revision is the newest in the key bucket, unless compaction removed
        // everything up to a later one.
        let revision = (last_main as i64).max(compacted).max(1);
        meta.insert(META_REVISION, revision.to_le_bytes().as_slice())?;
        meta.insert(META_COMPACTED, compacted.to_le_bytes().as_slice())?;
        let mut a = Vec::with_capacity(16);
        a.extend_from_slice(&applied.0.to_le_bytes());
        a.extend_from_slice(&applied.1.to_le_bytes());
        meta.insert(META_APPLIED, a.as_slice())?;

        let mut auth = AuthState {
            enabled: false,
            revision: 1,
            ..Default::default()
        };
        let mut any_auth = false;
        db.for_each::<Error>(b"auth", |k, v| {
            any_auth = true;
            match k {
                b"authEnabled" => auth.enabled = v.first() == Some(&1),
                b"authRevision" => {
                    auth.revision = <[u8; 8]>::try_from(v)
                        .map(u64::from_be_bytes)
                        .map_err(|_| bad("auth bucket", &"authRevision is not 8 bytes"))?
                }
                _ => {}
            }
            Ok(())
        })?;
        db.for_each::<Error>(b"authUsers", |_, v| {
            any_auth = true;
            auth.users
                .push(authpb::User::decode(v).map_err(|e| bad("authUsers bucket", &e))?);
            Ok(())
        })?;
        db.for_each::<Error>(b"authRoles", |_, v| {
            any_auth = true;
            auth.roles
                .push(authpb::Role::decode(v).map_err(|e| bad("authRoles bucket", &e))?);
            Ok(())
        })?;
        if any_auth {
            meta.insert(
                user_meta_key(AUTH_META).as_str(),
                auth.encode_to_vec().as_slice(),
            )?;
        }
        imported.revision = revision;
        imported.compacted = compacted;
        imported.applied = applied;
    }
    wtx.set_durability(redb::Durability::Immediate)?;
    wtx.commit()?;
    tracing::info!(dest = %dest.display(), revision = imported.revision, keys = imported.key_revisions, "imported an etcd database");
    Ok(imported)
}

/// CRC-32C (Castagnoli), as etcd hashes (`HashKV`, etcdutl's snapshot status).
pub(crate) struct Crc32c {
    table: [u32; 256],
    crc: u32,
}

impl Default for Crc32c {
    fn default() -> Self {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc32c { table, crc: !0 }
    }
}

impl Crc32c {
    pub(crate) fn update(&mut self, data: &[u8]) {
        for b in data {
            self.crc = self.table[((self.crc ^ u32::from(*b)) & 0xff) as usize] ^ (self.crc >> 8);
        }
    }

    pub(crate) fn finish(&self) -> u32 {
        !self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        let mut c = Crc32c::default();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
    }

    #[test]
    fn revision_keys_sort_like_revisions() {
        let a = revision_key(2, 1, false);
        let b = revision_key(2, 1, true);
        let c = revision_key(3, 0, false);
        assert!(a < b && b < c);
        assert_eq!(parse_revision_key(&b).unwrap(), (2, 1, true));
        assert!(parse_revision_key(b"short").is_err());
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;

    fn put(b: &mut crate::WriteBatch<'_>, k: &str, v: &str, lease: i64) {
        b.put(&pb::PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            lease,
            ..Default::default()
        })
        .unwrap();
    }

    /// (revision, compacted, hash_kv, all keys, leases, keys of lease 7).
    type Everything = (
        i64,
        i64,
        (u32, i64, i64),
        pb::RangeResponse,
        Vec<crate::LeaseRecord>,
        Vec<Vec<u8>>,
    );

    fn everything(s: &Store) -> Everything {
        let all = pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        (
            s.current_revision(),
            s.compacted_revision(),
            s.hash_kv(0).unwrap(),
            s.range(&all).unwrap(),
            s.leases().unwrap(),
            s.lease_keys(7).unwrap(),
        )
    }

    #[test]
    fn export_then_import_keeps_the_keyspace() {
        let dir = tempfile::tempdir().unwrap();
        let src = Store::open(&dir.path().join("src")).unwrap();
        let mut b = src.write_batch().unwrap();
        b.lease_grant(7, 60).unwrap();
        for i in 0..3000 {
            put(&mut b, &format!("k{:05}", i % 1000), &format!("v{i}"), 0);
        }
        put(&mut b, "leased", "x", 7);
        b.delete_range(&pb::DeleteRangeRequest {
            key: b"k00010".to_vec(),
            range_end: b"k00020".to_vec(),
            ..Default::default()
        })
        .unwrap();
        b.compact(1500).unwrap();
        put(&mut b, "k00011", "back", 0);
        b.delete_range(&pb::DeleteRangeRequest {
            key: b"k00500".to_vec(),
            ..Default::default()
        })
        .unwrap();
        b.set_applied_index(99, 4).unwrap();
        b.commit(true).unwrap();

        let file = dir.path().join("etcd.db");
        src.export_etcd_to(&file).unwrap();
        if let Ok(keep) = std::env::var("FERROKV_KEEP_ETCD_DB") {
            std::fs::copy(&file, keep).unwrap();
        }
        let reader = Reader::open(&file).unwrap();
        let st = etcd_db_status(&reader).unwrap();
        assert_eq!(st.revision, src.current_revision());
        assert_eq!(st.version, "3.6.0");
        let dest = dir.path().join("dest");
        let imp = import_etcd(&reader, &dest).unwrap();
        assert_eq!(imp.applied, (99, 4));
        let dst = Store::open(&dest).unwrap();
        assert_eq!(everything(&src), everything(&dst));
        assert_eq!(dst.applied_index(), (99, 4));
        assert!(import_etcd(&reader, &dest).is_err());
    }
}
