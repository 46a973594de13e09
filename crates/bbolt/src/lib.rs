//! `ferrokv-bbolt`: writes and reads the bbolt (`go.etcd.io/bbolt`) file format, the format
//! of etcd's backend database and therefore of `etcdctl snapshot save` files.
//!
//! Only what snapshot files need: a [`Writer`] that lays out a whole database bottom-up from
//! buckets whose keys arrive sorted (it never holds more than one leaf page plus the branch
//! keys in memory), and a [`Reader`] that walks the buckets of an existing file page by page
//! and refuses damaged files with a description of the damage. No transactions, no updates.
//!
//! The layout (little-endian, as bbolt writes it on every platform etcd ships for):
//!
//! ```text
//! page      = id u64 | flags u16 | count u16 | overflow u32 | data...   (flags: 1 branch,
//!             2 leaf, 4 meta, 0x10 freelist; a page spans 1 + overflow pages)
//! meta      = magic 0xED0CDAED u32 | version 2 u32 | page size u32 | flags u32
//!             | root bucket (root pgid u64, sequence u64) | freelist pgid u64
//!             | high-water pgid u64 | txid u64 | fnv-1a 64 of the 56 bytes before
//! leaf elem = flags u32 (1 = the value is a bucket) | pos u32 | ksize u32 | vsize u32
//! branch el = pos u32 | ksize u32 | child pgid u64
//! bucket    = root pgid u64 | sequence u64, then, when root is 0 (an inline bucket), the
//!             bucket's single leaf page right after it
//! ```
//!
//! `pos` counts from the element itself to its key; the value follows the key. Pages 0 and 1
//! are the two metas (the valid one with the higher txid wins), page 2 the freelist here.

mod reader;
mod writer;

pub use reader::Reader;
pub use writer::{BucketWriter, Writer};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bbolt: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a bbolt database or is damaged; the text says where.
    #[error("bbolt: {0}")]
    Corrupt(String),
    /// The caller broke the writer's contract (unsorted keys, a bucket named twice, ...).
    #[error("bbolt writer: {0}")]
    Misuse(String),
}

pub const PAGE_SIZE: usize = 4096;
pub(crate) const PAGE_HEADER: usize = 16;
pub(crate) const ELEMENT: usize = 16;
pub(crate) const BUCKET_HEADER: usize = 16;
pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
pub(crate) const BRANCH: u16 = 0x01;
pub(crate) const LEAF: u16 = 0x02;
pub(crate) const META: u16 = 0x04;
pub(crate) const FREELIST: u16 = 0x10;
pub(crate) const BUCKET_FLAG: u32 = 0x01;
/// Bytes of the meta struct covered by its checksum (everything before the checksum).
pub(crate) const META_SUMMED: usize = 56;
/// bbolt's largest key.
pub const MAX_KEY_SIZE: usize = 32768;

/// FNV-1a, 64 bits: bbolt's meta checksum.
pub(crate) fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether `head` (at least the first 64 bytes of a file) starts like a bbolt database: a
/// meta page with bbolt's magic and version. Cheap sniffing before a full [`Reader::open`].
pub fn looks_like_bbolt(head: &[u8]) -> bool {
    head.len() >= PAGE_HEADER + 8
        && u16::from_le_bytes([head[8], head[9]]) == META
        && u32::from_le_bytes([head[16], head[17], head[18], head[19]]) == MAGIC
        && u32::from_le_bytes([head[20], head[21], head[22], head[23]]) == VERSION
}

#[cfg(test)]
mod tests;
