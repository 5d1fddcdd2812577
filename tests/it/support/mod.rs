//! The test harness: a database per test, a server per test, and a client
//! that reads as user actions.
//!
//! `pg` owns PostgreSQL (one cluster per run, one database per test cloned
//! from a migrated template), `app` starts servers on port 0, and `client`
//! speaks plain HTTP/1.1 over a fresh TCP connection per request, so a
//! `TestApp` can be shared by many threads. `nginx` puts a real nginx,
//! configured by `docs/deploy/nginx.conf`, in front of a server.

pub mod app;
pub mod client;
pub mod nginx;
pub mod pg;
pub mod ws;

#[allow(unused_imports)]
pub use app::{spawn_app, spawn_app_on, spawn_app_on_listeners, spawn_app_with, TestApp};
#[allow(unused_imports)]
pub use client::{
    assert_keys, assert_utc_timestamp, check_error, check_limited, connect_from, random_hex, request, request_from,
    try_request, Resp, TestUser,
};
#[allow(unused_imports)]
pub use pg::{fresh_database, PrivateCluster};

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Polls `probe` until it returns `Some`, panicking with `what` after `timeout`.
///
/// Tests wait for conditions with a deadline, never with a bare sleep.
#[allow(dead_code)]
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new, empty directory under the system's temporary directory, removed
/// with everything in it on drop.
#[allow(dead_code)]
pub struct TempDir {
    path: PathBuf,
}

#[allow(dead_code)]
impl TempDir {
    /// Creates `msg-it-WHAT-<pid>-<random>`.
    pub fn new(what: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("msg-it-{what}-{}-{}", std::process::id(), random_hex(6)));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
