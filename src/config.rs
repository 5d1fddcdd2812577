//! Every knob of the server, read from environment variables with safe defaults.
//!
//! `Config::from_lookup` checks all of them and returns one message per bad
//! value, so an operator fixes everything in one go; `main` prints them.
//! Tests build a `Config` the same way, from a map instead of the environment.

use std::time::Duration;

use crate::forwarded::TrustedProxies;
use crate::log::Level;
use crate::migrate;
use crate::ratelimit::Rate;

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    pub http_addr: String,
    pub ws_addr: String,
    pub workers: usize,
    /// Signs WebSocket tickets. `serve` refuses to start without one.
    pub secret_key: Vec<u8>,
    pub token_ttl: Duration,
    pub password_iterations: u32,
    pub max_body_bytes: usize,
    pub log: Level,
    pub rate_limits: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Origins allowed to open a WebSocket; empty means any.
    pub ws_allowed_origins: Vec<String>,
    pub ws_queue: usize,
    /// Open WebSockets this process accepts; more are closed at once.
    pub ws_max_connections: usize,
    /// What HTTP connections may cost: the `HTTP_*` timeouts and bound, enforced by the patched tiny_http.
    pub http_limits: tiny_http::Limits,
    /// Open WebSockets of one user in this process.
    pub ws_max_per_user: usize,
    /// Open WebSockets from one client address in this process.
    pub ws_max_per_address: usize,
    /// WebSocket handshakes in flight from one TCP peer (trusted proxies excepted).
    pub ws_handshakes_per_address: usize,
    /// Frames one WebSocket may send, per second.
    pub ws_frames: Rate,
    /// Messages one user may send, per 10 seconds, over REST and WebSocket together.
    pub messages: Rate,
    /// Sign-ups from one client address, per hour.
    pub signups: Rate,
    /// Where `serve` looks for migrations to check: `MIGRATIONS_DIR`, or the built-in files.
    pub migrations: migrate::Source,
    /// A test-only fault (`MESSAGING_FAULT`, read by debug builds only): a
    /// watched thread's name makes it panic soon after it starts, and
    /// `silent-notifier` makes the notifier drop every signal.
    pub fault: Option<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, Vec<String>> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads each variable through `lookup`; collects one message per problem.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let get = |name: &str, default: &str| -> String {
            match lookup(name) {
                Some(value) if !value.trim().is_empty() => value.trim().to_string(),
                _ => default.to_string(),
            }
        };
        let database_url = get("DATABASE_URL", "");
        let http_addr = get("HTTP_ADDR", "127.0.0.1:8080");
        let ws_addr = get("WS_ADDR", "127.0.0.1:8081");
        let workers = get("WORKERS", "8");
        let secret_key = get("SECRET_KEY", "");
        let token_ttl = get("TOKEN_TTL_SECS", "2592000");
        let iterations = get("PASSWORD_ITERATIONS", "600000");
        let max_body = get("MAX_BODY_BYTES", "65536");
        let log = get("LOG", "info");
        let rate_limits = get("RATE_LIMITS", "on");
        let trusted_proxies = get("TRUSTED_PROXIES", "");
        let origins = get("WS_ALLOWED_ORIGINS", "");
        let ws_queue = get("WS_QUEUE", "1024");
        let ws_max_connections = get("WS_MAX_CONNECTIONS", "10000");
        let head_timeout = get("HTTP_HEAD_TIMEOUT_SECS", "10");
        let idle_timeout = get("HTTP_IDLE_TIMEOUT_SECS", "60");
        let body_timeout = get("HTTP_BODY_TIMEOUT_SECS", "30");
        let write_timeout = get("HTTP_WRITE_TIMEOUT_SECS", "10");
        let http_max_connections = get("HTTP_MAX_CONNECTIONS", "1024");
        let ws_max_per_user = get("WS_MAX_PER_USER", "64");
        let ws_max_per_address = get("WS_MAX_PER_ADDRESS", "256");
        let ws_handshakes_per_address = get("WS_HANDSHAKES_PER_ADDRESS", "32");
        let ws_frame_rate = get("WS_FRAME_RATE", "20");
        let ws_frame_burst = get("WS_FRAME_BURST", "40");
        let message_rate = get("MESSAGE_RATE", "30");
        let message_burst = get("MESSAGE_BURST", "60");
        let signup_rate = get("SIGNUP_RATE", "20");
        let migrations = migrate::Source::from_migrations_dir(lookup("MIGRATIONS_DIR").as_deref());

        if database_url.is_empty() {
            problems.push("DATABASE_URL is not set (e.g. postgresql://user@localhost/messaging)".into());
        } else if database_url.parse::<postgres::Config>().is_err() {
            problems.push("DATABASE_URL is not a valid PostgreSQL connection string".into());
        }
        if secret_key.len() < 32 {
            problems.push("SECRET_KEY must be set to at least 32 characters (`make run` creates one)".into());
        }
        let config = Config {
            database_url,
            http_addr,
            ws_addr,
            workers: number(&mut problems, "WORKERS", &workers, 1, 1024),
            secret_key: secret_key.into_bytes(),
            token_ttl: Duration::from_secs(number(&mut problems, "TOKEN_TTL_SECS", &token_ttl, 1, 10 * 365 * 86400)),
            password_iterations: number(&mut problems, "PASSWORD_ITERATIONS", &iterations, 1000, 100_000_000),
            max_body_bytes: number(&mut problems, "MAX_BODY_BYTES", &max_body, 1024, 64 << 20),
            log: Level::parse(&log).unwrap_or_else(|| {
                problems.push(format!("LOG must be error, warn, info, debug or off, not {log:?}"));
                Level::Info
            }),
            rate_limits: match rate_limits.as_str() {
                "on" => true,
                "off" => false,
                _ => {
                    problems.push(format!("RATE_LIMITS must be on or off, not {rate_limits:?}"));
                    true
                }
            },
            trusted_proxies: TrustedProxies::parse(&trusted_proxies).unwrap_or_else(|problem| {
                problems.push(problem);
                TrustedProxies::default()
            }),
            ws_allowed_origins: origins.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect(),
            ws_queue: number(&mut problems, "WS_QUEUE", &ws_queue, 16, 1 << 20),
            ws_max_connections: number(&mut problems, "WS_MAX_CONNECTIONS", &ws_max_connections, 1, 1 << 20),
            http_limits: tiny_http::Limits {
                head_timeout: seconds(&mut problems, "HTTP_HEAD_TIMEOUT_SECS", &head_timeout, 3600),
                idle_timeout: seconds(&mut problems, "HTTP_IDLE_TIMEOUT_SECS", &idle_timeout, 86400),
                body_timeout: seconds(&mut problems, "HTTP_BODY_TIMEOUT_SECS", &body_timeout, 3600),
                write_timeout: seconds(&mut problems, "HTTP_WRITE_TIMEOUT_SECS", &write_timeout, 3600),
                max_connections: number(&mut problems, "HTTP_MAX_CONNECTIONS", &http_max_connections, 1, 1 << 20),
            },
            ws_max_per_user: number(&mut problems, "WS_MAX_PER_USER", &ws_max_per_user, 1, 1 << 20),
            ws_max_per_address: number(&mut problems, "WS_MAX_PER_ADDRESS", &ws_max_per_address, 1, 1 << 20),
            ws_handshakes_per_address: number(
                &mut problems,
                "WS_HANDSHAKES_PER_ADDRESS",
                &ws_handshakes_per_address,
                1,
                1 << 20,
            ),
            ws_frames: Rate {
                count: number(&mut problems, "WS_FRAME_RATE", &ws_frame_rate, 1, 1_000_000),
                per: Duration::from_secs(1),
                burst: number(&mut problems, "WS_FRAME_BURST", &ws_frame_burst, 1, 1_000_000),
            },
            messages: Rate {
                count: number(&mut problems, "MESSAGE_RATE", &message_rate, 1, 1_000_000),
                per: Duration::from_secs(10),
                burst: number(&mut problems, "MESSAGE_BURST", &message_burst, 1, 1_000_000),
            },
            signups: {
                let count = number(&mut problems, "SIGNUP_RATE", &signup_rate, 1, 1_000_000);
                Rate { count, per: Duration::from_secs(3600), burst: count }
            },
            migrations,
            fault: lookup("MESSAGING_FAULT").filter(|_| cfg!(debug_assertions)),
        };
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

