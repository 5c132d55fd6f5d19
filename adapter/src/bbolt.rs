//! A writer of bbolt files (etcd's backend format, bbolt 1.3): what etcd's
//! Snapshot streams and `etcdctl snapshot restore` reads.
//!
//! The file is written front to back, each bucket as a B+tree built from
//! its entries in key order: leaves as they fill, then branch levels over
//! their first keys (kept in memory: one key per page). Pages 0 and 1 (the
//! two meta pages) and 2 (the free list, empty) are written last, once the
//! root bucket's page is known. Layout, little-endian as bbolt writes it on
//! x86-64 and arm64:
//! - page header: id u64, flags u16, count u16, overflow u32 (16 bytes);
//! - leaf element: flags u32, pos u32, ksize u32, vsize u32, with `pos`
//!   from the element to its key, the value right after the key;
//! - branch element: pos u32, ksize u32, child page id u64;
//! - meta: magic, version 2, page size, flags, root bucket (root page u64,
//!   sequence u64), free-list page, page count, txid, FNV-1a 64 checksum of
//!   what precedes it;
//! - a bucket in its parent: a leaf element with flag 1 whose value is the
//!   16-byte bucket header.

use std::io::{self, Seek, SeekFrom, Write};

pub const PAGE_SIZE: usize = 4096;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;

/// A bbolt file being written to `out`.
pub struct Bolt<W: Write + Seek> {
    out: W,
    /// The next free page id.
    next: u64,
}

/// One bucket being filled, in key order.
pub struct Bucket {
    /// Entries of the leaf being filled.
    entries: Vec<(Vec<u8>, Vec<u8>, u32)>,
    bytes: usize,
    /// (first key, page id) of each page written, one level up.
    pages: Vec<(Vec<u8>, u64)>,
}

fn u16_of(n: usize) -> io::Result<u16> {
    u16::try_from(n).map_err(|_| io::Error::other("too many elements in a bbolt page"))
}

