//! Reads a bbolt file page by page (`pread`, never the whole file in memory) and checks
//! every page it touches: its id, its type, that it lies inside the file and that its
//! elements lie inside it, so a truncated or damaged file gives an error naming the page.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{
    fnv64a, Error, Result, BRANCH, BUCKET_FLAG, BUCKET_HEADER, ELEMENT, LEAF, MAGIC, META,
    META_SUMMED, PAGE_HEADER, VERSION,
};

/// Called with (element flags, key, value) for each leaf element in order.
type Visit<'f, E> = dyn FnMut(u32, &[u8], &[u8]) -> std::result::Result<(), E> + 'f;

/// Pages deeper than this mean a cycle in a damaged file (bbolt trees are a few levels).
const MAX_DEPTH: usize = 64;

pub struct Reader {
    file: File,
    /// Bytes of the file that belong to the database (a snapshot's hash trailer excluded).
    len: u64,
    page_size: u64,
    root: u64,
    high_water: u64,
    txid: u64,
}

struct Meta {
    page_size: u64,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// One parsed page: its bytes (all of its pages) and element count.
struct Page {
    id: u64,
    flags: u16,
    count: usize,
    buf: Vec<u8>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Reader::new(file, len)
    }

    /// Reads the database in the first `len` bytes of `file`.
    pub fn new(file: File, len: u64) -> Result<Reader> {
        let mut metas = Vec::new();
        let mut errors = Vec::new();
        // The first meta tells the page size; the second is found with it (or, if the first
        // is damaged, at the usual 4096).
        let first = read_meta(&file, len, 0, None);
        let second_at = match &first {
            Ok(m) => m.page_size,
            Err(_) => crate::PAGE_SIZE as u64,
        };
        for m in [first, read_meta(&file, len, second_at, Some(1))] {
            match m {
                Ok(m) => metas.push(m),
                Err(e) => errors.push(e),
            }
        }
        let Some(meta) = metas.into_iter().max_by_key(|m| m.txid) else {
            return Err(Error::Corrupt(format!(
                "not a bbolt database: {}",
                errors.join("; ")
            )));
        };
        if meta.high_water.saturating_mul(meta.page_size) > len {
            return Err(Error::Corrupt(format!(
                "file is truncated: its meta names {} pages of {} bytes ({} bytes), the file has {len}",
                meta.high_water,
                meta.page_size,
                meta.high_water.saturating_mul(meta.page_size)
            )));
        }
        Ok(Reader {
            file,
            len,
            page_size: meta.page_size,
            root: meta.root,
            high_water: meta.high_water,
            txid: meta.txid,
        })
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The transaction id of the meta in use.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// The database's size as bbolt reports it (high-water page times page size).
    pub fn size(&self) -> u64 {
        self.high_water * self.page_size
    }

    /// Names of the top-level buckets, in order.
    pub fn buckets(&self) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.walk::<Error>(self.root, 0, &mut |flags, k, _| {
            if flags & BUCKET_FLAG != 0 {
                names.push(k.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls `f` with every key and value of top-level bucket `name`, in key order (nested
    /// buckets inside it are skipped). Returns false if there is no such bucket.
    pub fn for_each<E: From<Error>>(
        &self,
        name: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<bool, E> {
        let Some(header) = self.bucket_value(name)? else {
            return Ok(false);
        };
        let mut visit = |flags: u32, k: &[u8], v: &[u8]| -> std::result::Result<(), E> {
            if flags & BUCKET_FLAG == 0 {
                f(k, v)?;
            }
            Ok(())
        };
        let root = u64::from_le_bytes(header[0..8].try_into().map_err(|_| short(name))?);
        if root == 0 {
            let page = Page::parse(header[BUCKET_HEADER..].to_vec(), 0)?;
            if page.flags != LEAF {
                return Err(Error::Corrupt(format!(
                    "inline bucket {:?} is not a leaf page",
                    String::from_utf8_lossy(name)
                ))
                .into());
            }
            page.leaf_elements(&mut visit)?;
        } else {
            self.walk(root, 0, &mut visit)?;
        }
        Ok(true)
    }

    /// The value of bucket `name` in the root bucket (its header, and inline page if any).
    fn bucket_value(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.walk::<Error>(self.root, 0, &mut |flags, k, v| {
            if flags & BUCKET_FLAG != 0 && k == name {
                if v.len() < BUCKET_HEADER {
                    return Err(short(name));
                }
                found = Some(v.to_vec());
            }
            Ok(())
        })?;
        Ok(found)
    }

    fn walk<E: From<Error>>(
        &self,
        pgid: u64,
        depth: usize,
        f: &mut Visit<'_, E>,
    ) -> std::result::Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(
                Error::Corrupt(format!("page {pgid}: tree deeper than {MAX_DEPTH}")).into(),
            );
        }
        let page = self.page(pgid)?;
        match page.flags {
            LEAF => page.leaf_elements(f),
            BRANCH => {
                for child in page.branch_children()? {
                    self.walk(child, depth + 1, f)?;
                }
                Ok(())
            }
            other => Err(Error::Corrupt(format!(
                "page {pgid}: expected a branch or leaf page, found type {other:#x}"
            ))
            .into()),
        }
    }

    fn page(&self, pgid: u64) -> Result<Page> {
        if pgid < 2 || pgid >= self.high_water {
            return Err(Error::Corrupt(format!(
                "page {pgid} is out of bounds (the database has {} pages)",
                self.high_water
            )));
        }
        let at = pgid * self.page_size;
        let mut head = [0u8; PAGE_HEADER];
        read_exact_at(&self.file, self.len, &mut head, at)?;
        let overflow = u64::from(u32::from_le_bytes(
            head[12..16].try_into().unwrap_or([0; 4]),
        ));
        if pgid + overflow >= self.high_water {
            return Err(Error::Corrupt(format!(
                "page {pgid}: its {overflow} overflow pages run past the end of the database"
            )));
        }
        let mut buf = vec![0u8; ((overflow + 1) * self.page_size) as usize];
        read_exact_at(&self.file, self.len, &mut buf, at)?;
        Page::parse(buf, pgid)
    }
}

fn short(name: &[u8]) -> Error {
    Error::Corrupt(format!(
        "bucket {:?}: value shorter than a bucket header",
        String::from_utf8_lossy(name)
    ))
}

fn read_exact_at(file: &File, len: u64, buf: &mut [u8], at: u64) -> Result<()> {
    if at + buf.len() as u64 > len {
        return Err(Error::Corrupt(format!(
            "file is truncated: {} bytes needed at offset {at}, the file has {len}",
            buf.len()
        )));
    }
    file.read_exact_at(buf, at)?;
    Ok(())
}

fn read_meta(file: &File, len: u64, at: u64, want_id: Option<u64>) -> Result<Meta, String> {
    let which = if at == 0 { "first meta" } else { "second meta" };
    let mut buf = [0u8; PAGE_HEADER + 64];
    read_exact_at(file, len, &mut buf, at).map_err(|e| format!("{which}: {e}"))?;
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let m = PAGE_HEADER;
    if u32_at(m) != MAGIC {
        return Err(format!("{which}: no bbolt magic"));
    }
    if u32_at(m + 4) != VERSION {
        return Err(format!("{which}: bbolt version {} (want 2)", u32_at(m + 4)));
    }
    if u16::from_le_bytes([buf[8], buf[9]]) != META {
        return Err(format!("{which}: not a meta page"));
    }
    let sum = fnv64a(&buf[m..m + META_SUMMED]);
    if sum != u64_at(m + 56) {
        return Err(format!("{which}: checksum mismatch"));
    }
    if let Some(id) = want_id {
        if u64_at(0) != id {
            return Err(format!("{which}: page id {} (want {id})", u64_at(0)));
        }
    }
    let page_size = u64::from(u32_at(m + 8));
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("{which}: page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: u64_at(m + 16),
        high_water: u64_at(m + 40),
        txid: u64_at(m + 48),
    })
}

impl Page {
    fn parse(buf: Vec<u8>, want_id: u64) -> Result<Page> {
        if buf.len() < PAGE_HEADER {
            return Err(Error::Corrupt(format!(
                "page {want_id}: shorter than its header"
            )));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&buf[0..8]);
        let id = u64::from_le_bytes(id);
        if id != want_id {
            return Err(Error::Corrupt(format!(
                "page {want_id}: header says page {id}"
            )));
        }
        let flags = u16::from_le_bytes([buf[8], buf[9]]);
        let count = usize::from(u16::from_le_bytes([buf[10], buf[11]]));
        if PAGE_HEADER + count * ELEMENT > buf.len() {
            return Err(Error::Corrupt(format!(
                "page {id}: {count} elements do not fit in it"
            )));
        }
        Ok(Page {
            id,
            flags,
            count,
            buf,
        })
    }

    fn slice(&self, at: usize, len: usize) -> Result<&[u8]> {
        at.checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .map(|end| &self.buf[at..end])
            .ok_or_else(|| {
                Error::Corrupt(format!("page {}: an element runs past the page", self.id))
            })
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.buf[at],
            self.buf[at + 1],
            self.buf[at + 2],
            self.buf[at + 3],
        ])
    }

    fn leaf_elements<E: From<Error>>(&self, f: &mut Visit<'_, E>) -> std::result::Result<(), E> {
        let mut last: Option<&[u8]> = None;
        for i in 0..self.count {
            let at = PAGE_HEADER + i * ELEMENT;
            let flags = self.u32_at(at);
            let pos = self.u32_at(at + 4) as usize;
            let ksize = self.u32_at(at + 8) as usize;
            let vsize = self.u32_at(at + 12) as usize;
            let key = self.slice(at + pos, ksize)?;
            let value = self.slice(at + pos + ksize, vsize)?;
            if last.is_some_and(|l| l >= key) {
                return Err(Error::Corrupt(format!("page {}: keys out of order", self.id)).into());
            }
            last = Some(key);
            f(flags, key, value)?;
        }
        Ok(())
    }

    fn branch_children(&self) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(self.count);
        for i in 0..self.count {
            let at = PAGE_HEADER + i * ELEMENT;
            let mut id = [0u8; 8];
            id.copy_from_slice(self.slice(at + 8, 8)?);
            out.push(u64::from_le_bytes(id));
        }
        Ok(out)
    }
}