/// Descriptors kept free for what no setting counts: listeners, stdio, the
/// process's few files and short-lived connections.
const DESCRIPTOR_MARGIN: u64 = 64;

/// Memory mappings of one open WebSocket, as counted in `/proc/PID/maps`:
/// its reader and writer threads, each a stack and guard pages.
const MAPPINGS_PER_WEBSOCKET: u64 = 8;
/// Memory mappings of one HTTP connection's thread.
const MAPPINGS_PER_HTTP_CONNECTION: usize = 4;
/// Mappings kept for the rest: the binary and its libraries, the workers,
/// the background threads, the allocator's arenas.
const MAPPING_MARGIN: u64 = 2000;

/// What one database connection holds open, as counted in `/proc/PID/fd`:
/// its socket, and the `postgres` crate's runtime's two epoll instances and
/// its eventfd.
const DESCRIPTORS_PER_DATABASE_CONNECTION: usize = 4;

impl Config {
    /// The open files this configuration may need at once: one per WebSocket,
    /// two per HTTP connection (tiny_http keeps a read and a write handle of
    /// each socket), `DESCRIPTORS_PER_DATABASE_CONNECTION` for each database
    /// connection `server::start` opens (workers, `WORKERS / 2` job threads
    /// but at least 2, the listener, the notifier, presence), twice over for
    /// an old one still closing while its replacement connects, and
    /// `DESCRIPTOR_MARGIN`.
    pub fn descriptors_needed(&self) -> u64 {
        let database = self.workers + (self.workers / 2).max(2) + 3;
        let database_descriptors = 2 * DESCRIPTORS_PER_DATABASE_CONNECTION * database;
        (self.ws_max_connections + 2 * self.http_limits.max_connections + database_descriptors) as u64
            + DESCRIPTOR_MARGIN
    }