fn u32_of(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("a bbolt entry over 4 GiB"))
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl<W: Write + Seek> Bolt<W> {
    /// Starts a file: pages 0 to 2 are reserved until [`Bolt::finish`].
    pub fn new(mut out: W) -> io::Result<Bolt<W>> {
        out.write_all(&[0; 3 * PAGE_SIZE])?;
        Ok(Bolt { out, next: 3 })
    }

    /// Writes one page (with overflow pages as it needs) and answers its id.
    fn page(&mut self, flags: u16, count: usize, elements: &[u8], data: &[u8]) -> io::Result<u64> {
        let len = HEADER + elements.len() + data.len();
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let id = self.next;
        let mut buf = Vec::with_capacity(pages * PAGE_SIZE);
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&u16_of(count)?.to_le_bytes());
        buf.extend_from_slice(&u32_of(pages - 1)?.to_le_bytes());
        buf.extend_from_slice(elements);
        buf.extend_from_slice(data);
        buf.resize(pages * PAGE_SIZE, 0);
        self.out.write_all(&buf)?;
        self.next += to_u64(pages);
        Ok(id)
    }

    /// A leaf page of `entries` (key, value, element flags).
    fn leaf(&mut self, entries: &[(Vec<u8>, Vec<u8>, u32)]) -> io::Result<u64> {
        let mut elements = Vec::with_capacity(entries.len() * ELEMENT);
        let mut data = Vec::new();
        for (i, (k, v, flags)) in entries.iter().enumerate() {
            // From this element to its key.
            let pos = (entries.len() - i) * ELEMENT + data.len();
            elements.extend_from_slice(&flags.to_le_bytes());
            elements.extend_from_slice(&u32_of(pos)?.to_le_bytes());
            elements.extend_from_slice(&u32_of(k.len())?.to_le_bytes());
            elements.extend_from_slice(&u32_of(v.len())?.to_le_bytes());
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        self.page(LEAF, entries.len(), &elements, &data)
    }

    /// A branch page over `children` (first key, page id).
    fn branch(&mut self, children: &[(Vec<u8>, u64)]) -> io::Result<u64> {
        let mut elements = Vec::with_capacity(children.len() * ELEMENT);
        let mut data = Vec::new();
        for (i, (k, id)) in children.iter().enumerate() {
            let pos = (children.len() - i) * ELEMENT + data.len();
            elements.extend_from_slice(&u32_of(pos)?.to_le_bytes());
            elements.extend_from_slice(&u32_of(k.len())?.to_le_bytes());
            elements.extend_from_slice(&id.to_le_bytes());
            data.extend_from_slice(k);
        }
        self.page(BRANCH, children.len(), &elements, &data)
    }

    pub fn bucket(&self) -> Bucket {
        Bucket {
            entries: Vec::new(),
            bytes: 0,
            pages: Vec::new(),
        }
    }

    /// Adds an entry; keys must come in increasing order.
    pub fn push(&mut self, b: &mut Bucket, key: Vec<u8>, value: Vec<u8>) -> io::Result<()> {
        self.push_flagged(b, key, value, 0)
    }

    fn push_flagged(
        &mut self,
        b: &mut Bucket,
        key: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    ) -> io::Result<()> {
        let size = ELEMENT + key.len() + value.len();
        if !b.entries.is_empty() && HEADER + b.bytes + size > PAGE_SIZE {
            self.flush_leaf(b)?;
        }
        b.bytes += size;
        b.entries.push((key, value, flags));
        Ok(())
    }

    fn flush_leaf(&mut self, b: &mut Bucket) -> io::Result<()> {
        let entries = std::mem::take(&mut b.entries);
        b.bytes = 0;
        let id = self.leaf(&entries)?;
        let first = entries.into_iter().next().map(|e| e.0).unwrap_or_default();
        b.pages.push((first, id));
        Ok(())
    }

    /// Writes what is left of the bucket and its branch levels; answers
    /// its root page.
    pub fn close(&mut self, mut b: Bucket) -> io::Result<u64> {
        if !b.entries.is_empty() || b.pages.is_empty() {
            self.flush_leaf(&mut b)?;
        }
        let mut level = b.pages;
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut page: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut bytes = 0;
            for (k, id) in level {
                let size = ELEMENT + k.len();
                if !page.is_empty() && HEADER + bytes + size > PAGE_SIZE {
                    let first = page[0].0.clone();
                    up.push((first, self.branch(&page)?));
                    page.clear();
                    bytes = 0;
                }
                bytes += size;
                page.push((k, id));
            }
            let first = page[0].0.clone();
            up.push((first, self.branch(&page)?));
            level = up;
        }
        Ok(level[0].1)
    }

    /// Writes the root bucket of `buckets` (name, root page; any order),
    /// the empty free list and the meta pages; answers the output.
    pub fn finish(mut self, mut buckets: Vec<(Vec<u8>, u64)>) -> io::Result<W> {
        buckets.sort();
        let entries: Vec<(Vec<u8>, Vec<u8>, u32)> = buckets
            .into_iter()
            .map(|(name, root)| {
                let mut header = root.to_le_bytes().to_vec();
                header.extend_from_slice(&0u64.to_le_bytes());
                (name, header, BUCKET_LEAF)
            })
            .collect();
        let root = self.leaf(&entries)?;
        let pages = self.next;
        let mut free = vec![0u8; PAGE_SIZE];
        free[..8].copy_from_slice(&2u64.to_le_bytes());
        free[8..10].copy_from_slice(&FREELIST.to_le_bytes());
        self.out.seek(SeekFrom::Start(0))?;
        for (id, txid) in [(0u64, 2u64), (1, 1)] {
            let mut m = Vec::with_capacity(64);
            m.extend_from_slice(&MAGIC.to_le_bytes());
            m.extend_from_slice(&VERSION.to_le_bytes());
            m.extend_from_slice(&u32_of(PAGE_SIZE)?.to_le_bytes());
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&root.to_le_bytes());
            m.extend_from_slice(&0u64.to_le_bytes());
            m.extend_from_slice(&2u64.to_le_bytes());
            m.extend_from_slice(&pages.to_le_bytes());
            m.extend_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&m);
            m.extend_from_slice(&sum.to_le_bytes());
            let mut page = vec![0u8; PAGE_SIZE];
            page[..8].copy_from_slice(&id.to_le_bytes());
            page[8..10].copy_from_slice(&META.to_le_bytes());
            page[HEADER..HEADER + m.len()].copy_from_slice(&m);
            self.out.write_all(&page)?;
        }
        self.out.write_all(&free)?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A bbolt file read page by page (nothing is kept but the page size and
/// the root): what `etcdsql import` reads etcd's snapshots with. Errors
/// name the page, its offset and the bucket.
pub struct Reader {
    file: std::fs::File,
    len: u64,
    page_size: u64,
    root: Node,
}

/// Where a bucket's entries are: a page, or inline in its parent's value.
#[derive(Clone)]
enum Node {
    Page(u64),
    Inline(Vec<u8>),
}

/// What [`Reader::for_each`] calls with each (key, value).
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), String> + 'a;
/// The same with the element's flags.
type VisitFlagged<'a> = dyn FnMut(&[u8], &[u8], u32) -> Result<(), String> + 'a;

