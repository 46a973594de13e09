use super::*;
use std::io::Cursor;

/// (key, value) rows of one bucket.
type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn build(buckets: &[(&str, Rows)]) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    for (name, rows) in buckets {
        let mut b = w.bucket(name.as_bytes()).unwrap();
        for (k, v) in rows {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn read_all(bytes: &[u8]) -> Vec<(Vec<u8>, Rows)> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    std::fs::write(&p, bytes).unwrap();
    let r = Reader::open(&p).unwrap();
    let mut out = Vec::new();
    for name in r.buckets().unwrap() {
        let mut rows = Vec::new();
        let found = r
            .for_each::<Error>(&name, |k, v| {
                rows.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert!(found);
        out.push((name, rows));
    }
    out
}

#[test]
fn round_trip_small_large_and_huge_values() {
    let many: Vec<_> = (0..20_000u32)
        .map(|i| (i.to_be_bytes().to_vec(), vec![b'v'; (i % 97) as usize]))
        .collect();
    let huge = vec![
        (b"big".to_vec(), vec![7u8; 3 * PAGE_SIZE + 5]),
        (b"c".to_vec(), vec![]),
    ];
    let input = vec![
        ("meta", vec![(b"a".to_vec(), b"1".to_vec())]),
        ("key", many.clone()),
        ("empty", vec![]),
        ("huge", huge.clone()),
    ];
    let bytes = build(&input);
    assert_eq!(bytes.len() % PAGE_SIZE, 0);
    let got = read_all(&bytes);
    let names: Vec<&[u8]> = got.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(names, vec![&b"empty"[..], b"huge", b"key", b"meta"]);
    assert_eq!(got[0].1, vec![]);
    assert_eq!(got[1].1, huge);
    assert_eq!(got[2].1, many);
    assert_eq!(got[3].1, vec![(b"a".to_vec(), b"1".to_vec())]);
}

#[test]
fn writer_refuses_unsorted_keys_and_twice_named_buckets() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let mut b = w.bucket(b"x").unwrap();
    b.put(b"b", b"").unwrap();
    assert!(matches!(b.put(b"a", b""), Err(Error::Misuse(_))));
    assert!(matches!(b.put(b"b", b""), Err(Error::Misuse(_))));
    b.finish().unwrap();
    assert!(matches!(w.bucket(b"x"), Err(Error::Misuse(_))));
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    let rows: Vec<_> = (0..5000u32)
        .map(|i| (i.to_be_bytes().to_vec(), b"value".to_vec()))
        .collect();
    let bytes = build(&[("key", rows)]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    let open_and_read = |b: &[u8]| -> Result<()> {
        std::fs::write(&p, b).unwrap();
        let r = Reader::open(&p)?;
        r.for_each::<Error>(b"key", |_, _| Ok(()))?;
        Ok(())
    };
    let truncated = &bytes[..bytes.len() - PAGE_SIZE];
    let err = open_and_read(truncated).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    let err = open_and_read(b"junk").unwrap_err().to_string();
    assert!(err.contains("not a bbolt database"), "{err}");
    let mut both_metas = bytes.clone();
    both_metas[PAGE_HEADER + 20] ^= 1;
    both_metas[PAGE_SIZE + PAGE_HEADER + 20] ^= 1;
    let err = open_and_read(&both_metas).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    // One damaged meta: the other one still opens the file, as in bbolt.
    let mut one_meta = bytes.clone();
    one_meta[PAGE_HEADER + 20] ^= 1;
    open_and_read(&one_meta).unwrap();
    let mut bad_page = bytes.clone();
    bad_page[3 * PAGE_SIZE] ^= 0x55;
    let err = open_and_read(&bad_page).unwrap_err().to_string();
    assert!(err.contains("page 3"), "{err}");
}

#[test]
fn sniffing() {
    let bytes = build(&[]);
    assert!(looks_like_bbolt(&bytes));
    assert!(!looks_like_bbolt(
        b"SQLite format 3\0 and more bytes than that, enough"
    ));
}
