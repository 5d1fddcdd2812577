//! Threads that must not die, and the stop flag they all obey.
//!
//! A thread started with `Watch::spawn` that panics or returns while the
//! server is not stopping is a bug the process cannot recover from (no hub,
//! no real-time delivery; no listener, no other process's events), so it is
//! logged at `error` and reported on the `deaths` channel, which
//! `Running::wait` turns into a failed exit: a supervisor then starts a fresh
//! process instead of one that serves HTTP without real time.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::log::Log;

/// Whether the server is stopping: set once, read by every loop.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Starts watched threads; cheap to clone.
#[derive(Clone)]
pub struct Watch {
    stop: Stop,
    log: Log,
    deaths: Sender<String>,
    /// The thread to break on purpose, for the test of this very mechanism.
    fault: Option<Arc<str>>,
}

/// How long a thread chosen by `MESSAGING_FAULT` runs before it panics.
const FAULT_AFTER: Duration = Duration::from_millis(500);

impl Watch {
    /// A watcher, and the channel on which the names of dead threads arrive.
    pub fn new(stop: Stop, log: Log, fault: Option<String>) -> (Watch, Receiver<String>) {
        let (deaths, died) = unbounded();
        (Watch { stop, log, deaths, fault: fault.map(Arc::from) }, died)
    }

    /// Starts `body` on a thread called `name`; its end while the server is
    /// not stopping is logged and reported.
    pub fn spawn(&self, name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
        let watch = self.clone();
        let thread = name.to_string();
        std::thread::Builder::new()
            .name(thread.clone())
            .spawn(move || {
                if watch.fault.as_deref() == Some(thread.as_str()) {
                    std::thread::sleep(FAULT_AFTER);
                    let broken = catch_unwind(|| panic!("MESSAGING_FAULT={thread}"));
                    return watch.died(&thread, broken.err());
                }
                let outcome = catch_unwind(AssertUnwindSafe(body));
                watch.died(&thread, outcome.err());
            })
            .map_err(|e| format!("cannot start the {name} thread: {e}"))
    }

    fn died(&self, thread: &str, panic: Option<Box<dyn Any + Send>>) {
        if self.stop.is_set() {
            return;
        }
        let cause = match &panic {
            None => "returned".to_string(),
            Some(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
        };
        self.log.error("thread died", &[("thread", &thread), ("cause", &cause)]);
        let _ = self.deaths.send(thread.to_string());
    }
}

/// The text a panic was raised with, when it was text.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "(no message)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Level;

    #[test]
    fn a_thread_that_ends_before_the_stop_is_reported_by_name() {
        let (watch, died) = Watch::new(Stop::default(), Log::new(Level::Off), None);
        watch.spawn("returns", || {}).unwrap();
        watch.spawn("panics", || panic!("on purpose")).unwrap();
        let mut names = vec![died.recv().unwrap(), died.recv().unwrap()];
        names.sort();
        assert_eq!(names, ["panics", "returns"]);
    }

    #[test]
    fn a_thread_that_ends_after_the_stop_is_not_reported() {
        let stop = Stop::default();
        let (watch, died) = Watch::new(stop.clone(), Log::new(Level::Off), None);
        stop.set();
        watch.spawn("quiet", || {}).unwrap();
        assert!(died.recv_timeout(Duration::from_millis(300)).is_err());
    }

    #[test]
    fn the_fault_switch_breaks_only_the_named_thread() {
        let (watch, died) = Watch::new(Stop::default(), Log::new(Level::Off), Some("victim".into()));
        let (ran, done) = unbounded();
        watch.spawn("victim", || unreachable!("the fault replaces the body")).unwrap();
        watch.spawn("bystander", move || ran.send(()).unwrap()).unwrap();
        done.recv().unwrap();
        assert_eq!(died.recv().unwrap(), "bystander", "the bystander returned, which is also a death");
        assert_eq!(died.recv().unwrap(), "victim");
    }
}