/// A bucket of a [`Reader`].
pub struct BucketRef {
    name: String,
    node: Node,
}

impl Reader {
    /// Opens `path`: the newer of the two valid meta pages decides.
    pub fn open(path: &std::path::Path) -> Result<Reader, String> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let mut best: Option<(u64, u64, u64)> = None;
        let mut why = Vec::new();
        // Meta page 0 is at offset 0; page 1 at the page size it names.
        let mut head = [0u8; HEADER + 64];
        for probe in [0u64, 1] {
            let at = if probe == 0 {
                0
            } else {
                match best {
                    Some((_, size, _)) => size,
                    None => to_u64(PAGE_SIZE),
                }
            };
            if file.read_exact_at(&mut head, at).is_err() {
                why.push(format!(
                    "meta page {probe} at offset {at}: the file ends before it"
                ));
                continue;
            }
            let m = &head[HEADER..];
            let word = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().unwrap_or_default());
            let magic = u32::from_le_bytes(m[..4].try_into().unwrap_or_default());
            if magic != MAGIC {
                why.push(format!(
                    "meta page {probe} at offset {at}: not a bbolt file (magic {magic:#x})"
                ));
                continue;
            }
            if word(56) != fnv64a(&m[..56]) {
                why.push(format!(
                    "meta page {probe} at offset {at}: checksum mismatch"
                ));
                continue;
            }
            let size = u64::from(u32::from_le_bytes(m[8..12].try_into().unwrap_or_default()));
            let (root, txid) = (word(16), word(48));
            if best.is_none_or(|(_, _, t)| txid > t) {
                best = Some((root, size, txid));
            }
        }
        let Some((root, page_size, _)) = best else {
            return Err(format!("{}: {}", path.display(), why.join("; ")));
        };
        if !(512..=65536).contains(&page_size) {
            return Err(format!(
                "{}: page size {page_size} in the meta page",
                path.display()
            ));
        }
        Ok(Reader {
            file,
            len,
            page_size,
            root: Node::Page(root),
        })
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64, bucket: &str) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        let at = id.saturating_mul(self.page_size);
        let mut head = [0u8; HEADER];
        let short = |what: &str| {
            format!(
                "page {id} at offset {at} (bucket {bucket:?}): {what} (the file has {} bytes)",
                self.len
            )
        };
        self.file
            .read_exact_at(&mut head, at)
            .map_err(|_| short("the file ends before it"))?;
        let overflow = u64::from(u32::from_le_bytes(
            head[12..16].try_into().unwrap_or_default(),
        ));
        let size = (overflow + 1).saturating_mul(self.page_size);
        if at.saturating_add(size) > self.len {
            return Err(short("it runs past the end of the file"));
        }
        let mut buf = vec![0u8; usize::try_from(size).map_err(|_| short("too large"))?];
        self.file
            .read_exact_at(&mut buf, at)
            .map_err(|e| short(&e.to_string()))?;
        if u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()) != id {
            return Err(short("its header names another page"));
        }
        Ok(buf)
    }

    /// A top-level bucket, if the file has it.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRef>, String> {
        let mut found = None;
        self.walk(&self.root, "(root)", &mut |k, v, flags| {
            if flags & BUCKET_LEAF != 0 && k == name {
                found = Some(v.to_vec());
            }
            Ok(())
        })?;
        let name = String::from_utf8_lossy(name).into_owned();
        let Some(v) = found else { return Ok(None) };
        if v.len() < 16 {
            return Err(format!("bucket {name:?}: a header of {} bytes", v.len()));
        }
        let root = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
        let node = if root == 0 {
            Node::Inline(v[16..].to_vec())
        } else {
            Node::Page(root)
        };
        Ok(Some(BucketRef { name, node }))
    }

    /// Every entry of `b` in key order: (key, value).
    pub fn for_each(&self, b: &BucketRef, f: &mut Visit<'_>) -> Result<(), String> {
        self.walk(&b.node, &b.name, &mut |k, v, flags| {
            if flags & BUCKET_LEAF != 0 {
                return Ok(()); // a nested bucket: etcd has none
            }
            f(k, v)
        })
    }

    fn walk(&self, node: &Node, bucket: &str, f: &mut VisitFlagged<'_>) -> Result<(), String> {
        let (page, id) = match node {
            Node::Page(id) => (self.page(*id, bucket)?, *id),
            Node::Inline(p) => (p.clone(), 0),
        };
        let bad = |what: &str| format!("page {id} (bucket {bucket:?}): {what}");
        if page.len() < HEADER {
            return Err(bad("shorter than a page header"));
        }
        let flags = u16::from_le_bytes([page[8], page[9]]);
        let count = usize::from(u16::from_le_bytes([page[10], page[11]]));
        let field = |o: usize| -> Result<usize, String> {
            page.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_le_bytes(b) as usize)
                .ok_or_else(|| bad("an element beyond the page"))
        };
        for i in 0..count {
            let e = HEADER + i * ELEMENT;
            if flags & LEAF != 0 {
                let (eflags, pos, ks, vs) =
                    (field(e)?, field(e + 4)?, field(e + 8)?, field(e + 12)?);
                let k = e + pos;
                let kv = page
                    .get(k..k + ks + vs)
                    .ok_or_else(|| bad("a key or value beyond the page"))?;
                f(
                    &kv[..ks],
                    &kv[ks..],
                    u32::try_from(eflags).unwrap_or_default(),
                )?;
            } else if flags & BRANCH != 0 {
                let child = page
                    .get(e + 8..e + 16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .ok_or_else(|| bad("a branch element beyond the page"))?;
                if matches!(node, Node::Inline(_)) {
                    return Err(bad("an inline bucket with a branch page"));
                }
                self.walk(&Node::Page(child), bucket, f)?;
            } else {
                return Err(bad(&format!(
                    "neither a leaf nor a branch (flags {flags:#x})"
                )));
            }
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits (bbolt's meta checksum).
fn fnv64a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back the entries of a bucket rooted at `id` (leaves in order).
    fn walk(file: &[u8], id: u64, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        let at = usize::try_from(id).unwrap() * PAGE_SIZE;
        let p = &file[at..];
        let flags = u16::from_le_bytes([p[8], p[9]]);
        let count = usize::from(u16::from_le_bytes([p[10], p[11]]));
        let u32_at = |o: usize| {
            usize::try_from(u32::from_le_bytes(p[o..o + 4].try_into().unwrap())).unwrap()
        };
        for i in 0..count {
            let e = HEADER + i * ELEMENT;
            if flags == LEAF {
                let (pos, ks, vs) = (u32_at(e + 4), u32_at(e + 8), u32_at(e + 12));
                let k = p[e + pos..e + pos + ks].to_vec();
                let v = p[e + pos + ks..e + pos + ks + vs].to_vec();
                out.push((k, v));
            } else {
                assert_eq!(flags, BRANCH);
                let child = u64::from_le_bytes(p[e + 8..e + 16].try_into().unwrap());
                walk(file, child, out);
            }
        }
    }

    #[test]
    fn buckets_read_back_in_order() {
        let mut bolt = Bolt::new(std::io::Cursor::new(Vec::new())).unwrap();
        let mut b = bolt.bucket();
        let mut want = Vec::new();
        for i in 0..20_000u32 {
            let k = format!("key{i:08}").into_bytes();
            // Some values span pages.
            let v = vec![u8::try_from(i % 251).unwrap(); if i % 5000 == 7 { 9000 } else { 40 }];
            bolt.push(&mut b, k.clone(), v.clone()).unwrap();
            want.push((k, v));
        }
        let root = bolt.close(b).unwrap();
        let empty = bolt.bucket();
        let empty_root = bolt.close(empty).unwrap();
        let file = bolt
            .finish(vec![
                (b"key".to_vec(), root),
                (b"lease".to_vec(), empty_root),
            ])
            .unwrap()
            .into_inner();
        assert_eq!(file.len() % PAGE_SIZE, 0);
        // Meta page 0: magic, checksum, root bucket page.
        let meta = &file[HEADER..HEADER + 64];
        assert_eq!(u32::from_le_bytes(meta[..4].try_into().unwrap()), MAGIC);
        assert_eq!(
            u64::from_le_bytes(meta[56..64].try_into().unwrap()),
            fnv64a(&meta[..56])
        );
        let pages = u64::from_le_bytes(meta[40..48].try_into().unwrap());
        assert_eq!(pages, u64::try_from(file.len() / PAGE_SIZE).unwrap());
        let root_page = u64::from_le_bytes(meta[16..24].try_into().unwrap());
        let mut buckets = Vec::new();
        walk(&file, root_page, &mut buckets);
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0].0, b"key");
        let key_root = u64::from_le_bytes(buckets[0].1[..8].try_into().unwrap());
        let mut got = Vec::new();
        walk(&file, key_root, &mut got);
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        let lease_root = u64::from_le_bytes(buckets[1].1[..8].try_into().unwrap());
        let mut none = Vec::new();
        walk(&file, lease_root, &mut none);
        assert!(none.is_empty());

        // The reader reads it back; a truncated copy is refused by page.
        let path = std::env::temp_dir().join(format!("bbolt-test-{}", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        let r = Reader::open(&path).unwrap();
        let b = r.bucket(b"key").unwrap().expect("key bucket");
        let mut read = Vec::new();
        r.for_each(&b, &mut |k, v| {
            read.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert!(read == want);
        assert!(r.bucket(b"nope").unwrap().is_none());
        std::fs::write(&path, &file[..file.len() / 2]).unwrap();
        let r = Reader::open(&path).unwrap();
        let e = r.bucket(b"key").map(drop).unwrap_err();
        assert!(
            e.contains("bucket \"(root)\"") && e.contains("offset"),
            "{e}"
        );
        // A page of the key bucket cut off: named with its bucket.
        let cut = usize::try_from(key_root).unwrap() * PAGE_SIZE;
        let mut holed = file.clone();
        holed[cut..cut + PAGE_SIZE].fill(0);
        std::fs::write(&path, &holed).unwrap();
        let r = Reader::open(&path).unwrap();
        let b = r.bucket(b"key").unwrap().expect("key bucket");
        let e = r.for_each(&b, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.contains("bucket \"key\"") && e.contains("offset"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
