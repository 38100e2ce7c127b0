//! The single writer: one thread owns the SQLite connection and runs every
//! operation, group-committing all that are pending in one transaction.
//!
//! Why one writer: SQLite allows one writer at a time anyway, and an fsync
//! costs the same for one row as for a thousand. Jobs queue on a channel; the
//! thread takes all that are waiting, runs each inside its own savepoint (so a
//! failing job rolls back alone; a job alone needs none), commits once, and
//! only then answers each caller. A caller therefore never hears `Ok` for a
//! write that is not yet on disk.
//!
//! Sends run without a savepoint ([`Writer::run_without_savepoint`]): a send
//! fails only when SQLite does (a full disk, an I/O error), and then the
//! whole group is rolled back and every job in it hears an error. The
//! gateway keeps several batches in flight, so a group usually holds more
//! than one send, and a savepoint per send cost SQLite a copy of every page
//! the send touched (`docs/benchmarks.md`, eighth session).

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
    /// Whether the job runs inside a savepoint of its own when it shares
    /// the transaction; without one, its failure rolls back the group.
    fn guarded(&self) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), QueueError>);
}

struct Work<F, R> {
    work: Option<F>,
    guarded: bool,
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

    fn guarded(&self) -> bool {
        self.guarded
    }

    fn finish(self: Box<Self>, commit: Result<(), QueueError>) {
        let answer = match (commit, self.outcome) {
            // A job that failed says why, also when its failure is what
            // rolled the group back.
            (Err(_), Some(Err(own))) => Err(own),
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
    /// commit is durable. If the commit fails, the result is that error. If
    /// `work` fails, its changes roll back and the group's other jobs commit.
    pub(crate) async fn run<R, F>(&self, work: F) -> Result<R, QueueError>
    where
        F: FnOnce(&Connection) -> Result<R, QueueError> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(work, true).await
    }

    /// [`Writer::run`] for work that fails only when SQLite does (a send):
    /// no savepoint of its own, so if it fails, the whole group rolls back
    /// and every job in it hears an error, none an `Ok`.
    pub(crate) async fn run_without_savepoint<R, F>(&self, work: F) -> Result<R, QueueError>
    where
        F: FnOnce(&Connection) -> Result<R, QueueError> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(work, false).await
    }

    async fn submit<R, F>(&self, work: F, guarded: bool) -> Result<R, QueueError>
    where
        F: FnOnce(&Connection) -> Result<R, QueueError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Work { work: Some(work), guarded, outcome: None, reply });
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
        settle(&conn, group);
    }
}

/// Runs `group` as one transaction, then answers every job.
fn settle(conn: &Connection, mut group: Vec<Box<dyn Job>>) {
    let commit = commit_group(conn, &mut group);
    if let Err(e) = &commit {
        tracing::error!(error = %e, jobs = group.len(), "embedded queue: group commit failed");
    }
    for job in group {
        job.finish(commit.clone());
    }
}

