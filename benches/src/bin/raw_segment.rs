//! Issue 18's prototype: the embedded queue's send path as an append-only
//! segment log instead of SQLite, doing the same work as `raw_embedded`.
//!
//! `concurrency` senders each send one message and wait until it is durable
//! before the next. One writer thread takes every waiting message (up to
//! 1,024, as the SQLite writer does), frames each as a record, appends them
//! with one `write`, makes them durable with one `fdatasync`, and only then
//! answers: group commit, with the same hand-offs as the SQLite writer
//! (a std channel in, a oneshot back), so the two differ in the store alone.
//!
//! A record: `len u32 | crc32 u32 | seq u64 | enqueued_at_ms i64 |
//! id_len u8 | id | attrs | body` (attributes: a count,
//! then each name `u8`-prefixed and value `u16`-prefixed`, little-endian; the CRC
//! covers everything after itself, so a torn tail is found on start-up.
//! Segments roll over at 64 MiB. The in-memory index a receive would use
//! (sequence, segment, offset, length) is kept, as the full design would.
//!
//! Not built: receive, ack, retries, dead letters, recovery. This measures
//! what a send costs; `docs/architecture.md` weighs the rest.
//!
//! Prints the rate and the process's CPU time per message (from /proc),
//! one `msgs/s cpu_us_per_msg` line last. `raw_embedded` prints the same.
//!
//! ```text
//! raw_segment DATA_DIR CONCURRENCY SECONDS BODY_BYTES
//! ```

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::mpsc,
};

use tokio::sync::oneshot;

const SEGMENT_BYTES: u64 = 64 << 20;
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// What the queue's `OutgoingMessage` carries on this path.
struct Msg {
    id: String,
    attributes: std::collections::BTreeMap<String, String>,
    body: bytes::Bytes,
}

struct Job {
    msgs: Vec<Msg>,
    reply: oneshot::Sender<std::io::Result<()>>,
}

/// Where each record is, for a receive to find it.
struct IndexEntry {
    _seq: u64,
    _segment: u32,
    _offset: u64,
    _len: u32,
}

struct Log {
    dir: PathBuf,
    file: File,
    segment: u32,
    written: u64,
    next_seq: u64,
    buf: Vec<u8>,
    index: VecDeque<IndexEntry>,
}

impl Log {
    fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = Self::segment_file(dir, 0)?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            dir: dir.to_owned(),
            file,
            segment: 0,
            written: 0,
            next_seq: 1,
            buf: Vec::new(),
            index: VecDeque::new(),
        })
    }

    fn segment_file(dir: &Path, n: u32) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(dir.join(format!("{n:08}.seg")))
    }

    /// Frames every message of `jobs` into one buffer, appends it, syncs.
    fn commit(&mut self, jobs: &[Job], now_ms: i64) -> std::io::Result<()> {
        if self.written >= SEGMENT_BYTES {
            self.segment += 1;
            self.file = Self::segment_file(&self.dir, self.segment)?;
            File::open(&self.dir)?.sync_all()?;
            self.written = 0;
        }
        self.buf.clear();
        for m in jobs.iter().flat_map(|j| &j.msgs) {
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0; 8]); // len and crc, filled in below
            self.buf.extend_from_slice(&self.next_seq.to_le_bytes());
            self.buf.extend_from_slice(&now_ms.to_le_bytes());
            let id = m.id.as_bytes();
            self.buf.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
            self.buf.extend_from_slice(&id[..id.len().min(255)]);
            // Attributes compact: a count, then each name and value length-prefixed.
            self.buf.push(u8::try_from(m.attributes.len()).unwrap_or(u8::MAX));
            for (k, v) in m.attributes.iter().take(255) {
                self.buf.push(u8::try_from(k.len()).unwrap_or(u8::MAX));
                self.buf.extend_from_slice(&k.as_bytes()[..k.len().min(255)]);
                self.buf.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_le_bytes());
                self.buf.extend_from_slice(&v.as_bytes()[..v.len().min(u16::MAX as usize)]);
            }
            self.buf.extend_from_slice(&m.body);
            let len = u32::try_from(self.buf.len() - start - 8).unwrap_or(u32::MAX);
            let crc = crc32fast::hash(&self.buf[start + 8..]);
            self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            self.index.push_back(IndexEntry {
                _seq: self.next_seq,
                _segment: self.segment,
                _offset: self.written + start as u64,
                _len: len + 8,
            });
            self.next_seq += 1;
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        self.written += self.buf.len() as u64;
        Ok(())
    }
}

fn writer(mut log: Log, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let outcome = log.commit(&group, now_ms);
        for j in group {
            let _ = j.reply.send(match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, concurrency, seconds, body_bytes] = args.as_slice() else {
        return Err("usage: raw_segment DATA_DIR CONCURRENCY SECONDS BODY_BYTES".into());
    };
    let (concurrency, seconds, body_bytes): (usize, u64, usize) =
        (concurrency.parse()?, seconds.parse()?, body_bytes.parse()?);
    let log = Log::open(Path::new(dir))?;
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new().name("segment-writer".into()).spawn(move || writer(log, rx))?;
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
