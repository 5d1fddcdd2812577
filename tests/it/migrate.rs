//! The migration runner, called as a library on a database that starts empty:
//! order, bookkeeping, rollback, checksums, file names, failed files, racing
//! migrators, the files built into the binary matching `sql/`, and
//! `server::start` refusing to run with pending migrations.
//!
//! These tests create their database with a plain `CREATE DATABASE` rather
//! than from the harness's migrated template, so nothing is applied before
//! the test applies it. Sabotage (edited, misnamed or failing files) happens
//! in a copy of `sql/` in a temporary directory, never in `sql/` itself.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use messaging::migrate::{self, Source};
use postgres::Client;
use sha2::{Digest, Sha256};

use crate::support::pg::{admin_url, connect, db_error, with_database};
use crate::support::{random_hex, TempDir};

/// A new database with nothing in it, and its URL: not cloned from the template.
pub fn empty_database() -> String {
    let database = format!("test_empty_{}", random_hex(8));
    let mut admin = connect(admin_url());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .unwrap_or_else(|e| panic!("create database {database}: {}", db_error(&e)));
    with_database(admin_url(), &database)
}

/// The project's `sql/` directory.
pub fn sql_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sql")).to_path_buf()
}

/// The stems of the up files in `dir`, sorted: `0001_create_users`, ….
pub fn stems(dir: &Path) -> Vec<String> {
    let mut stems: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("read a directory entry").file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_suffix(".up.sql").map(String::from))
        .collect();
    stems.sort();
    stems
}

/// A copy of `sql/` that a test may sabotage; removed on drop.
pub struct SqlCopy {
    temp: TempDir,
}

impl SqlCopy {
    pub fn new() -> SqlCopy {
        let temp = TempDir::new("sql");
        for entry in fs::read_dir(sql_dir()).expect("read sql/") {
            let path = entry.expect("read an sql/ entry").path();
            fs::copy(&path, temp.path().join(path.file_name().expect("a file name"))).expect("copy a migration");
        }
        SqlCopy { temp }
    }

    pub fn dir(&self) -> &Path {
        self.temp.path()
    }

    /// The copy as a migration source.
    pub fn source(&self) -> Source {
        Source::Dir(self.dir().to_path_buf())
    }

    pub fn write(&self, file_name: &str, text: &str) {
        fs::write(self.dir().join(file_name), text).unwrap_or_else(|e| panic!("write {file_name}: {e}"));
    }

    fn append(&self, file_name: &str, text: &str) {
        let path = self.dir().join(file_name);
        let mut contents = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file_name}: {e}"));
        contents.push_str(text);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {file_name}: {e}"));
    }
}

