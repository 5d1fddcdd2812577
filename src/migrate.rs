//! Plain SQL migrations: `sql/NNNN_name.up.sql` and its `.down.sql`.
//!
//! The files are built into the binary (`build.rs`), so it migrates from any
//! working directory; `MIGRATIONS_DIR` names a directory to read at run time
//! instead, and both sources pass the same checks. Each file runs in its own
//! transaction, in version order, and is recorded in `schema_migrations` with
//! the SHA-256 of its text. An applied file whose text changed is an error
//! naming it, so the database never silently drifts from the files. A
//! session-level advisory lock keeps two migrators from racing.
//! This file holds its own bookkeeping SQL; the application's is in `store.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use postgres::Client;
use sha2::{Digest, Sha256};

use crate::error::describe;

/// Arbitrary, fixed: the advisory lock key all migrators agree on.
const LOCK_KEY: i64 = 0x6d65_7373_6167_6521;

/// The `sql/*.sql` files as they were at build time, `(file name, text)`
/// sorted by name; `build.rs` writes the list.
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Why migrating failed, in one line that names the file at fault.
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

/// Where the migration files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `sql/*.sql` files built into the binary (see `build.rs`).
    Embedded,
    /// The `*.sql` files in this directory, read at run time.
    Dir(PathBuf),
}

impl Source {
    /// The source `MIGRATIONS_DIR` selects: that directory when it is set and
    /// not blank, otherwise the files built into the binary.
    pub fn from_migrations_dir(value: Option<&str>) -> Source {
        match value.map(str::trim) {
            Some(dir) if !dir.is_empty() => Source::Dir(PathBuf::from(dir)),
            _ => Source::Embedded,
        }
    }

    /// Every `.sql` file's name and text, sorted by name; other files are ignored.
    pub fn files(&self) -> Result<Vec<(String, String)>, Error> {
        match self {
            Source::Embedded => Ok(EMBEDDED.iter().map(|&(name, text)| (name.to_string(), text.to_string())).collect()),
            Source::Dir(dir) => read_dir(dir),
        }
    }

    /// A file's name in error messages: its path, or `sql/NAME` when embedded.
    fn show(&self, file_name: &str) -> String {
        match self {
            Source::Embedded => format!("sql/{file_name}"),
            Source::Dir(dir) => dir.join(file_name).display().to_string(),
        }
    }
}

/// The `.sql` files in `dir`, as `Source::files` returns them.
fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, Error> {
    let dir_error = |e: std::io::Error| Error(format!("{}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_error)? {
        let file_name = entry.map_err(dir_error)?.file_name();
        let Some(file_name) = file_name.to_str().filter(|name| name.ends_with(".sql")) else {
            continue;
        };
        let path = dir.join(file_name);
        let text = std::fs::read_to_string(&path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
        files.push((file_name.to_string(), text));
    }
    files.sort();
    Ok(files)
}

/// One migration: both of its files, read and paired.
#[derive(Debug)]
struct Migration {
    version: i64,
    /// The file stem without direction, e.g. `0001_create_users`.
    stem: String,
    up: SqlFile,
    down: SqlFile,
}

/// A migration file's text, and its name as error messages show it.
#[derive(Debug)]
struct SqlFile {
    shown: String,
    text: String,
}

/// Connects to `url` with the server's timeouts, for a migration command.
pub fn connect(url: &str) -> Result<Client, String> {
    crate::db::connection_config(url)?
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to DATABASE_URL: {}", describe(&e)))
}

/// Applies every pending migration; returns the stems applied.
pub fn up(client: &mut Client, source: &Source) -> Result<Vec<String>, Error> {
    with_lock(client, |client| {
        let migrations = load(source)?;
        let applied = applied(client, &migrations)?;
        let mut done = Vec::new();
        for migration in migrations.iter().filter(|m| !applied.contains(&m.version)) {
            let mut tx = client.transaction()?;
            tx.batch_execute(&migration.up.text)
                .map_err(|e| Error(format!("{}: {}", migration.up.shown, describe(&e))))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.stem, &checksum(&migration.up.text)],
            )?;
            tx.commit()?;
            done.push(migration.stem.clone());
        }
        Ok(done)
    })
}

/// Rolls back the `n` most recently applied migrations; returns their stems.
pub fn down(client: &mut Client, source: &Source, n: usize) -> Result<Vec<String>, Error> {
    with_lock(client, |client| {
        let migrations = load(source)?;
        let applied = applied(client, &migrations)?;
        let mut done = Vec::new();
        for migration in migrations.iter().rev().filter(|m| applied.contains(&m.version)).take(n) {
            let mut tx = client.transaction()?;
            tx.batch_execute(&migration.down.text)
                .map_err(|e| Error(format!("{}: {}", migration.down.shown, describe(&e))))?;
            tx.execute("DELETE FROM schema_migrations WHERE version = $1", &[&migration.version])?;
            tx.commit()?;
            done.push(migration.stem.clone());
        }
        Ok(done)
    })
}

/// Every migration's stem and whether it is applied, in version order.
pub fn status(client: &mut Client, source: &Source) -> Result<Vec<(String, bool)>, Error> {
    let migrations = load(source)?;
    let exists: bool = client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?.get(0);
    let applied = if exists { applied(client, &migrations)? } else { Vec::new() };
    Ok(migrations.into_iter().map(|m| (m.stem, applied.contains(&m.version))).collect())
}

