//! What each request carries: a fixed body of a given size, or random JSON
//! of about that size (a new one per request, so no cache or compression
//! flatters the run).

use rand::{distributions::Alphanumeric, Rng};

/// The shape of the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Shape {
    /// The same JSON object every time, padded to the size.
    Fixed,
    /// A JSON object of random fields, padded to the size, new each time.
    Json,
}

/// Builds bodies of `bytes` bytes (at least the smallest JSON object).
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    shape: Shape,
    bytes: usize,
    fixed: bytes::Bytes,
}

impl Payload {
    pub(crate) fn new(shape: Shape, bytes: usize) -> Self {
        let fixed = pad(r#"{"event":"page_view","user":42,"pad":""#, bytes);
        Self { shape, bytes, fixed }
    }

    /// The body of request `i`.
    pub(crate) fn body(&self, i: u64) -> bytes::Bytes {
        match self.shape {
            Shape::Fixed => self.fixed.clone(),
            Shape::Json => {
                let mut rng = rand::thread_rng();
                let word: String = (&mut rng).sample_iter(&Alphanumeric).take(8).map(char::from).collect();
                let head = format!(r#"{{"seq":{i},"user":{},"kind":"{word}","pad":""#, rng.gen::<u32>());
                pad(&head, self.bytes)
            }
        }
    }
}

/// `head` (an unterminated JSON string value), padding, then `"}`.
fn pad(head: &str, bytes: usize) -> bytes::Bytes {
    let fill = bytes.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + fill + 2);
    s.push_str(head);
    let mut rng = rand::thread_rng();
    s.extend((&mut rng).sample_iter(&Alphanumeric).take(fill).map(char::from));
    s.push_str("\"}");
    bytes::Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_size_and_are_json() {
        for shape in [Shape::Fixed, Shape::Json] {
            let p = Payload::new(shape, 200);
            let b = p.body(7);
            assert_eq!(b.len(), 200, "{shape:?}");
            let v: serde_json::Value = serde_json::from_slice(&b).expect("JSON");
            assert!(v.is_object());
        }
        let p = Payload::new(Shape::Json, 200);
        assert_ne!(p.body(1), p.body(2), "random JSON differs per request");
    }
}