/// The tables in the public schema, sorted.
fn tables(client: &mut Client) -> Vec<String> {
    client
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
        .expect("list tables")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Every table, sequence, view, index, function and free-standing type in
/// the public schema, besides `schema_migrations` and its primary key.
fn leftovers(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT 'relation ' || relname FROM pg_class
              WHERE relnamespace = 'public'::regnamespace
                AND relname NOT IN ('schema_migrations', 'schema_migrations_pkey')
             UNION ALL
             SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
             UNION ALL
             SELECT 'type ' || typname FROM pg_type
              WHERE typnamespace = 'public'::regnamespace AND typrelid = 0 AND typelem = 0
             ORDER BY 1",
            &[],
        )
        .expect("list what the schema holds")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The versions recorded in `schema_migrations`, in order.
fn recorded_versions(client: &mut Client) -> Vec<i64> {
    client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .expect("read schema_migrations")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The version number a stem starts with: `0003_create_chats` → 3.
fn version_of(stem: &str) -> i64 {
    stem[..4].parse().unwrap_or_else(|e| panic!("{stem} does not start with four digits: {e}"))
}

/// The tables a migration's up file creates, from its `CREATE TABLE` lines.
fn tables_created_by(dir: &Path, stem: &str) -> Vec<String> {
    let text = fs::read_to_string(dir.join(format!("{stem}.up.sql"))).expect("read an up file");
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("CREATE TABLE "))
        .map(|rest| rest.trim_start_matches("IF NOT EXISTS ").split([' ', '(']).next().unwrap_or("").to_string())
        .collect();
    names.sort();
    names
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Unwraps an `Err`, failing with what `Ok` held otherwise.
fn expect_error<T: std::fmt::Debug>(result: Result<T, migrate::Error>, what: &str) -> String {
    match result {
        Ok(value) => panic!("{what}: expected an error, got Ok({value:?})"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn up_applies_every_file_in_version_order_records_it_and_a_second_up_applies_nothing() {
    let mut client = connect(&empty_database());
    let dir = sql_dir();
    let source = Source::Dir(dir.clone());
    let stems = stems(&dir);
    assert!(!stems.is_empty(), "sql/ holds migrations");

    let applied = migrate::up(&mut client, &source).unwrap_or_else(|e| panic!("up: {e}"));

    assert_eq!(applied, stems, "up returns every stem, in version order");
    let rows = client
        .query(
            "SELECT version, name, checksum, applied_at <= now() AND applied_at > now() - interval '5 minutes'
               FROM schema_migrations ORDER BY version",
            &[],
        )
        .expect("read schema_migrations");
    assert_eq!(rows.len(), stems.len(), "one row per migration");
    for (row, stem) in rows.iter().zip(&stems) {
        let (version, name, checksum, recent): (i64, String, String, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(version, version_of(stem), "{stem}: version");
        assert_eq!(&name, stem, "{stem}: name");
        assert!(
            checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{stem}: checksum {checksum:?} is not 64 lowercase hex characters"
        );
        let text = fs::read(dir.join(format!("{stem}.up.sql"))).expect("read an up file");
        assert_eq!(checksum, sha256_hex(&text), "{stem}: checksum is the SHA-256 of the up file");
        assert!(recent, "{stem}: applied_at is a moment ago");
    }
    // Each file commits its own transaction, so now() grows in the order they ran.
    let in_order: bool = client
        .query_one(
            "SELECT coalesce(bool_and(ordered), true) FROM (
                SELECT applied_at >= lag(applied_at) OVER (ORDER BY version) AS ordered FROM schema_migrations
             ) AS pairs",
            &[],
        )
        .expect("compare applied_at")
        .get(0);
    assert!(in_order, "applied_at grows with the version: files ran in version order");
    for stem in &stems {
        for table in tables_created_by(&dir, stem) {
            assert!(tables(&mut client).contains(&table), "{stem} created table {table}");
        }
    }

    let again = migrate::up(&mut client, &source).unwrap_or_else(|e| panic!("second up: {e}"));
    let status = migrate::status(&mut client, &source).unwrap_or_else(|e| panic!("status: {e}"));
    let pending = migrate::pending(&mut client, &source).unwrap_or_else(|e| panic!("pending: {e}"));

    assert_eq!(again, Vec::<String>::new(), "a second up applies nothing");
    assert_eq!(recorded_versions(&mut client).len(), stems.len(), "a second up records nothing");
    let want: Vec<(String, bool)> = stems.iter().map(|stem| (stem.clone(), true)).collect();
    assert_eq!(status, want, "status lists every stem as applied");
    assert_eq!(pending, Vec::<String>::new(), "nothing is pending");
}

#[test]
fn status_on_an_empty_database_lists_every_stem_as_pending_and_creates_nothing() {
    let mut client = connect(&empty_database());
    let dir = sql_dir();
    let source = Source::Dir(dir.clone());
    let stems = stems(&dir);

    let status = migrate::status(&mut client, &source).unwrap_or_else(|e| panic!("status: {e}"));
    let pending = migrate::pending(&mut client, &source).unwrap_or_else(|e| panic!("pending: {e}"));

    let want: Vec<(String, bool)> = stems.iter().map(|stem| (stem.clone(), false)).collect();
    assert_eq!(status, want, "status lists every stem as pending");
    assert_eq!(pending, stems, "pending lists every stem");
    assert_eq!(tables(&mut client), Vec::<String>::new(), "status only reads");
}

/// What the public schema holds: every relation, and every column with its type.
fn shape(client: &mut Client) -> Vec<String> {
    let mut shape = leftovers(client);
    let columns = client
        .query(
            "SELECT table_name || '.' || column_name || ' ' || data_type FROM information_schema.columns
              WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .expect("list columns");
    shape.extend(columns.iter().map(|row| row.get::<_, String>(0)));
    shape
}

#[test]
fn down_one_rolls_back_only_the_newest_and_up_reapplies_it() {
    let mut client = connect(&empty_database());
    let dir = sql_dir();
    let source = Source::Dir(dir.clone());
    let stems = stems(&dir);
    let newest = stems.last().expect("at least one migration").clone();
    migrate::up(&mut client, &source).unwrap_or_else(|e| panic!("up: {e}"));
    let whole = shape(&mut client);
    // The schema as it stood before the newest migration, built from a copy without it.
    let older_only = SqlCopy::new();
    for direction in ["up", "down"] {
        fs::remove_file(older_only.dir().join(format!("{newest}.{direction}.sql"))).expect("remove the newest");
    }
    let mut reference = connect(&empty_database());
    migrate::up(&mut reference, &older_only.source()).unwrap_or_else(|e| panic!("up without {newest}: {e}"));
    let before_newest = shape(&mut reference);
    assert_ne!(whole, before_newest, "{newest} changes the schema");

    let rolled_back = migrate::down(&mut client, &source, 1).unwrap_or_else(|e| panic!("down 1: {e}"));

    assert_eq!(rolled_back, vec![newest.clone()], "down 1 rolls back the newest only");
    assert_eq!(shape(&mut client), before_newest, "the schema is as it was before {newest}");
    let older: Vec<i64> = stems[..stems.len() - 1].iter().map(|stem| version_of(stem)).collect();
    assert_eq!(recorded_versions(&mut client), older, "only the row of {newest} is gone");
    let status = migrate::status(&mut client, &source).unwrap_or_else(|e| panic!("status: {e}"));
    let want: Vec<(String, bool)> = stems.iter().map(|stem| (stem.clone(), *stem != newest)).collect();
    assert_eq!(status, want, "status after down 1");

    let reapplied = migrate::up(&mut client, &source).unwrap_or_else(|e| panic!("up again: {e}"));

    assert_eq!(reapplied, vec![newest.clone()], "up re-applies {newest} only");
    assert_eq!(shape(&mut client), whole, "what {newest} made is back");
    assert_eq!(recorded_versions(&mut client).len(), stems.len(), "every migration is recorded again");
}

#[test]
fn down_more_than_the_count_rolls_back_everything_and_leaves_an_empty_schema() {
    let mut client = connect(&empty_database());
    let dir = sql_dir();
    let source = Source::Dir(dir.clone());
    let stems = stems(&dir);
    migrate::up(&mut client, &source).unwrap_or_else(|e| panic!("up: {e}"));

    let rolled_back = migrate::down(&mut client, &source, stems.len() + 5).unwrap_or_else(|e| panic!("down: {e}"));

    let newest_first: Vec<String> = stems.iter().rev().cloned().collect();
    assert_eq!(rolled_back, newest_first, "down rolls back every migration, newest first");
    assert_eq!(tables(&mut client), vec!["schema_migrations".to_string()], "only schema_migrations is left");
    assert_eq!(leftovers(&mut client), Vec::<String>::new(), "the down files leave nothing behind");
    assert_eq!(recorded_versions(&mut client), Vec::<i64>::new(), "schema_migrations is empty");
    assert_eq!(migrate::pending(&mut client, &source).unwrap_or_else(|e| panic!("pending: {e}")), stems);

    let nothing = migrate::down(&mut client, &source, 1).unwrap_or_else(|e| panic!("down on an empty schema: {e}"));
    let reapplied = migrate::up(&mut client, &source).unwrap_or_else(|e| panic!("up after down: {e}"));

    assert_eq!(nothing, Vec::<String>::new(), "down with nothing applied rolls back nothing");
    assert_eq!(reapplied, stems, "everything applies again after a full rollback");
}

#[test]
fn an_applied_file_whose_text_changed_makes_up_status_and_down_fail_naming_it() {
    let mut client = connect(&empty_database());
    let sql = SqlCopy::new();
    let stems = stems(sql.dir());
    migrate::up(&mut client, &sql.source()).unwrap_or_else(|e| panic!("up: {e}"));
    let edited = format!("{}.up.sql", stems[1]);

    sql.append(&edited, "-- An innocent-looking edit after the fact.\n");

    let errors = [
        ("up", expect_error(migrate::up(&mut client, &sql.source()), "up after an edit")),
        ("status", expect_error(migrate::status(&mut client, &sql.source()), "status after an edit")),
        ("pending", expect_error(migrate::pending(&mut client, &sql.source()), "pending after an edit")),
        ("down", expect_error(migrate::down(&mut client, &sql.source(), 1), "down after an edit")),
    ];
    for (what, error) in errors {
        assert!(error.contains(&edited), "{what}: the error names {edited}: {error}");
        assert!(error.contains("changed"), "{what}: the error says the file changed: {error}");
    }
    assert_eq!(recorded_versions(&mut client).len(), stems.len(), "nothing was rolled back");
}

#[test]
fn a_badly_named_or_unpaired_file_is_an_error_naming_it() {
    let mut client = connect(&empty_database());
    // (description, files to add, the file the error must name)
    let cases: &[(&str, &[&str], &str)] = &[
        ("a version without four digits", &["7_x.up.sql"], "7_x.up.sql"),
        ("an upper-case name", &["0007_Add_x.up.sql"], "0007_Add_x.up.sql"),
        ("no direction", &["0007_add_x.sql"], "0007_add_x.sql"),
        ("an up file without its down file", &["0007_add_x.up.sql"], "0007_add_x.up.sql"),
        ("a down file without its up file", &["0007_add_x.down.sql"], "0007_add_x.down.sql"),
        ("two files sharing a version", &["0003_other.up.sql", "0003_other.down.sql"], "0003_other.up.sql"),
    ];
    for (description, files, named) in cases {
        let sql = SqlCopy::new();
        for file in *files {
            sql.write(file, "-- A file that should never run.\nCREATE TABLE never_created (id int);\n");
        }

        let up = expect_error(migrate::up(&mut client, &sql.source()), description);
        let status = expect_error(migrate::status(&mut client, &sql.source()), description);

        let named = format!("/{named}");
        assert!(up.contains(&named), "{description}: up names {named}: {up}");
        assert!(status.contains(&named), "{description}: status names {named}: {status}");
        assert_eq!(recorded_versions(&mut client), Vec::<i64>::new(), "{description}: nothing was applied");
        assert_eq!(tables(&mut client), vec!["schema_migrations".to_string()], "{description}: no table was created");
    }
}

#[test]
fn a_migration_whose_sql_fails_leaves_nothing_of_itself_behind_and_is_named() {
    let mut client = connect(&empty_database());
    let sql = SqlCopy::new();
    let stems = stems(sql.dir());
    let broken = format!("{:04}_break_things", stems.len() + 1);
    sql.write(
        &format!("{broken}.up.sql"),
        "-- Creates a table, then fails.\nCREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n",
    );
    sql.write(&format!("{broken}.down.sql"), "-- Undoes it.\nDROP TABLE half_done;\n");

    let error = expect_error(migrate::up(&mut client, &sql.source()), "up with a failing file");

    assert!(error.contains(&format!("{broken}.up.sql")), "the error names {broken}.up.sql: {error}");
    assert!(error.contains("no_such_table"), "the error carries the database's reason: {error}");
    assert!(!tables(&mut client).contains(&"half_done".to_string()), "the failed file's table was rolled back");
    let older: Vec<i64> = stems.iter().map(|stem| version_of(stem)).collect();
    assert_eq!(recorded_versions(&mut client), older, "the files before it stay applied; it has no row");
    let pending = migrate::pending(&mut client, &sql.source()).unwrap_or_else(|e| panic!("pending: {e}"));
    assert_eq!(pending, vec![broken.clone()], "the failed file is still pending");

    sql.write(&format!("{broken}.up.sql"), "-- Creates a table.\nCREATE TABLE half_done (id int);\n");
    let applied = migrate::up(&mut client, &sql.source()).unwrap_or_else(|e| panic!("up after the fix: {e}"));

    assert_eq!(applied, vec![broken], "once fixed, it applies");
}

#[test]
fn the_embedded_files_are_exactly_the_files_of_sql_with_the_same_text() {
    let mut on_disk: Vec<(String, String)> = fs::read_dir(sql_dir())
        .expect("read sql/")
        .map(|entry| entry.expect("read an sql/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .map(|path| {
            let file_name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (file_name, text)
        })
        .collect();
    on_disk.sort();

    let embedded = Source::Embedded.files().unwrap_or_else(|e| panic!("embedded files: {e}"));

    let names = |files: &[(String, String)]| -> Vec<String> { files.iter().map(|(name, _)| name.clone()).collect() };
    assert_eq!(names(&embedded), names(&on_disk), "the binary holds every sql/*.sql file and no other");
    for ((file_name, embedded_text), (_, disk_text)) in embedded.iter().zip(&on_disk) {
        assert!(embedded_text == disk_text, "{file_name}: the built-in text differs from sql/{file_name}");
    }
}

#[test]
fn a_database_migrated_from_the_embedded_files_verifies_against_sql_on_disk() {
    let mut client = connect(&empty_database());
    let on_disk = Source::Dir(sql_dir());
    let stems = stems(&sql_dir());

    let applied = migrate::up(&mut client, &Source::Embedded).unwrap_or_else(|e| panic!("embedded up: {e}"));
    let status = migrate::status(&mut client, &on_disk).unwrap_or_else(|e| panic!("status from sql/: {e}"));
    let again = migrate::up(&mut client, &on_disk).unwrap_or_else(|e| panic!("up from sql/: {e}"));

    assert_eq!(applied, stems, "the embedded source applies every stem of sql/, in order");
    let want: Vec<(String, bool)> = stems.iter().map(|stem| (stem.clone(), true)).collect();
    assert_eq!(status, want, "sql/ on disk agrees with every recorded checksum");
    assert_eq!(again, Vec::<String>::new(), "nothing is left to apply from sql/");
}

#[test]
fn two_migrators_racing_on_one_empty_database_apply_each_version_exactly_once() {
    let url = empty_database();
    let dir = sql_dir();
    let source = Source::Dir(dir.clone());
    let stems = stems(&dir);
    let barrier = Arc::new(Barrier::new(2));

    let migrators: Vec<_> = (0..2)
        .map(|_| {
            let (url, source, barrier) = (url.clone(), source.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut client = connect(&url);
                barrier.wait();
                migrate::up(&mut client, &source).map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<Result<Vec<String>, String>> =
        migrators.into_iter().map(|migrator| migrator.join().expect("a migrator thread panicked")).collect();

    let mut applied: Vec<String> = Vec::new();
    for (idx, result) in results.into_iter().enumerate() {
        match result {
            Ok(stems) => applied.extend(stems),
            Err(e) => panic!("migrator {idx} failed: {e}"),
        }
    }
    applied.sort();
    assert_eq!(applied, stems, "between them, the migrators applied each version exactly once");
    let mut client = connect(&url);
    let versions: Vec<i64> = stems.iter().map(|stem| version_of(stem)).collect();
    assert_eq!(recorded_versions(&mut client), versions, "one row per version");
}

#[test]
fn server_start_with_pending_migrations_fails_and_says_to_run_make_migrate() {
    let url = empty_database();
    let dir = sql_dir();
    let source = Source::Dir(dir.clone());
    let stems = stems(&dir);
    let newest = stems.last().expect("at least one migration");
    let start = || {
        let vars = [
            ("DATABASE_URL", url.as_str()),
            ("SECRET_KEY", "a-test-secret-key-that-is-long-enough-0123456789"),
            ("MIGRATIONS_DIR", dir.to_str().expect("a UTF-8 path")),
            ("PASSWORD_ITERATIONS", "1000"),
            ("LOG", "off"),
        ];
        let config = messaging::config::Config::from_lookup(|name: &str| {
            vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
        })
        .unwrap_or_else(|problems| panic!("test configuration rejected: {problems:?}"));
        let http = TcpListener::bind("127.0.0.1:0").expect("bind an HTTP port");
        let ws = TcpListener::bind("127.0.0.1:0").expect("bind a WS port");
        match messaging::server::start(config, http, ws) {
            Ok(running) => {
                running.shutdown();
                None
            }
            Err(error) => Some(error),
        }
    };

    let on_empty = start().expect("the server refuses an empty database");
    let mut client = connect(&url);
    migrate::up(&mut client, &source).unwrap_or_else(|e| panic!("up: {e}"));
    migrate::down(&mut client, &source, 1).unwrap_or_else(|e| panic!("down 1: {e}"));
    let on_one_pending = start().expect("the server refuses a database with one migration pending");

    assert!(on_empty.contains("make migrate"), "the error says to run `make migrate`: {on_empty}");
    assert!(on_one_pending.contains("make migrate"), "the error says to run `make migrate`: {on_one_pending}");
    assert!(on_one_pending.contains(newest.as_str()), "the error names the pending {newest}: {on_one_pending}");
}
