//! A 2xx from the embedded queue survives a power cut, not only `kill -9`.
//!
//! The gateway runs under `tests/crash/synced_writes.c`, an LD_PRELOAD shim
//! that journals, per file of the queue's folder, only the writes that were
//! fsync'd. At a random moment under load the gateway is killed, and the
//! "disk after the power cut" is rebuilt from the journals alone: every
//! write not yet fsync'd is gone, the worst a power cut may do. There the
//! queue must pass `PRAGMA integrity_check` and hold every id that got a
//! 2xx. The same run with `durability = "process_crash"` (SQLite's
//! `synchronous=NORMAL`, which syncs the WAL only at checkpoints) must lose
//! acknowledged messages, so the test tells the two apart.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use spillway_e2e::{Burst, Workspace};

/// Builds the shim with the machine's C compiler.
fn shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crash/synced_writes.c");
    let out = dir.join("synced_writes.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("cc (gcc from Debian's packages) builds the crash shim");
    assert!(built.success(), "building {} failed", src.display());
    out
}

/// The files of `data` as the journals say the disk holds them, written
/// into `disk`.
fn rebuild(data: &Path, disk: &Path) {
    std::fs::create_dir_all(disk).expect("disk");
    for entry in std::fs::read_dir(data).expect("data").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(file) = name.strip_suffix(".journal") else { continue };
        let journal = std::fs::read(entry.path()).expect("journal");
        let (mut content, mut exists) = (Vec::new(), false);
        let mut at = 0;
        while at + 17 <= journal.len() {
            let kind = journal[at];
            let a = u64::from_le_bytes(journal[at + 1..at + 9].try_into().expect("8 bytes")) as usize;
            let len = u64::from_le_bytes(journal[at + 9..at + 17].try_into().expect("8 bytes")) as usize;
            at += 17;
            match kind {
                // A record cut short: the process died inside that fsync,
                // before it returned, so nothing relied on it.
                b'W' if at + len > journal.len() => break,
                b'W' => {
                    let data = &journal[at..at + len];
                    at += len;
                    if content.len() < a + len {
                        content.resize(a + len, 0);
                    }
                    content[a..a + len].copy_from_slice(data);
                    exists = true;
                }
                b'T' => {
                    content.resize(a, 0);
                    exists = true;
                }
                b'D' => {
                    content.clear();
                    exists = false;
                }
                other => panic!("journal {name}: record kind {other}"),
            }
        }
        if exists {
            std::fs::write(disk.join(file), &content).expect("rebuilt file");
        }
    }
}

/// What the rebuilt disk's queue holds: (integrity_check's answer, ids).
fn after_power_cut(disk: &Path) -> (String, HashSet<String>) {
    let db =
        rusqlite::Connection::open(disk.join("queue.db")).expect("the queue file opens after the power cut");
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
    let mut stmt = db.prepare("SELECT id FROM messages").expect("select");
    let ids = stmt.query_map([], |r| r.get::<_, String>(0)).expect("ids").map(|r| r.expect("id")).collect();
    (check, ids)
}

/// One crash: when (ms into the load), how many 2xx, how many of them lost.
struct Crash {
    at_ms: u64,
    acknowledged: usize,
    lost: usize,
}

/// `crash_points` crashes under load with `durability`.
async fn crashes(durability: &str, crash_points: u64) -> Vec<Crash> {
    let mut out = Vec::new();
    for point in 0..crash_points {
        let ws = Workspace::new(&format!(
            "[queue]\nbackend = \"embedded\"\npath = \"{{data}}\"\ndurability = \"{durability}\"\n"
        ));
        std::fs::create_dir_all(ws.data()).expect("data dir");
        let data = ws.data().canonicalize().expect("data path");
        let lib = shim(ws.dir.path());
        let ws = ws
            .with_env("LD_PRELOAD", &lib.display().to_string())
            .with_env("SYNCED_DIR", &data.display().to_string());
        let mut gw = ws.serve();
        let burst = Burst::start(&gw.url("/ingest"), 8);
        // A crash point between 0.4 and 2.5 s into the load, spread over
        // the runs (commits, WAL growth, checkpoints all get hit).
        let at = 400 + (point * 7919 + 1301) % 2100;
        tokio::time::sleep(Duration::from_millis(at)).await;
        gw.kill9();
        let accepted = burst.finish().await.accepted;
        assert!(
            accepted.len() > 20,
            "crash point {point}: too little load to mean anything ({})",
            accepted.len()
        );
        let disk = ws.dir.path().join("disk");
        rebuild(&data, &disk);
        let (check, stored) = after_power_cut(&disk);
        assert_eq!(
            check, "ok",
            "crash point {point} ({durability}): the queue file is corrupt after the power cut"
        );
        let missing = accepted.difference(&stored).count();
        eprintln!("{durability}: crash at {at} ms: {} acknowledged, {missing} lost", accepted.len());
        out.push(Crash { at_ms: at, acknowledged: accepted.len(), lost: missing });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_2xx_survives_a_power_cut_at_random_points_under_load() {
    let runs = crashes("power_loss", 8).await;
    let lost: usize = runs.iter().map(|c| c.lost).sum();
    let acknowledged: usize = runs.iter().map(|c| c.acknowledged).sum();
    assert_eq!(
        lost, 0,
        "{lost} of {acknowledged} acknowledged messages lost to a power cut with durability power_loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_crash_durability_loses_acknowledged_messages_to_a_power_cut() {
    let runs = crashes("process_crash", 4).await;
    let lost: usize = runs.iter().map(|c| c.lost).sum();
    assert!(
        lost > 0,
        "process_crash lost nothing to 4 power cuts: the harness cannot tell the durabilities apart"
    );
    // The documented window: commits since the last checkpoint (one every
    // 100 ms), so about the last 100 ms of 2xx answers. Allowed 500 ms of
    // them, for a slow machine's late checkpoint.
    for c in &runs {
        let per_ms = c.acknowledged as f64 / c.at_ms as f64;
        let window = (per_ms * 500.0).ceil() as usize;
        assert!(
            c.lost <= window,
            "crash at {} ms: {} lost, more than 500 ms of answers ({window}): beyond the documented window",
            c.at_ms,
            c.lost
        );
    }
}
