//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! runs one piece of the crate on arbitrary input and panics when an
//! invariant breaks, so libFuzzer reports it as a crash.

use crate::framing::{AmbiguousFraming, Tracker};

/// The framing tracker on the bytes of one connection, read in pieces cut
/// at `cuts` (byte offsets). Never panics; reads cut anywhere end in the
/// same state, with the same flag, as one read of everything; and a head
/// at the start with both `Content-Length` and `Transfer-Encoding` is
/// always flagged.
pub fn framing(data: &[u8], cuts: &[usize]) {
    let whole_flag = AmbiguousFraming::default();
    let mut whole = Tracker::new(whole_flag.clone());
    whole.feed(data);

    let pieces_flag = AmbiguousFraming::default();
    let mut pieces = Tracker::new(pieces_flag.clone());
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts {
        pieces.feed(&data[at..c]);
        at = c;
    }
    pieces.feed(&data[at..]);
    assert_eq!(whole.phase(), pieces.phase(), "the phase depends on how the bytes were read");
    assert_eq!(whole_flag.is_set(), pieces_flag.is_set(), "the flag depends on how the bytes were read");

    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(data) {
        let has = |n: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
        if has("content-length") && has("transfer-encoding") {
            assert!(
                whole_flag.is_set(),
                "a first head with Content-Length and Transfer-Encoding went through"
            );
        }
    }
}
