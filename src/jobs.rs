//! Database work for the real-time side, on a few threads that each own a `Db`.
//!
//! WebSocket connections and the hub never hold a database connection: a
//! thousand idle sockets would otherwise need a thousand. They hand a closure
//! to `Jobs` and, when they need the answer, wait for it with a deadline.
//! The queue is bounded, so a burst fails fast (`503`) instead of growing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::db::Db;
use crate::error::ApiError;
use crate::log::Log;
use crate::metrics::Metrics;
use crate::watch::{panic_message, Watch};

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// How long a caller waits for its job's answer before giving up with `503`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
const QUEUE: usize = 4096;

#[derive(Clone)]
pub struct Jobs {
    queue: Sender<Job>,
}

impl Jobs {
    /// Starts `threads` watched threads, each with its own connection to `database_url`.
    pub fn start(
        database_url: &str,
        threads: usize,
        log: Log,
        metrics: &Arc<Metrics>,
        watch: &Watch,
    ) -> Result<Jobs, String> {
        let (queue, jobs) = bounded::<Job>(QUEUE);
        for idx in 0..threads {
            let mut db = Db::new(database_url, metrics)?;
            let jobs: Receiver<Job> = jobs.clone();
            let thread = format!("db-job-{idx}");
            watch.spawn(&thread.clone(), move || {
                for job in jobs {
                    db.begin();
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| job(&mut db))) {
                        log.error("job panicked", &[("thread", &thread), ("cause", &panic_message(panic.as_ref()))]);
                        db.disconnect();
                    }
                }
            })?;
        }
        Ok(Jobs { queue })
    }

    /// Queues work whose result nobody waits for; `false` if the queue is full.
    pub fn spawn(&self, job: impl FnOnce(&mut Db) + Send + 'static) -> bool {
        self.queue.try_send(Box::new(job)).is_ok()
    }

    /// Queues `work`; its result, or the panic it raised as an internal
    /// error, goes to `then` on the job thread, so whoever waits for an
    /// answer always gets one. `false` if the queue is full.
    pub fn spawn_then<T>(
        &self,
        work: impl FnOnce(&mut Db) -> Result<T, ApiError> + Send + 'static,
        then: impl FnOnce(Result<T, ApiError>) + Send + 'static,
    ) -> bool {
        self.spawn(move |db| {
            let outcome = catch_unwind(AssertUnwindSafe(|| work(db))).unwrap_or_else(|panic| {
                db.disconnect();
                Err(ApiError::Internal(format!("a database job panicked: {}", panic_message(panic.as_ref()))))
            });
            then(outcome);
        })
    }

    /// Runs `work` on a job thread and waits for its answer.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Db) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (answer, answered) = bounded(1);
        if !self.spawn_then(work, move |outcome| drop(answer.send(outcome))) {
            return Err(ApiError::unavailable("the database job queue is full"));
        }
        answered
            .recv_timeout(ANSWER_TIMEOUT)
            .unwrap_or_else(|_| Err(ApiError::unavailable("a database job did not answer in time")))
    }
}
