//! The one thread that writes the file, committing in groups.
//!
//! Every write of the store is a [`Job`] sent to this thread. It takes
//! whatever jobs have arrived, runs them in one `IMMEDIATE` transaction and
//! commits, so a burst of inserts, completions and claims from many threads
//! costs one commit; each job's answer is sent only after the commit that
//! made it durable. When a group fails (a full disk, a constraint a row
//! breaks), it is rolled back and each job runs again alone, so one job's
//! failure is that job's answer and no other's.
//!
//! Before each commit the thread checks that the path still names the file
//! it opened (device and inode): SQLite would go on writing to a deleted or
//! replaced file, acknowledging work no restart will ever see. Once lost, the
//! store answers every write with [`StoreError::Lost`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Most jobs committed in one group.
const MAX_GROUP: usize = 256;

/// A unit of work for the writer: runs inside a transaction, answers after
/// the commit (or with the error that stopped it).
pub(super) trait Job: Send {
    /// Runs the work; may run again (alone) if its group is rolled back.
    fn run(&mut self, db: &Connection) -> rusqlite::Result<()>;
    /// Sends the outcome: the work's result after a commit, or `error`.
    fn answer(self: Box<Self>, error: Option<StoreError>);
}

/// A job built from a closure and the channel its answer goes to.
struct Work<T, F> {
    work: F,
    result: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    what: &'static str,
}

impl<T: Send, F: FnMut(&Connection) -> rusqlite::Result<T> + Send> Job for Work<T, F> {
    fn run(&mut self, db: &Connection) -> rusqlite::Result<()> {
        self.result = Some((self.work)(db)?);
        Ok(())
    }

    fn answer(self: Box<Self>, error: Option<StoreError>) {
        let outcome = match (error, self.result) {
            (Some(error), _) => Err(error),
            (None, Some(result)) => Ok(result),
            (None, None) => Err(StoreError::Backend {
                context: format!("cannot {}", self.what),
                source: "the work did not run".into(),
            }),
        };
        // The caller may have gone away; its loss.
        let _ = self.reply.send(outcome);
    }
}

/// The sending side, held by the store.
#[derive(Clone)]
pub(super) struct Jobs(Sender<Box<dyn Job>>);

impl Jobs {
    /// Sends `work` to the writer now, and returns the wait for its
    /// committed result. Sending at once (not at the first poll) lets a
    /// caller queue two jobs back to back, so they share a commit.
    pub(super) fn run<T, F>(
        &self,
        what: &'static str,
        work: F,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Work {
            work,
            result: None,
            reply,
            what,
        });
        let sent = self.0.send(job).map_err(|_| StoreError::Closed);
        async move {
            sent?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }
}

/// The identity of the file a store opened: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    /// The identity of the file at `path`, `None` if there is none.
    #[cfg(unix)]
    pub(super) fn of(path: &Path) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(metadata) => Ok(Some(FileIdentity {
                device: metadata.dev(),
                inode: metadata.ino(),
            })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    #[cfg(not(unix))]
    pub(super) fn of(_path: &Path) -> std::io::Result<Option<Self>> {
        Ok(None)
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    connection: Connection,
    jobs: Receiver<Box<dyn Job>>,
    path: PathBuf,
    /// What the path named when the store was opened.
    identity: Option<FileIdentity>,
    /// Why the file is no longer the one opened, once it is not.
    lost: Option<String>,
}

impl Writer {
    /// Starts the thread; the store sends jobs through the returned sender.
    pub(super) fn start(
        connection: Connection,
        path: PathBuf,
        identity: Option<FileIdentity>,
    ) -> std::io::Result<Jobs> {
        let (sender, jobs) = crossbeam_channel::unbounded();
        let writer = Writer {
            connection,
            jobs,
            path,
            identity,
            lost: None,
        };
        std::thread::Builder::new()
            .name("taskflow-store".into())
            .spawn(move || writer.run())?;
        Ok(Jobs(sender))
    }

    fn run(mut self) {
        // Ends when every sender (the store and its clones) is gone.
        while let Ok(first) = self.jobs.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match self.jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
    }

    /// Runs a group in one transaction; on failure, each job alone.
    fn commit(&mut self, mut group: Vec<Box<dyn Job>>) {
        if self.lost.is_none() {
            self.check_identity();
        }
        if let Some(reason) = &self.lost {
            for job in group {
                job.answer(Some(StoreError::Lost(reason.clone())));
            }
            return;
        }
        match self.transaction(&mut group) {
            Ok(()) => group.into_iter().for_each(|job| job.answer(None)),
            Err(_) if group.len() > 1 => {
                for mut job in group {
                    let alone = self.transaction(std::slice::from_mut(&mut job));
                    job.answer(alone.err().map(backend("write to the task store")));
                }
            }
            Err(error) => {
                for job in group {
                    job.answer(Some(backend("write to the task store")(clone_error(
                        &error,
                    ))));
                }
            }
        }
    }

    fn transaction(&mut self, jobs: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
        // IMMEDIATE takes the write lock up front, so another process's
        // commit cannot invalidate this transaction halfway.
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for job in jobs.iter_mut() {
            job.run(&transaction)?;
        }
        transaction.commit()
    }

    /// Notices a store file deleted or replaced since it was opened.
    fn check_identity(&mut self) {
        let Some(expected) = self.identity else {
            return;
        };
        let what = match FileIdentity::of(&self.path) {
            Ok(Some(found)) if found == expected => return,
            Ok(Some(_)) => "was replaced by another file",
            Ok(None) => "was deleted",
            // Unreadable metadata (a directory permission changed) does not
            // prove the file is gone; the commit itself will tell.
            Err(error) => {
                tracing::debug!("cannot check the task store file: {error}");
                return;
            }
        };
        self.lost = Some(format!(
            "the task store file at {} {what} while in use; task changes are no longer saved (restart to open the store again)",
            self.path.display()
        ));
    }
}

/// Wraps a SQLite error with what was being done.
pub(super) fn backend(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Backend {
        context: format!("cannot {context}"),
        source: Box::new(source),
    }
}

/// A copy of `error` for every job of a failed group (rusqlite errors are
/// not `Clone`): its text, kept as the source.
fn clone_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::ModuleError(other.to_string()),
    }
}

/// How long the writer may wait for another process's lock: the
/// connection's busy timeout, set when it was opened.
pub(super) fn set_busy_timeout(connection: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    connection.busy_timeout(timeout)
}
