//! Every knob of the server, read from environment variables with safe defaults.
//!
//! `Config::from_lookup` checks all of them and returns one message per bad
//! value, so an operator fixes everything in one go; `main` prints them.
//! Tests build a `Config` the same way, from a map instead of the environment.

use std::time::Duration;

use crate::log::Level;
use crate::migrate;

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
    /// Origins allowed to open a WebSocket; empty means any.
    pub ws_allowed_origins: Vec<String>,
    pub ws_queue: usize,
    /// Open WebSockets this process accepts; more are closed at once.
    pub ws_max_connections: usize,
    /// What HTTP connections may cost: the `HTTP_*` timeouts and bound, enforced by the patched tiny_http.
    pub http_limits: tiny_http::Limits,
    /// Where `serve` looks for migrations to check: `MIGRATIONS_DIR`, or the built-in files.
    pub migrations: migrate::Source,
    /// A test-only fault: the named watched thread panics soon after it
    /// starts (`MESSAGING_FAULT`, read by debug builds only).
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
        let origins = get("WS_ALLOWED_ORIGINS", "");
        let ws_queue = get("WS_QUEUE", "1024");
        let ws_max_connections = get("WS_MAX_CONNECTIONS", "10000");
        let head_timeout = get("HTTP_HEAD_TIMEOUT_SECS", "10");
        let idle_timeout = get("HTTP_IDLE_TIMEOUT_SECS", "60");
        let body_timeout = get("HTTP_BODY_TIMEOUT_SECS", "30");
        let write_timeout = get("HTTP_WRITE_TIMEOUT_SECS", "10");
        let http_max_connections = get("HTTP_MAX_CONNECTIONS", "1024");
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
        assert_eq!(config.http_limits.head_timeout, Duration::from_secs(10));
        assert_eq!(config.http_limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.http_limits.body_timeout, Duration::from_secs(30));
        assert_eq!(config.http_limits.write_timeout, Duration::from_secs(10));
        assert_eq!(config.http_limits.max_connections, 1024);
        assert_eq!(config.migrations, migrate::Source::Embedded);
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
        ]))
        .unwrap_err();
        let joined = problems.join("\n");
        for name in ["DATABASE_URL", "SECRET_KEY", "WORKERS", "LOG", "RATE_LIMITS", "MAX_BODY_BYTES"] {
            assert!(joined.contains(name), "no message names {name}: {joined}");
        }
        assert_eq!(problems.len(), 6, "{joined}");
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
