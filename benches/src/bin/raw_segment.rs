//! Issue 18's prototype: the embedded queue's send path as an append-only
//! segment log ([`spillway_benches::segment`]) instead of SQLite, doing the
//! same work as `raw_embedded`.
//!
//! `concurrency` senders each send one message and wait until it is durable
//! before the next.
//!
//! Prints the rate and the process's CPU time per message (from /proc),
//! one `msgs/s cpu_us_per_msg` line last. `raw_embedded` prints the same.
//!
//! ```text
//! raw_segment DATA_DIR CONCURRENCY SECONDS BODY_BYTES
//! ```

use std::path::Path;

use spillway_benches::segment::{self, Job, Msg};
use tokio::sync::oneshot;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, concurrency, seconds, body_bytes] = args.as_slice() else {
        return Err("usage: raw_segment DATA_DIR CONCURRENCY SECONDS BODY_BYTES".into());
    };
    let (concurrency, seconds, body_bytes): (usize, u64, usize) =
        (concurrency.parse()?, seconds.parse()?, body_bytes.parse()?);
    let tx = segment::spawn(Path::new(dir), segment::SyncMode::Data)?;
    let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
    let run = spillway_benches::closed_loop(concurrency, seconds, |_, handle| {
        let (tx, body) = (tx.clone(), body.clone());
        async move {
            while handle.running() {
                let mut msg = Msg {
                    id: ulid::Ulid::new().to_string(),
                    attributes: Default::default(),
                    body: body.clone(),
                };
                msg.attributes.insert("spillway-format".to_owned(), "envelope".to_owned());
                msg.attributes.insert("spillway-route".to_owned(), "ingest".to_owned());
                let (reply, answer) = oneshot::channel();
                if tx.send(Job { msgs: vec![msg], reply }).is_err() {
                    return;
                }
                match answer.await {
                    Ok(Ok(())) => handle.stored(),
                    _ => return,
                }
            }
        }
    })
    .await?;
    run.report(&format!("durable appends with {concurrency} senders"));
    Ok(())
}
