//! Issue 18's append-only segment log: the cheapest durable store we know
//! how to write, used by two benchmarks. `raw_segment` measures it against
//! the embedded queue's SQLite `send` on the same work; `durable_ceiling`
//! puts it behind the bare HTTP server, as the floor any durable gateway
//! pays on this machine (`docs/benchmarks.md`).
//!
//! One writer thread takes every waiting job (up to 1,024, as the SQLite
//! writer does), frames each message as a record, appends them with one
//! `write`, makes them durable with one `fdatasync`, and only then answers:
//! group commit, with the same hand-offs as the SQLite writer (a std
//! channel in, a oneshot back).
//!
//! A record: `len u32 | crc32 u32 | seq u64 | enqueued_at_ms i64 |
//! id_len u8 | id | attrs | body` (attributes: a count, then each name
//! `u8`-prefixed and value `u16`-prefixed, little-endian); the CRC covers
//! everything after itself, so a torn tail is found on start-up. Segments
//! roll over at 64 MiB. The in-memory index a receive would use (sequence,
//! segment, offset, length) is kept, as the full design would.
//!
//! Not built: receive, ack, retries, dead letters, recovery. This measures
//! what a send costs; `docs/architecture.md` weighs the rest.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::mpsc,
};

use tokio::sync::oneshot;

const SEGMENT_BYTES: u64 = 64 << 20;
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// What the queue's `OutgoingMessage` carries on this path.
pub struct Msg {
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    pub body: bytes::Bytes,
}

/// Messages to append, and where to say when they are durable.
pub struct Job {
    pub msgs: Vec<Msg>,
    pub reply: oneshot::Sender<std::io::Result<()>>,
}

/// Whether a commit waits for the disk: `Data` is `fdatasync` (what a
/// 2xx needs to survive power loss), `None` only `write` (what survives
/// the process being killed), to tell the fsync's share from the rest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Data,
    None,
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
    sync: SyncMode,
    segment: u32,
    written: u64,
    next_seq: u64,
    buf: Vec<u8>,
    index: VecDeque<IndexEntry>,
}

impl Log {
    fn open(dir: &Path, sync: SyncMode) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = Self::segment_file(dir, 0)?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            dir: dir.to_owned(),
            file,
            sync,
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
        if self.sync == SyncMode::Data {
            self.file.sync_data()?;
        }
        self.written += self.buf.len() as u64;
        Ok(())
    }
}

/// Opens a log in `dir` and starts its writer thread; jobs sent to the
/// returned channel are answered once durable (as `sync` defines it). The
/// thread ends when every sender is dropped.
pub fn spawn(dir: &Path, sync: SyncMode) -> std::io::Result<mpsc::Sender<Job>> {
    let log = Log::open(dir, sync)?;
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new().name("segment-writer".into()).spawn(move || writer(log, rx))?;
    Ok(tx)
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
