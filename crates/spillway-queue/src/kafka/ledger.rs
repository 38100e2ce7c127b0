//! Where each fetched record of one partition stands, and what the group's
//! committed offset says about it.
//!
//! A log has one committed offset per partition, but a queue settles
//! messages one by one and out of order. The ledger keeps the unsettled
//! ones, and the commit carries the rest in the offset's metadata string:
//!
//! - the **offset** committed is the lowest unsettled one, so nothing
//!   unsettled is ever skipped (a crash redelivers from there);
//! - the **metadata** lists, above that offset, which records are still
//!   unsettled and how often a consumer went away holding each. A record
//!   in the window but not listed was settled (acked, retried or
//!   dead-lettered): whoever reads the partition next skips it instead of
//!   delivering a duplicate, and a record listed as held gets its crash
//!   counted. That is how a consumer that dies holding a message walks it
//!   toward the DLQ, which no header can do.
//!
//! The metadata is bounded ([`MAX_METADATA`], under Kafka's default
//! `offset.metadata.max.bytes` of 4096). Past it the window is cut short:
//! records beyond the cut are delivered again after a crash, uncounted
//! and possibly twice (still at least once).
//!
//! Format, all numbers decimal and relative to the committed offset:
//! `1;<window end>;<item>,<item>…`, an item being `<offset>` for a record
//! not held, `<offset>c<crashes>` for one with crashes, and
//! `<offset>h<crashes>` for one held at the time of the commit.

use std::collections::BTreeMap;

/// The longest metadata string written.
pub(crate) const MAX_METADATA: usize = 3800;

/// What a predecessor's commit says about one unsettled record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inherited {
    /// Crashes so far, counting the hold the commit recorded.
    pub(crate) crashes: u32,
    /// Whether a consumer held it at the time of the commit.
    pub(crate) held: bool,
}

/// What the committed metadata of a partition says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// One past the last offset the window covers; everything from here on
    /// is unknown (never fetched, or cut from the metadata).
    pub(crate) end: i64,
    /// The unsettled records inside the window; the rest of it is settled.
    pub(crate) unsettled: BTreeMap<i64, Inherited>,
}

impl Window {
    /// Whether the record at `offset` was settled before this commit.
    pub(crate) fn settled(&self, offset: i64) -> bool {
        offset < self.end && !self.unsettled.contains_key(&offset)
    }

    /// How many records inside `[committed, end)` were settled.
    pub(crate) fn settled_count(&self, committed: i64) -> u64 {
        let span = u64::try_from(self.end - committed).unwrap_or(0);
        span.saturating_sub(self.unsettled.len() as u64)
    }
}

/// One unsettled record, as written into the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) offset: i64,
    pub(crate) crashes: u32,
    pub(crate) held: bool,
}

/// The metadata for a commit at `committed`, covering `[committed, end)`,
/// whose unsettled records are `items` (in offset order). Cut to
/// [`MAX_METADATA`] bytes: the window then ends at the first item left out.
pub(crate) fn encode(committed: i64, end: i64, items: &[Item]) -> String {
    let mut body = String::new();
    let mut window_end = end;
    for (i, it) in items.iter().enumerate() {
        let mut s = (it.offset - committed).to_string();
        if it.held {
            s.push_str(&format!("h{}", it.crashes));
        } else if it.crashes > 0 {
            s.push_str(&format!("c{}", it.crashes));
        }
        // Room for the header with the widest end there could be.
        if body.len() + s.len() + 1 + 24 > MAX_METADATA {
            window_end = it.offset;
            break;
        }
        if i > 0 {
            body.push(',');
        }
        body.push_str(&s);
    }
    format!("1;{};{body}", window_end - committed)
}

/// Reads a commit's metadata; anything unreadable (another client's, an
/// empty string) is an empty window: every record from the committed
/// offset on is delivered, uncounted.
pub(crate) fn decode(committed: i64, metadata: &str) -> Window {
    let parse = || -> Option<Window> {
        let mut parts = metadata.splitn(3, ';');
        if parts.next()? != "1" {
            return None;
        }
        let end = committed + parts.next()?.parse::<i64>().ok()?;
        let mut unsettled = BTreeMap::new();
        for item in parts.next()?.split(',').filter(|s| !s.is_empty()) {
            let (off, crashes, held) = if let Some((o, n)) = item.split_once('h') {
                (o, n.parse::<u32>().ok()?.saturating_add(1), true)
            } else if let Some((o, n)) = item.split_once('c') {
                (o, n.parse::<u32>().ok()?, false)
            } else {
                (item, 0, false)
            };
            unsettled.insert(committed + off.parse::<i64>().ok()?, Inherited { crashes, held });
        }
        Some(Window { end, unsettled })
    };
    parse().unwrap_or(Window { end: committed, unsettled: BTreeMap::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(offset: i64, crashes: u32, held: bool) -> Item {
        Item { offset, crashes, held }
    }

    #[test]
    fn a_held_record_counts_one_more_crash_for_the_next_reader() {
        let md = encode(100, 106, &[item(100, 0, true), item(102, 2, false), item(105, 1, true)]);
        assert_eq!(md, "1;6;0h0,2c2,5h1");
        let w = decode(100, &md);
        assert_eq!(w.end, 106);
        assert_eq!(w.unsettled.get(&100), Some(&Inherited { crashes: 1, held: true }));
        assert_eq!(w.unsettled.get(&102), Some(&Inherited { crashes: 2, held: false }));
        assert_eq!(w.unsettled.get(&105), Some(&Inherited { crashes: 2, held: true }));
        // 101, 103 and 104 were settled: skipped, not delivered again.
        assert!(w.settled(101) && w.settled(103) && w.settled(104));
        assert!(!w.settled(100) && !w.settled(106), "unsettled, or past the window");
        assert_eq!(w.settled_count(100), 3);
    }

    #[test]
    fn foreign_or_empty_metadata_is_an_empty_window() {
        for md in ["", "hello", "2;5;1", "1;x;", "1;3;1q"] {
            let w = decode(7, md);
            assert_eq!(w, Window { end: 7, unsettled: BTreeMap::new() }, "{md:?}");
            assert!(!w.settled(7));
        }
    }

    #[test]
    fn a_long_window_is_cut_where_it_no_longer_fits() {
        let items: Vec<Item> = (0..5000).map(|o| item(o * 2, 0, true)).collect();
        let md = encode(0, 10_000, &items);
        assert!(md.len() <= MAX_METADATA, "{} bytes", md.len());
        let w = decode(0, &md);
        // Everything inside the cut window is exact; past it, unknown.
        let last = *w.unsettled.keys().last().expect("some items fit");
        assert!(w.end > last && w.end < 10_000);
        assert!(!w.settled(w.end), "past the cut nothing counts as settled");
        assert!(w.settled(1));
    }
}