/// The stems of migrations not yet applied; `serve` refuses to start unless empty.
pub fn pending(client: &mut Client, source: &Source) -> Result<Vec<String>, Error> {
    Ok(status(client, source)?.into_iter().filter(|(_, applied)| !applied).map(|(stem, _)| stem).collect())
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
        if checksum(&migration.up.text) != recorded {
            return Err(Error(format!(
                "{} changed after it was applied (checksum differs); add a new migration instead",
                migration.up.shown
            )));
        }
        versions.push(version);
    }
    Ok(versions)
}

/// Reads the migrations of `source`, checked and in version order.
fn load(source: &Source) -> Result<Vec<Migration>, Error> {
    parse(source, source.files()?)
}

/// Pairs `files` (name, text) into migrations in version order: every name is
/// well formed, every up file has its down file and every down file its up
/// file, and no two up files share a version. Both sources pass through here.
fn parse(source: &Source, files: Vec<(String, String)>) -> Result<Vec<Migration>, Error> {
    let mut ups: Vec<(i64, String, SqlFile)> = Vec::new();
    let mut downs: BTreeMap<String, SqlFile> = BTreeMap::new();
    for (file_name, text) in files {
        let file = SqlFile { shown: source.show(&file_name), text };
        if let Some((version, stem)) = parse_up_name(&file_name) {
            ups.push((version, stem.to_string(), file));
        } else if let Some((_, stem)) = parse_down_name(&file_name) {
            downs.insert(stem.to_string(), file);
        } else {
            return Err(Error(format!("{}: name must look like 0001_create_users.up.sql", file.shown)));
        }
    }
    let mut migrations: Vec<Migration> = Vec::new();
    for (version, stem, up) in ups {
        if let Some(twin) = migrations.iter().find(|m| m.version == version) {
            return Err(Error(format!("{} and {} share version {version}", twin.up.shown, up.shown)));
        }
        let Some(down) = downs.remove(&stem) else {
            return Err(Error(format!("{} has no {}", up.shown, source.show(&format!("{stem}.down.sql")))));
        };
        migrations.push(Migration { version, stem, up, down });
    }
    if let Some(orphan) = downs.into_values().next() {
        return Err(Error(format!("{} has no up file beside it", orphan.shown)));
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
    fn the_embedded_migrations_are_well_formed_and_paired() {
        let migrations = load(&Source::Embedded).unwrap();
        assert!(!migrations.is_empty());
        for (idx, migration) in migrations.iter().enumerate() {
            assert_eq!(migration.version, idx as i64 + 1, "versions run 1, 2, 3, … without gaps");
            assert!(migration.up.text.starts_with("-- "), "{} opens with a comment saying why", migration.stem);
            assert_eq!(migration.up.shown, format!("sql/{}.up.sql", migration.stem));
            assert_eq!(migration.down.shown, format!("sql/{}.down.sql", migration.stem));
        }
    }

    #[test]
    fn migrations_dir_overrides_the_embedded_files_only_when_set_and_not_blank() {
        assert_eq!(Source::from_migrations_dir(None), Source::Embedded);
        assert_eq!(Source::from_migrations_dir(Some("")), Source::Embedded);
        assert_eq!(Source::from_migrations_dir(Some("  ")), Source::Embedded);
        assert_eq!(Source::from_migrations_dir(Some(" /srv/sql ")), Source::Dir(PathBuf::from("/srv/sql")));
    }

    #[test]
    fn files_are_paired_by_stem_and_each_problem_names_its_file() {
        let files = |names: &[&str]| -> Vec<(String, String)> {
            names.iter().map(|name| (name.to_string(), format!("-- {name}\n"))).collect()
        };
        let migrations =
            parse(&Source::Embedded, files(&["0001_a.down.sql", "0001_a.up.sql", "0002_b.down.sql", "0002_b.up.sql"]))
                .unwrap();
        let paired: Vec<(i64, &str, &str, &str)> =
            migrations.iter().map(|m| (m.version, m.stem.as_str(), m.up.text.as_str(), m.down.text.as_str())).collect();
        assert_eq!(
            paired,
            [
                (1, "0001_a", "-- 0001_a.up.sql\n", "-- 0001_a.down.sql\n"),
                (2, "0002_b", "-- 0002_b.up.sql\n", "-- 0002_b.down.sql\n")
            ]
        );

        // (description, files, the source, what the error says)
        let dir = Source::Dir(PathBuf::from("/srv/sql"));
        let cases: &[(&str, &[&str], &Source, &str)] = &[
            ("a bad name", &["0001_A.up.sql"], &Source::Embedded, "sql/0001_A.up.sql: name must look like"),
            ("no down file", &["0001_a.up.sql"], &Source::Embedded, "sql/0001_a.up.sql has no sql/0001_a.down.sql"),
            ("no up file", &["0001_a.down.sql"], &dir, "/srv/sql/0001_a.down.sql has no up file beside it"),
            (
                "a shared version",
                &["0001_a.down.sql", "0001_a.up.sql", "0001_b.down.sql", "0001_b.up.sql"],
                &dir,
                "/srv/sql/0001_a.up.sql and /srv/sql/0001_b.up.sql share version 1",
            ),
        ];
        for (description, names, source, want) in cases {
            let error = parse(source, files(names)).unwrap_err().to_string();
            assert!(error.contains(want), "{description}: {error:?} should contain {want:?}");
        }
    }
}
