//! etcd's `key` / `range_end` pair as an interval of keys.

use std::ops::Bound;

/// The keys selected by a `(key, range_end)` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Span {
    /// `range_end` empty: exactly `key`.
    Single(Vec<u8>),
    /// `[start, end)`; `end == None` means unbounded (`range_end == "\0"`).
    Interval {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// `range_end <= key`: etcd selects nothing.
    Empty,
}

impl Span {
    pub(crate) fn new(key: &[u8], range_end: &[u8]) -> Span {
        if range_end.is_empty() {
            return Span::Single(key.to_vec());
        }
        if range_end == [0] {
            // "\0" means "every key >= key"; with key "\0" that is the whole keyspace.
            return Span::Interval {
                start: key.to_vec(),
                end: None,
            };
        }
        if range_end <= key {
            return Span::Empty;
        }
        Span::Interval {
            start: key.to_vec(),
            end: Some(range_end.to_vec()),
        }
    }

    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        match self {
            Span::Single(key) => key.as_slice() == k,
            Span::Interval { start, end } => {
                k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice())
            }
            Span::Empty => false,
        }
    }

    /// Bounds for a redb range over `&[u8]` keys.
    pub(crate) fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match self {
            Span::Single(key) => (
                Bound::Included(key.as_slice()),
                Bound::Included(key.as_slice()),
            ),
            Span::Interval { start, end } => (
                Bound::Included(start.as_slice()),
                end.as_ref()
                    .map_or(Bound::Unbounded, |e| Bound::Excluded(e.as_slice())),
            ),
            // An empty interval that redb accepts: (x, x] excluded/included at the same point.
            Span::Empty => (Bound::Excluded(&[][..]), Bound::Included(&[][..])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_forms() {
        // (key, range_end, probe, selected)
        type Row = (&'static [u8], &'static [u8], &'static [u8], bool);
        let rows: &[Row] = &[
            (b"a", b"", b"a", true),
            (b"a", b"", b"ab", false),
            (b"a", b"\0", b"a", true),
            (b"a", b"\0", b"zzz", true),
            (b"b", b"\0", b"a", false),
            (b"a", b"b", b"a\xff\xff", true),
            (b"a", b"b", b"b", false),
            (b"\0", b"\0", b"\0", true),
            (b"\0", b"\0", b"\xff\xff", true),
            (b"b", b"a", b"b", false),
            (b"a", b"a", b"a", false),
        ];
        for (key, end, probe, want) in rows {
            assert_eq!(
                Span::new(key, end).contains(probe),
                *want,
                "{key:?} {end:?} {probe:?}"
            );
        }
    }
}