    /// The most WebSockets that fit in `max_map_count` memory mappings
    /// (`/proc/sys/vm/max_map_count`), past which the kernel refuses new
    /// threads and memory and the process aborts: `MAPPINGS_PER_WEBSOCKET`
    /// each, after `MAPPINGS_PER_HTTP_CONNECTION` for each HTTP connection
    /// and `MAPPING_MARGIN` for the rest of the process.
    pub fn websockets_within(&self, max_map_count: u64) -> usize {
        let http = (MAPPINGS_PER_HTTP_CONNECTION * self.http_limits.max_connections) as u64;
        let left = max_map_count.saturating_sub(http + MAPPING_MARGIN);
        (left / MAPPINGS_PER_WEBSOCKET) as usize
    }

    /// Refuses a configuration that cannot fit in `limit` open files, in one line.
    pub fn check_descriptors(&self, limit: u64) -> Result<(), String> {
        let needed = self.descriptors_needed();
        if needed <= limit {
            return Ok(());
        }
        Err(format!(
            "the open files limit ({limit}) is below the {needed} descriptors that WS_MAX_CONNECTIONS={} \
             and HTTP_MAX_CONNECTIONS={} need: raise it (ulimit -n, systemd's LimitNOFILE) or lower them",
            self.ws_max_connections, self.http_limits.max_connections
        ))
    }
}

/// Parses a whole number of seconds from 1 to `max`, or records why not.
fn seconds(problems: &mut Vec<String>, name: &str, value: &str, max: u64) -> Duration {
    Duration::from_secs(number(problems, name, value, 1, max))
}

