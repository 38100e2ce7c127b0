//! The single writer: one thread owns the SQLite connection and runs every
//! operation, group-committing all that are pending in one transaction.
//!
//! Why one writer: SQLite allows one writer at a time anyway, and an fsync
//! costs the same for one row as for a thousand. Jobs queue on a channel; the
//! thread takes all that are waiting, runs each inside its own savepoint (so a
//! failing job rolls back alone), commits once, and only then answers each
//! caller. A caller therefore never hears `Ok` for a write that is not yet on
//! disk.

use std::{
    sync::mpsc::{self, Receiver, Sender, TryRecvError},
    thread,
};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::QueueError;

/// At most this many jobs share one transaction, so a flood of sends cannot
/// starve the callers at the front of the queue for long.
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// Prepared statements the writer keeps. Every operation's statements fit
/// (about 30 texts, with the multi-row inserts), so none is parsed again
/// after its first use; rusqlite's default of 16 would evict some whenever
/// a consumer's receives and acks share the writer with the gateway's sends.
const CACHED_STATEMENTS: usize = 64;

/// A unit of work for the writer thread.
trait Job: Send {
    /// Runs the work; `false` if it failed and its savepoint must roll back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), QueueError>);
}

struct Work<F, R> {
    work: Option<F>,
    outcome: Option<Result<R, QueueError>>,
    reply: oneshot::Sender<Result<R, QueueError>>,
}

impl<F, R> Job for Work<F, R>
where
    F: FnOnce(&Connection) -> Result<R, QueueError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else { return false };
        let outcome = work(conn);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), QueueError>) {
        let answer = match (commit, self.outcome) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(QueueError::unavailable_msg("embedded queue: job was not run")),
        };
        // The caller may have gone away (request cancelled); nothing to do then.
        let _ = self.reply.send(answer);
    }
}

/// Handle to the writer thread. Cloning shares the thread; it stops when the
/// last handle is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: Sender<Box<dyn Job>>,
    /// Wait for answers on tokio's blocking pool, which keeps a paused test
    /// clock from auto-advancing while the writer thread works (see [`crate::Clock`]).
    hold_test_clock: bool,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(crate) fn spawn(conn: Connection, name: &str, hold_test_clock: bool) -> Result<Self, QueueError> {
        conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("spillway-sqlite-{name}"))
            .spawn(move || run(conn, rx))
            .map_err(|e| QueueError::unavailable("embedded queue: cannot start writer thread", e))?;
        Ok(Self { jobs: tx, hold_test_clock })
    }

    /// Runs `work` in the next group commit and returns its result once the
    /// commit is durable. If the commit fails, the result is that error.
    pub(crate) async fn run<R, F>(&self, work: F) -> Result<R, QueueError>
    where
        F: FnOnce(&Connection) -> Result<R, QueueError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Work { work: Some(work), outcome: None, reply });
        self.jobs
            .send(job)
            .map_err(|_| QueueError::unavailable_msg("embedded queue: writer thread has stopped"))?;
        let dropped = |_| QueueError::unavailable_msg("embedded queue: writer thread dropped the job");
        if self.hold_test_clock {
            return tokio::task::spawn_blocking(move || answer.blocking_recv())
                .await
                .map_err(|e| QueueError::unavailable("embedded queue: wait task failed", e))?
                .map_err(dropped)?;
        }
        answer.await.map_err(dropped)?
    }
}

fn run(conn: Connection, jobs: Receiver<Box<dyn Job>>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let commit = commit_group(&conn, &mut group);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = group.len(), "embedded queue: group commit failed");
        }
        for job in group {
            job.finish(commit.clone());
        }
    }
}

fn commit_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> Result<(), QueueError> {
    let sql_err = |what: &'static str| {
        move |e: rusqlite::Error| QueueError::unavailable(format!("embedded queue: {what}"), e)
    };
    // Cached statements: these run for every job, and parsing them each time
    // showed in profiles.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([])).map(|_| ());
    exec("BEGIN IMMEDIATE").map_err(sql_err("begin"))?;
    for job in group.iter_mut() {
        let step = exec("SAVEPOINT job")
            .and_then(|()| {
                if job.run(conn) {
                    exec("RELEASE job")
                } else {
                    exec("ROLLBACK TO job").and_then(|()| exec("RELEASE job"))
                }
            })
            .map_err(sql_err("savepoint"));
        if let Err(e) = step {
            let _ = exec("ROLLBACK");
            return Err(e);
        }
    }
    if let Err(e) = exec("COMMIT") {
        let _ = exec("ROLLBACK");
        return Err(sql_err("commit")(e));
    }
    Ok(())
}
