//! Builds a bbolt file bottom-up: each bucket's leaves are written as they fill, in key
//! order, then the branch levels above them, then the root bucket's leaf, and last the
//! freelist and the two metas (placeholders until then), which name the root.

use std::io::{Seek, SeekFrom, Write};

use crate::{
    fnv64a, Error, Result, BRANCH, BUCKET_FLAG, BUCKET_HEADER, ELEMENT, FREELIST, LEAF, MAGIC,
    MAX_KEY_SIZE, META, PAGE_HEADER, PAGE_SIZE, VERSION,
};

/// A bucket this small (its one leaf, header included) is stored inside its parent's leaf,
/// as bbolt itself does below a quarter page.
const INLINE_MAX: usize = PAGE_SIZE / 4;

/// Writes a database to `out`, which must be empty and positioned at 0.
pub struct Writer<W: Write + Seek> {
    out: W,
    /// The next page id to allocate; pages are written in id order, so also the file length
    /// in pages.
    next_pgid: u64,
    /// (name, value in the root bucket: the bucket header and an inline page if any).
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<W: Write + Seek> Writer<W> {
    pub fn new(mut out: W) -> Result<Writer<W>> {
        // Metas and freelist are rewritten by `finish`; zeros keep the offsets right.
        out.write_all(&[0u8; 3 * PAGE_SIZE])?;
        Ok(Writer {
            out,
            next_pgid: 3,
            buckets: Vec::new(),
        })
    }

    /// Starts a top-level bucket. Its keys must be put in strictly ascending byte order, and
    /// it must be finished before the next one starts (the borrow enforces that).
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, W>> {
        if name.is_empty() || name.len() > MAX_KEY_SIZE {
            return Err(Error::Misuse(format!(
                "bucket name of {} bytes",
                name.len()
            )));
        }
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(Error::Misuse(format!(
                "bucket {:?} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(BucketWriter {
            w: self,
            name: name.to_vec(),
            leaf: Node::default(),
            leaves: Vec::new(),
            last: None,
        })
    }

    /// Writes the page(s) of `node` at the next page id; returns that id.
    fn write_node(&mut self, node: &Node, flags: u16) -> Result<u64> {
        let pgid = self.next_pgid;
        let bytes = node.page(pgid, flags)?;
        self.out.write_all(&bytes)?;
        self.next_pgid += (bytes.len() / PAGE_SIZE) as u64;
        Ok(pgid)
    }

    /// Writes the root bucket, the freelist and the metas; returns the output, flushed.
    pub fn finish(mut self) -> Result<W> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        let mut root = Node::default();
        for (name, value) in &buckets {
            root.push(name, value, BUCKET_FLAG)?;
        }
        // The root bucket (the list of top-level buckets) is one leaf even with many buckets:
        // a node larger than a page simply overflows.
        let root_pgid = self.write_node(&root, LEAF)?;
        let high_water = self.next_pgid;

        let mut head = vec![0u8; 3 * PAGE_SIZE];
        // Two metas of consecutive transactions naming the same root: either one opens it.
        for (i, txid) in [(0usize, 2u64), (1, 3)] {
            let page = &mut head[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            page_header(page, i as u64, META, 0, 0);
            let m = &mut page[PAGE_HEADER..];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[12..16].copy_from_slice(&0u32.to_le_bytes());
            m[16..24].copy_from_slice(&root_pgid.to_le_bytes());
            m[24..32].copy_from_slice(&0u64.to_le_bytes());
            m[32..40].copy_from_slice(&2u64.to_le_bytes());
            m[40..48].copy_from_slice(&high_water.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&m[..crate::META_SUMMED]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
        }
        // Every page is in use, so the freelist is empty.
        page_header(&mut head[2 * PAGE_SIZE..], 2, FREELIST, 0, 0);
        self.out.flush()?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&head)?;
        self.out
            .seek(SeekFrom::Start(high_water * PAGE_SIZE as u64))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One bucket being written. Dropping it without [`BucketWriter::finish`] leaves the bucket
/// out of the database (its pages stay unreferenced, which bbolt's check reports), so always
/// finish.
pub struct BucketWriter<'a, W: Write + Seek> {
    w: &'a mut Writer<W>,
    name: Vec<u8>,
    leaf: Node,
    /// (first key, page id) of every leaf written so far.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.is_empty() || key.len() > MAX_KEY_SIZE {
            return Err(Error::Misuse(format!("key of {} bytes", key.len())));
        }
        if u32::try_from(value.len()).is_err() {
            return Err(Error::Misuse(format!("value of {} bytes", value.len())));
        }
        if let Some(last) = &self.last {
            if key <= last.as_slice() {
                return Err(Error::Misuse(format!(
                    "keys of bucket {:?} out of order",
                    String::from_utf8_lossy(&self.name)
                )));
            }
        }
        let grown = self.leaf.size() + ELEMENT + key.len() + value.len();
        if !self.leaf.is_empty() && grown > PAGE_SIZE {
            self.flush_leaf()?;
        }
        self.leaf.push(key, value, 0)?;
        self.last = Some(key.to_vec());
        Ok(())
    }

    fn flush_leaf(&mut self) -> Result<()> {
        let leaf = std::mem::take(&mut self.leaf);
        let first = leaf.first_key().to_vec();
        let pgid = self.w.write_node(&leaf, LEAF)?;
        self.leaves.push((first, pgid));
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        let mut value = Vec::with_capacity(BUCKET_HEADER);
        if self.leaves.is_empty() && BUCKET_HEADER + self.leaf.size() <= INLINE_MAX {
            value.extend_from_slice(&[0u8; BUCKET_HEADER]);
            // bbolt reads an inline page at exactly the size of its elements.
            let page = self.leaf.page(0, LEAF)?;
            value.extend_from_slice(&page[..self.leaf.size()]);
        } else {
            if !self.leaf.is_empty() || self.leaves.is_empty() {
                self.flush_leaf()?;
            }
            let mut level = std::mem::take(&mut self.leaves);
            while level.len() > 1 {
                let mut next = Vec::new();
                let mut node = Node::default();
                let mut first: Option<Vec<u8>> = None;
                for (key, pgid) in level {
                    let grown = node.size() + ELEMENT + key.len();
                    if !node.is_empty() && grown > PAGE_SIZE {
                        let at = self.w.write_node(&node, BRANCH)?;
                        next.push((first.take().unwrap_or_default(), at));
                        node = Node::default();
                    }
                    if node.is_empty() {
                        first = Some(key.clone());
                    }
                    node.push_branch(&key, pgid);
                }
                let at = self.w.write_node(&node, BRANCH)?;
                next.push((first.take().unwrap_or_default(), at));
                level = next;
            }
            let root = level.first().map(|(_, p)| *p).unwrap_or_default();
            value.extend_from_slice(&root.to_le_bytes());
            value.extend_from_slice(&0u64.to_le_bytes());
        }
        let name = std::mem::take(&mut self.name);
        self.w.buckets.push((name, value));
        Ok(())
    }
}

/// The elements of one page before layout: (flags, key, value) for a leaf, (key, child) for
/// a branch (the value then holds the child id).
#[derive(Default)]
struct Node {
    elems: Vec<(u32, Vec<u8>, Vec<u8>)>,
    data: usize,
    branch: bool,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.elems.is_empty()
    }

