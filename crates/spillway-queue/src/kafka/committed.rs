//! Committed offsets as the group coordinator returns them, with their
//! metadata read as bytes.
//!
//! Why not `TopicPartitionListElem::metadata()`: rdkafka 0.39 panics
//! (`expect("Metadata is not UTF-8")`) on metadata that is not UTF-8, and
//! a group's metadata is whatever its last committer wrote. Spillway only
//! writes ASCII (see [`super::ledger`]), but another client committing to
//! the same group may write any bytes, and that must not crash a consumer.
//! Metadata that is not UTF-8 reads as empty, which the ledger takes as "no
//! window": every record from the committed offset on is delivered again,
//! uncounted (at least once, as with any metadata it cannot parse).

use rdkafka::{Offset, TopicPartitionList};

/// One partition's committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: Offset,
    /// The commit's metadata; empty when absent or not UTF-8.
    pub(crate) metadata: String,
}

/// Every entry of `list`, in its order.
pub(crate) fn read(list: &TopicPartitionList) -> Vec<Committed> {
    list.elements()
        .iter()
        .enumerate()
        .map(|(i, e)| Committed {
            topic: e.topic().to_owned(),
            partition: e.partition(),
            offset: e.offset(),
            metadata: String::from_utf8(metadata_bytes(list, i)).unwrap_or_default(),
        })
        .collect()
}

/// The raw metadata of entry `index`, copied out.
#[allow(unsafe_code)]
fn metadata_bytes(list: &TopicPartitionList, index: usize) -> Vec<u8> {
    // SAFETY: `list` owns a valid `rd_kafka_topic_partition_list_t` for as
    // long as the borrow lasts (rdkafka's invariant for `ptr()`), and nothing
    // mutates it while we read. `elems` holds `cnt` initialised entries; we
    // read entry `index` only when it is below `cnt`. librdkafka keeps
    // `metadata` either null or pointing at `metadata_size` bytes it owns;
    // the bytes are copied before the borrow ends.
    unsafe {
        let raw = &*list.ptr();
        let count = usize::try_from(raw.cnt).unwrap_or(0);
        if index >= count || raw.elems.is_null() {
            return Vec::new();
        }
        let elem = &*raw.elems.add(index);
        if elem.metadata.is_null() || elem.metadata_size == 0 {
            return Vec::new();
        }
        std::slice::from_raw_parts(elem.metadata.cast::<u8>(), elem.metadata_size).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list whose one entry carries `bytes` as metadata. rdkafka's setter
    /// only takes `&str`, so a valid string of the same length is set and
    /// then overwritten in place.
    #[allow(unsafe_code)]
    fn list_with_metadata(bytes: &[u8]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("q", 3, Offset::Offset(42)).expect("offset");
        let placeholder = "x".repeat(bytes.len());
        list.find_partition("q", 3).expect("entry").set_metadata(&placeholder);
        // SAFETY: the entry's metadata was just allocated with `bytes.len()`
        // bytes by `set_metadata`; we overwrite exactly those.
        unsafe {
            let raw = &*list.ptr();
            let elem = &*raw.elems;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), elem.metadata.cast::<u8>(), bytes.len());
        }
        list
    }

    #[test]
    fn reads_offset_and_metadata() {
        let got = read(&list_with_metadata(b"1;4;2c1"));
        assert_eq!(
            got,
            vec![Committed {
                topic: "q".into(),
                partition: 3,
                offset: Offset::Offset(42),
                metadata: "1;4;2c1".into(),
            }]
        );
    }

    #[test]
    fn metadata_that_is_not_utf8_reads_as_empty_instead_of_panicking() {
        let list = list_with_metadata(&[0xff, 0xfe, b';']);
        // rdkafka's own accessor panics on it: the reason this module exists.
        let elems = list.elements();
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| elems[0].metadata().to_owned()));
        assert!(panicked.is_err(), "rdkafka's metadata() no longer panics on bytes; this module may go");
        let got = read(&list);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].offset, Offset::Offset(42));
        assert_eq!(got[0].metadata, "");
    }

    #[test]
    fn an_entry_without_metadata_reads_as_empty() {
        let mut list = TopicPartitionList::new();
        list.add_partition("q", 0);
        assert_eq!(read(&list)[0].metadata, "");
    }
}
