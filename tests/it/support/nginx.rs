//! A real nginx in front of a test server, started from the deployment's own
//! configuration, `docs/deploy/nginx.conf`.
//!
//! The configuration is used as written but for what differs on a test
//! machine: the user, one worker, the pid, log and temporary files (in a
//! directory of the test's own), the listen address, the two upstream servers
//! and the static root; and `daemon off;`, so nginx is this process's child.
//! Each of those lines must be in the file exactly once, or the test fails
//! saying which. nginx listens on a socket the test bound to port 0 and hands
//! down (nginx's `NGINX` variable, as for its binary upgrade), so no port is
//! ever chosen and raced for. Dropping `Nginx` stops it.
//!
//! nginx must be installed: a test that needs it fails, saying how to install
//! it, when neither `PATH` nor `/usr/sbin` has it (`.ci/run` installs it).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::app::TestApp;
use super::client::try_request;
use super::TempDir;

/// The configuration under test.
const DEPLOYED: &str = "docs/deploy/nginx.conf";

/// How long nginx may take to start, or to stop once told.
const START: Duration = Duration::from_secs(15);

/// What `index.html` of the static root holds, for tests to recognise it.
pub const INDEX_HTML: &str = "<!doctype html><title>messaging test client</title>\n";

/// A running nginx, stopped on drop.
pub struct Nginx {
    /// Where clients reach it: the API, `/ws` and the static files.
    pub addr: SocketAddr,
    child: Child,
    config: String,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx on `docs/deploy/nginx.conf` in front of `app`, and waits
    /// until it answers `GET /healthz` from the server.
    pub fn start(app: &TestApp) -> Nginx {
        let binary = binary();
        let dir = TempDir::new("nginx");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port for nginx");
        let addr = listener.local_addr().expect("the port nginx listens on");
        let template_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEPLOYED);
        let template =
            fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
        let config = configure(&template, app, addr, dir.path());
        fs::create_dir_all(dir.path().join("root")).expect("create the static root");
        fs::write(dir.path().join("root/index.html"), INDEX_HTML).expect("write index.html");
        let config_path = dir.path().join("nginx.conf");
        fs::write(&config_path, &config).expect("write nginx.conf");

        let mut command = Command::new(&binary);
        command
            .arg("-c")
            .arg(&config_path)
            .env("NGINX", format!("{};", listener.as_raw_fd()))
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("create nginx's stdout"))
            .stderr(File::create(dir.path().join("stderr")).expect("create nginx's stderr"));
        let fd = listener.as_raw_fd();
        // SAFETY: between fork and exec the closure makes only async-signal-safe
        // calls, on a descriptor that stays open in the parent until after spawn.
        unsafe {
            command.pre_exec(move || {
                // The listening socket is handed down; Rust opens it close-on-exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // Should the test process die without dropping `Nginx`, nginx
                // still stops (SIGTERM: its workers stop with it).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        // nginx holds the socket now; connections made before it is ready wait in the backlog.
        drop(listener);
        let mut nginx = Nginx { addr, child, config, dir };
        nginx.wait_until_it_answers();
        nginx
    }

    /// A client of the server through nginx: requests and WebSockets (`/ws`)
    /// all go to nginx's address.
    pub fn client(&self, app: &TestApp) -> TestApp {
        TestApp::attach(self.addr, self.addr, &app.db_url)
    }

    /// The arguments of the one line of the configuration that starts with
    /// `prefix` (`limit_conn api_conn` gives `["128"]`), so tests read the
    /// limits from the configuration rather than repeat them.
    pub fn arguments(&self, prefix: &str) -> Vec<String> {
        let line = the_line(&self.config, prefix);
        let rest = line.trim().trim_end_matches(';').strip_prefix(prefix).expect("the line starts with the prefix");
        rest.split_whitespace().map(str::to_string).collect()
    }

    /// A whole-number setting: the argument of the line starting with
    /// `prefix` that is written `name=N`, or the only argument when `name` is empty.
    pub fn number(&self, prefix: &str, name: &str) -> usize {
        let arguments = self.arguments(prefix);
        let value = if name.is_empty() {
            arguments.first().cloned()
        } else {
            arguments.iter().find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string))
        };
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{DEPLOYED}: no number {name:?} in `{prefix} {}`", arguments.join(" ")))
    }

    /// nginx's stderr and error log, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("nginx stderr:\n{}\nnginx error.log:\n{}", read("stderr"), read("error.log"))
    }

    fn wait_until_it_answers(&mut self) {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for nginx") {
                panic!("nginx exited at start ({status}); its configuration:\n{}\n{}", self.config, self.logs());
            }
            match try_request(self.addr, "GET", "/healthz", &[], b"") {
                Ok(resp) if resp.status == 200 => return,
                Ok(resp) if Instant::now() >= deadline => {
                    panic!("nginx answers GET /healthz with:\n{}\n{}", resp.describe(), self.logs())
                }
                Err(problem) if Instant::now() >= deadline => {
                    panic!("nginx did not answer: {problem}\n{}", self.logs())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Nginx {
    /// SIGTERM, nginx's fast shutdown (the master stops its workers, then
    /// itself); SIGKILL if that takes longer than `START`.
    fn drop(&mut self) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits an i32");
        // SAFETY: kill(2) on our own child, which has not been reaped, so the pid is still its.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nginx binary: the first `nginx` on `PATH`, else `/usr/sbin/nginx`
/// (Debian's, outside an ordinary user's `PATH`). Panics when neither exists.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain([PathBuf::from("/usr/sbin/nginx")]).find(|path| path.is_file()).unwrap_or_else(|| {
        panic!(
            "nginx is not installed (not on PATH, not /usr/sbin/nginx): the proxy tests run the hostile \
             HTTP probes through a real nginx. Install it with `apt-get install nginx-light` (or `nginx`); \
             .ci/run does."
        )
    })
}