fn commit_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> Result<(), QueueError> {
    let sql_err = |what: &'static str| {
        move |e: rusqlite::Error| QueueError::unavailable(format!("embedded queue: {what}"), e)
    };
    // Cached statements: these run for every job, and parsing them each time
    // showed in profiles.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([])).map(|_| ());
    let commit = || match exec("COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = exec("ROLLBACK");
            Err(sql_err("commit")(e))
        }
    };
    exec("BEGIN IMMEDIATE").map_err(sql_err("begin"))?;
    // A job alone needs no savepoint: if it fails, rolling back the whole
    // transaction is the same thing. And a savepoint is not free: SQLite
    // copies every page a job changes into the savepoint's journal first
    // (`docs/benchmarks.md`, sixth session).
    if let [job] = group {
        if job.run(conn) {
            return commit();
        }
        // The job's own error is its answer; the transaction leaves nothing.
        return exec("ROLLBACK").map_err(sql_err("rollback"));
    }
    for job in group.iter_mut() {
        if !job.guarded() {
            if job.run(conn) {
                continue;
            }
            // Part of its work may be in the transaction, and nothing marks
            // where it began: none of the group can commit.
            let _ = exec("ROLLBACK");
            return Err(QueueError::unavailable_msg(
                "embedded queue: a send in the same group commit failed; nothing was stored",
            ));
        }
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
    commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that inserts `x`, then fails if `fail`, inside a savepoint of
    /// its own if `guarded`; and where its answer goes.
    fn job(x: i64, fail: bool, guarded: bool) -> (Box<dyn Job>, oneshot::Receiver<Result<(), QueueError>>) {
        let (reply, answer) = oneshot::channel();
        let work = move |c: &Connection| {
            c.execute("INSERT INTO t (x) VALUES (?1)", [x])
                .map_err(|e| QueueError::unavailable("insert", e))?;
            if fail {
                return Err(QueueError::Invalid(format!("job {x} fails")));
            }
            Ok(())
        };
        (Box::new(Work { work: Some(work), guarded, outcome: None, reply }), answer)
    }

    /// Runs `jobs` (guarded) as one group commit; returns what is in the
    /// table and each job's answer.
    fn group(jobs: &[(i64, bool)]) -> (Vec<i64>, Vec<Result<(), QueueError>>) {
        let jobs: Vec<_> = jobs.iter().map(|&(x, fail)| (x, fail, true)).collect();
        mixed_group(&jobs)
    }

    /// Runs `(x, fail, guarded)` jobs as one group commit.
    fn mixed_group(jobs: &[(i64, bool, bool)]) -> (Vec<i64>, Vec<Result<(), QueueError>>) {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (x INTEGER)").expect("table");
        let (group, answers): (Vec<_>, Vec<_>) =
            jobs.iter().map(|&(x, fail, guarded)| job(x, fail, guarded)).unzip();
        settle(&conn, group);
        let mut st = conn.prepare("SELECT x FROM t ORDER BY x").expect("select");
        let rows = st.query_map([], |r| r.get(0)).expect("query").collect::<Result<Vec<i64>, _>>();
        let answers = answers.into_iter().map(|mut a| a.try_recv().expect("answered")).collect();
        (rows.expect("rows"), answers)
    }

    /// In a group, a failing job's changes roll back and the others commit;
    /// each job hears its own outcome.
    #[test]
    fn a_failing_job_rolls_back_alone() {
        let (rows, answers) = group(&[(1, false), (2, true), (3, false)]);
        assert_eq!(rows, [1, 3]);
        assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
        assert!(matches!(&answers[1], Err(QueueError::Invalid(m)) if m == "job 2 fails"), "{answers:?}");
    }

    /// A job alone runs without a savepoint: failing, it leaves nothing and
    /// hears its own error; succeeding, it commits.
    #[test]
    fn a_job_alone_commits_or_leaves_nothing() {
        let (rows, answers) = group(&[(2, true)]);
        assert_eq!(rows, Vec::<i64>::new());
        assert!(matches!(&answers[0], Err(QueueError::Invalid(m)) if m == "job 2 fails"), "{answers:?}");
        let (rows, answers) = group(&[(4, false)]);
        assert_eq!(rows, [4]);
        assert!(answers[0].is_ok(), "{answers:?}");
    }

    /// Jobs without a savepoint (sends) commit together with the rest; one
    /// that fails takes the whole group back, since nothing marks where its
    /// work began: every job hears an error (the failing one its own), and
    /// nothing is stored, so no caller hears `Ok` for a row that is not there.
    #[test]
    fn a_failing_job_without_savepoint_rolls_back_the_group() {
        let (rows, answers) = mixed_group(&[(1, false, false), (2, false, true), (3, false, false)]);
        assert_eq!(rows, [1, 2, 3]);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");

        let (rows, answers) =
            mixed_group(&[(1, false, false), (2, false, true), (3, true, false), (4, false, false)]);
        assert_eq!(rows, Vec::<i64>::new());
        assert!(matches!(&answers[2], Err(QueueError::Invalid(m)) if m == "job 3 fails"), "{answers:?}");
        for i in [0, 1, 3] {
            assert!(matches!(&answers[i], Err(e) if e.is_retryable()), "job {i}: {answers:?}");
        }
    }

    /// A guarded job that fails still rolls back alone beside jobs without
    /// a savepoint.
    #[test]
    fn a_guarded_failure_beside_sends_rolls_back_alone() {
        let (rows, answers) = mixed_group(&[(1, false, false), (2, true, true), (3, false, false)]);
        assert_eq!(rows, [1, 3]);
        assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
        assert!(matches!(&answers[1], Err(QueueError::Invalid(m)) if m == "job 2 fails"), "{answers:?}");
    }
}