/// Parses a whole number within bounds, or records why not.
fn number<T>(problems: &mut Vec<String>, name: &str, value: &str, min: T, max: T) -> T
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match value.parse::<T>() {
        Ok(n) if n >= min && n <= max => n,
        _ => {
            problems.push(format!("{name} must be a whole number from {min} to {max}, not {value:?}"));
            min
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_apply_when_only_required_values_are_set() {
        let config =
            Config::from_lookup(lookup(&[("DATABASE_URL", "postgresql://u@localhost/m"), ("SECRET_KEY", KEY)]))
                .unwrap();
        assert_eq!(config.http_addr, "127.0.0.1:8080");
        assert_eq!(config.ws_addr, "127.0.0.1:8081");
        assert_eq!(config.password_iterations, 600_000);
        assert_eq!(config.max_body_bytes, 65536);
        assert_eq!(config.token_ttl, Duration::from_secs(30 * 86400));
        assert!(config.rate_limits);
        assert_eq!(config.ws_queue, 1024);
        assert_eq!(config.ws_max_connections, 10000);
        assert_eq!(config.http_limits.max_connections, 1024);
        assert_eq!(
            (config.ws_max_per_user, config.ws_max_per_address, config.ws_handshakes_per_address),
            (64, 256, 32)
        );
        assert_eq!(config.ws_frames, Rate { count: 20, per: Duration::from_secs(1), burst: 40 });
        assert_eq!(config.messages, Rate { count: 30, per: Duration::from_secs(10), burst: 60 });
        assert_eq!(config.signups, Rate { count: 20, per: Duration::from_secs(3600), burst: 20 });
        assert_eq!(config.http_limits.head_timeout, Duration::from_secs(10));
        assert_eq!(config.http_limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.http_limits.body_timeout, Duration::from_secs(30));
        assert_eq!(config.http_limits.write_timeout, Duration::from_secs(10));
        assert_eq!(config.http_limits.max_connections, 1024);
        assert_eq!(config.migrations, migrate::Source::Embedded);
    }

    #[test]
    fn descriptors_count_websockets_http_connections_twice_database_connections_four_times_twice_and_a_margin() {
        let config = Config::from_lookup(lookup(&[
            ("DATABASE_URL", "postgresql://u@localhost/m"),
            ("SECRET_KEY", KEY),
            ("WORKERS", "8"),
            ("WS_MAX_CONNECTIONS", "1000"),
            ("HTTP_MAX_CONNECTIONS", "100"),
        ]))
        .unwrap();
        let needed = 1000 + 2 * 100 + 2 * 4 * (8 + 4 + 3) + 64;
        assert_eq!(config.descriptors_needed(), needed);
        assert_eq!(config.check_descriptors(needed), Ok(()));
        let refused = config.check_descriptors(needed - 1).unwrap_err();
        assert!(!refused.contains('\n'), "one line: {refused}");
        for part in ["WS_MAX_CONNECTIONS=1000", "HTTP_MAX_CONNECTIONS=100", &(needed - 1).to_string()] {
            assert!(refused.contains(part), "{refused:?} names {part}");
        }
    }

    #[test]
    fn websockets_fit_in_the_mappings_left_after_http_connections_and_a_margin() {
        let config = Config::from_lookup(lookup(&[
            ("DATABASE_URL", "postgresql://u@localhost/m"),
            ("SECRET_KEY", KEY),
            ("HTTP_MAX_CONNECTIONS", "1000"),
        ]))
        .unwrap();
        assert_eq!(config.websockets_within(65530), (65530 - 4 * 1000 - 2000) / 8);
        assert_eq!(config.websockets_within(1000), 0, "nothing left");
    }

    #[test]
    fn http_max_connections_must_be_a_positive_whole_number() {
        for bad in ["0", "many", "-5", "2000000"] {
            let problems = Config::from_lookup(|name: &str| match name {
                "DATABASE_URL" => Some("postgresql://u@localhost/m".into()),
                "SECRET_KEY" => Some(KEY.into()),
                "HTTP_MAX_CONNECTIONS" => Some(bad.into()),
                _ => None,
            })
            .unwrap_err();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(problems[0].contains("HTTP_MAX_CONNECTIONS"), "{bad}: {problems:?}");
        }
    }

    #[test]
    fn migrations_dir_names_a_directory_read_instead_of_the_built_in_migrations() {
        let config = Config::from_lookup(lookup(&[
            ("DATABASE_URL", "postgresql://u@localhost/m"),
            ("SECRET_KEY", KEY),
            ("MIGRATIONS_DIR", "/srv/messaging/sql"),
        ]))
        .unwrap();
        assert_eq!(config.migrations, migrate::Source::Dir("/srv/messaging/sql".into()));
    }

    #[test]
    fn every_bad_value_gets_its_own_message() {
        let problems = Config::from_lookup(lookup(&[
            ("WORKERS", "zero"),
            ("LOG", "loud"),
            ("RATE_LIMITS", "maybe"),
            ("MAX_BODY_BYTES", "-1"),
            ("WS_MAX_PER_USER", "0"),
            ("WS_FRAME_BURST", "lots"),
            ("MESSAGE_RATE", "-3"),
            ("SIGNUP_RATE", "1.5"),
        ]))
        .unwrap_err();
        let joined = problems.join("\n");
        let names = ["DATABASE_URL", "SECRET_KEY", "WORKERS", "LOG", "RATE_LIMITS", "MAX_BODY_BYTES"];
        for name in names.iter().chain(&["WS_MAX_PER_USER", "WS_FRAME_BURST", "MESSAGE_RATE", "SIGNUP_RATE"]) {
            assert!(joined.contains(name), "no message names {name}: {joined}");
        }
        assert_eq!(problems.len(), 10, "{joined}");
    }

    #[test]
    fn trusted_proxies_are_addresses_and_networks() {
        let config = Config::from_lookup(lookup(&[
            ("DATABASE_URL", "postgresql://u@localhost/m"),
            ("SECRET_KEY", KEY),
            ("TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
        ]))
        .unwrap();
        assert!(config.trusted_proxies.contains("10.2.3.4".parse().unwrap()));
        let problems = Config::from_lookup(lookup(&[
            ("DATABASE_URL", "postgresql://u@localhost/m"),
            ("SECRET_KEY", KEY),
            ("TRUSTED_PROXIES", "127.0.0.1, proxy"),
        ]))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("TRUSTED_PROXIES") && problems[0].contains("proxy"), "{problems:?}");
    }

    #[test]
    fn origins_are_split_on_commas() {
        let config = Config::from_lookup(lookup(&[
            ("DATABASE_URL", "postgresql://u@localhost/m"),
            ("SECRET_KEY", KEY),
            ("WS_ALLOWED_ORIGINS", "https://a.example, https://b.example"),
        ]))
        .unwrap();
        assert_eq!(config.ws_allowed_origins, ["https://a.example", "https://b.example"]);
    }
}
