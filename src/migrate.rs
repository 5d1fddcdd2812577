//! Plain SQL migrations: `sql/NNNN_name.up.sql` and its `.down.sql`.
//!
//! Each file runs in its own transaction, in version order, and is recorded in
//! `schema_migrations` with the SHA-256 of its text. An applied file whose text
//! changed is an error naming it, so the database never silently drifts from
//! the files. A session-level advisory lock keeps two migrators from racing.
//! This file holds its own bookkeeping SQL; the application's is in `store.rs`.

use std::fmt;
use std::path::{Path, PathBuf};

use postgres::Client;
use sha2::{Digest, Sha256};

use crate::error::describe;

/// Arbitrary, fixed: the advisory lock key all migrators agree on.
const LOCK_KEY: i64 = 0x6d65_7373_6167_6521;

#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<postgres::Error> for Error {
    fn from(error: postgres::Error) -> Error {
        Error(format!("database: {}", describe(&error)))
    }
}

/// One migration as found on disk.
#[derive(Debug, PartialEq, Eq)]
struct Migration {
    version: i64,
    /// The file stem without direction, e.g. `0001_create_users`.
    stem: String,
    up: PathBuf,
    down: PathBuf,
}

/// Connects to `url` with the server's timeouts, for a migration command.
pub fn connect(url: &str) -> Result<Client, String> {
    crate::db::connection_config(url)?
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to DATABASE_URL: {}", describe(&e)))
}

/// Applies every pending migration; returns the stems applied.
pub fn up(client: &mut Client, dir: &Path) -> Result<Vec<String>, Error> {
    with_lock(client, |client| {
        let migrations = read_dir(dir)?;
        let applied = applied(client, &migrations)?;
        let mut done = Vec::new();
        for migration in migrations.iter().filter(|m| !applied.contains(&m.version)) {
            let text = read(&migration.up)?;
            let mut tx = client.transaction()?;
            tx.batch_execute(&text).map_err(|e| Error(format!("{}: {}", migration.up.display(), describe(&e))))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.stem, &checksum(&text)],
            )?;
            tx.commit()?;
            done.push(migration.stem.clone());
        }
        Ok(done)
    })
}

/// Rolls back the `n` most recently applied migrations; returns their stems.
pub fn down(client: &mut Client, dir: &Path, n: usize) -> Result<Vec<String>, Error> {
    with_lock(client, |client| {
        let migrations = read_dir(dir)?;
        let applied = applied(client, &migrations)?;
        let mut done = Vec::new();
        for migration in migrations.iter().rev().filter(|m| applied.contains(&m.version)).take(n) {
            let text = read(&migration.down)?;
            let mut tx = client.transaction()?;
            tx.batch_execute(&text).map_err(|e| Error(format!("{}: {}", migration.down.display(), describe(&e))))?;
            tx.execute("DELETE FROM schema_migrations WHERE version = $1", &[&migration.version])?;
            tx.commit()?;
            done.push(migration.stem.clone());
        }
        Ok(done)
    })
}

/// Every migration file's stem and whether it is applied, in version order.
pub fn status(client: &mut Client, dir: &Path) -> Result<Vec<(String, bool)>, Error> {
    let migrations = read_dir(dir)?;
    let exists: bool = client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?.get(0);
    let applied = if exists { applied(client, &migrations)? } else { Vec::new() };
    Ok(migrations.into_iter().map(|m| (m.stem, applied.contains(&m.version))).collect())
}

/// The stems of migrations not yet applied; `serve` refuses to start unless empty.
pub fn pending(client: &mut Client, dir: &Path) -> Result<Vec<String>, Error> {
    Ok(status(client, dir)?.into_iter().filter(|(_, applied)| !applied).map(|(stem, _)| stem).collect())
}

fn with_lock<T>(client: &mut Client, work: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])?;
    let result = client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    bigint PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .map_err(Error::from)
        .and_then(|()| work(client));
    client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])?;
    result
}

/// The applied versions, after checking each against its file.
fn applied(client: &mut Client, migrations: &[Migration]) -> Result<Vec<i64>, Error> {
    let rows = client.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", &[])?;
    let mut versions = Vec::new();
    for row in rows {
        let (version, name, recorded): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some(migration) = migrations.iter().find(|m| m.version == version) else {
            return Err(Error(format!("migration {name} is applied but its file is missing")));
        };
        if checksum(&read(&migration.up)?) != recorded {
            return Err(Error(format!(
                "{} changed after it was applied (checksum differs); add a new migration instead",
                migration.up.display()
            )));
        }
        versions.push(version);
    }
    Ok(versions)
}

/// Finds the migrations in `dir`, in version order; every up file needs its
/// down file, and no two files share a version.
fn read_dir(dir: &Path) -> Result<Vec<Migration>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error(format!("{}: {e}", dir.display())))?;
    let mut migrations: Vec<Migration> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error(format!("{}: {e}", dir.display())))?.path();
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !file_name.ends_with(".sql") {
            continue;
        }
        let Some((version, stem)) = parse_up_name(file_name) else {
            match parse_down_name(file_name) {
                Some((_, stem)) if dir.join(format!("{stem}.up.sql")).is_file() => continue,
                Some(_) => return Err(Error(format!("{} has no up file beside it", path.display()))),
                None => return Err(Error(format!("{}: name must look like 0001_create_users.up.sql", path.display()))),
            }
        };
        if let Some(twin) = migrations.iter().find(|m| m.version == version) {
            return Err(Error(format!("{} and {} share version {version}", twin.up.display(), path.display())));
        }
        let down = dir.join(format!("{stem}.down.sql"));
        if !down.is_file() {
            return Err(Error(format!("{} has no {}", path.display(), down.display())));
        }
        migrations.push(Migration { version, stem: stem.to_string(), up: path.clone(), down });
    }
    migrations.sort_by_key(|m| m.version);
    Ok(migrations)
}

/// `0001_create_users.up.sql` → `(1, "0001_create_users")`.
fn parse_up_name(file_name: &str) -> Option<(i64, &str)> {
    parse_stem(file_name.strip_suffix(".up.sql")?)
}

fn parse_down_name(file_name: &str) -> Option<(i64, &str)> {
    parse_stem(file_name.strip_suffix(".down.sql")?)
}

fn parse_stem(stem: &str) -> Option<(i64, &str)> {
    let (digits, name) = stem.split_once('_')?;
    let valid_name =
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let valid_digits = digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit());
    if !(valid_name && valid_digits) {
        return None;
    }
    Some((digits.parse().ok()?, stem))
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error(format!("{}: {e}", path.display())))
}

fn checksum(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_file_names_are_parsed_strictly() {
        assert_eq!(parse_up_name("0001_create_users.up.sql"), Some((1, "0001_create_users")));
        assert_eq!(parse_down_name("0012_add_x2.down.sql"), Some((12, "0012_add_x2")));
        for bad in [
            "1_create.up.sql",
            "0001-create.up.sql",
            "0001_.up.sql",
            "0001_Create.up.sql",
            "0001_x.sql",
            "abcd_x.up.sql",
        ] {
            assert_eq!(parse_up_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_project_migrations_are_well_formed_and_paired() {
        let migrations = read_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))).unwrap();
        assert!(!migrations.is_empty());
        for (idx, migration) in migrations.iter().enumerate() {
            assert_eq!(migration.version, idx as i64 + 1, "versions run 1, 2, 3, … without gaps");
            let text = read(&migration.up).unwrap();
            assert!(text.starts_with("-- "), "{} opens with a comment saying why", migration.stem);
        }
    }
}