    /// Bytes of the page before padding: header, elements, keys and values.
    fn size(&self) -> usize {
        PAGE_HEADER + self.elems.len() * ELEMENT + self.data
    }

    fn first_key(&self) -> &[u8] {
        self.elems
            .first()
            .map(|e| e.1.as_slice())
            .unwrap_or_default()
    }

    fn push(&mut self, key: &[u8], value: &[u8], flags: u32) -> Result<()> {
        if self.elems.len() == usize::from(u16::MAX) {
            return Err(Error::Misuse("more than 65535 elements in one page".into()));
        }
        self.data += key.len() + value.len();
        self.elems.push((flags, key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn push_branch(&mut self, key: &[u8], child: u64) {
        self.branch = true;
        self.data += key.len();
        self.elems
            .push((0, key.to_vec(), child.to_le_bytes().to_vec()));
    }

    /// The page bytes, padded to whole pages, with `overflow` set accordingly.
    fn page(&self, pgid: u64, flags: u16) -> Result<Vec<u8>> {
        let size = self.size();
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let overflow = u32::try_from(pages - 1)
            .map_err(|_| Error::Misuse(format!("a page of {size} bytes")))?;
        let mut buf = vec![0u8; pages * PAGE_SIZE];
        page_header(&mut buf, pgid, flags, self.elems.len() as u16, overflow);
        let mut data_at = PAGE_HEADER + self.elems.len() * ELEMENT;
        for (i, (eflags, key, value)) in self.elems.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = (data_at - at) as u32;
            let e = &mut buf[at..at + ELEMENT];
            if self.branch {
                e[0..4].copy_from_slice(&pos.to_le_bytes());
                e[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
                e[8..16].copy_from_slice(value);
                buf[data_at..data_at + key.len()].copy_from_slice(key);
                data_at += key.len();
            } else {
                e[0..4].copy_from_slice(&eflags.to_le_bytes());
                e[4..8].copy_from_slice(&pos.to_le_bytes());
                e[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
                e[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
                buf[data_at..data_at + key.len()].copy_from_slice(key);
                data_at += key.len();
                buf[data_at..data_at + value.len()].copy_from_slice(value);
                data_at += value.len();
            }
        }
        Ok(buf)
    }
}

fn page_header(buf: &mut [u8], pgid: u64, flags: u16, count: u16, overflow: u32) {
    buf[0..8].copy_from_slice(&pgid.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&count.to_le_bytes());
    buf[12..16].copy_from_slice(&overflow.to_le_bytes());
}