/// `template` with the lines that differ on a test machine replaced.
fn configure(template: &str, app: &TestApp, listen: SocketAddr, dir: &Path) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    // Workers run as root when the test does (the test's directory is its
    // own); otherwise nginx cannot change user, and the line goes.
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "# user: not root" };
    let mut config = replace_line(template, "user ", user);
    config = replace_line(&config, "worker_processes ", "worker_processes 1;");
    for (prefix, value) in [
        ("pid ", path("nginx.pid")),
        ("error_log ", path("error.log")),
        ("access_log ", path("access.log")),
        ("client_body_temp_path ", path("body")),
        ("proxy_temp_path ", path("proxy")),
        ("listen 80", listen.to_string()),
        ("server 127.0.0.1:8080", app.http_addr.to_string()),
        ("server 127.0.0.1:8081", app.ws_addr.to_string()),
        ("root /var/www/messaging", path("root")),
    ] {
        config = replace_first_argument(&config, prefix, &value);
    }
    format!("daemon off;\n{config}")
}

/// The one line of `config` whose text starts with `prefix` (indentation
/// aside); panics when there is none or more than one.
fn the_line<'a>(config: &'a str, prefix: &str) -> &'a str {
    let mut lines = config.lines().filter(|line| line.trim_start().starts_with(prefix));
    match (lines.next(), lines.next()) {
        (Some(line), None) => line,
        (None, _) => panic!("{DEPLOYED} has no line starting with `{prefix}`, which the proxy tests replace or read"),
        (Some(_), Some(_)) => panic!("{DEPLOYED} has more than one line starting with `{prefix}`"),
    }
}

/// `config` with the line starting with `prefix` replaced by `new`, indented alike.
fn replace_line(config: &str, prefix: &str, new: &str) -> String {
    let line = the_line(config, prefix);
    let indent = &line[..line.len() - line.trim_start().len()];
    config.replacen(line, &format!("{indent}{new}"), 1)
}

/// `config` with the first argument of the line starting with `prefix`
/// replaced by `value`: `error_log /var/log/nginx/error.log warn;` becomes
/// `error_log <value> warn;`.
fn replace_first_argument(config: &str, prefix: &str, value: &str) -> String {
    let line = the_line(config, prefix);
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let Some(first) = words.get_mut(1) else { panic!("{DEPLOYED}: `{}` has no argument", line.trim()) };
    let last = first.ends_with(';');
    let replaced = if last { format!("{value};") } else { value.to_string() };
    *first = &replaced;
    replace_line(config, prefix, &words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_replaced_once_and_keep_their_other_arguments() {
        let config = "user www-data;\nhttp {\n    error_log /var/log/x.log warn;\n    listen 80 default_server;\n}\n";

        let replaced = replace_first_argument(config, "error_log ", "/tmp/e.log");
        let replaced = replace_first_argument(&replaced, "listen 80", "127.0.0.1:5");
        let replaced = replace_line(&replaced, "user ", "user root;");

        assert_eq!(
            replaced,
            "user root;\nhttp {\n    error_log /tmp/e.log warn;\n    listen 127.0.0.1:5 default_server;\n}\n"
        );
        let missing = std::panic::catch_unwind(|| the_line(config, "pid "));
        assert!(missing.is_err(), "a missing line is an error");
        let twice = std::panic::catch_unwind(|| the_line("a 1;\na 2;\n", "a "));
        assert!(twice.is_err(), "a line there twice is an error");
    }
}
