//! Embeds the migrations in the binary, so `messaging migrate up` needs no
//! `sql/` directory beside it: writes `$OUT_DIR/migrations.rs`, a slice of
//! `(file name, include_str!(absolute path))` for every `sql/*.sql` file,
//! sorted by name, which `src/migrate.rs` includes. Naming rules are checked
//! there, at run time, by the same code that checks `MIGRATIONS_DIR`.

use std::env;
use std::fmt::Write;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=sql");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let sql_dir = manifest_dir.join("sql");
    let entries = fs::read_dir(&sql_dir).unwrap_or_else(|e| panic!("read {}: {e}", sql_dir.display()));
    let mut file_names: Vec<String> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("read {}: {e}", sql_dir.display())).file_name())
        .filter_map(|name| name.to_str().map(String::from))
        .filter(|name| name.ends_with(".sql"))
        .collect();
    file_names.sort();

    let mut code = String::from("&[\n");
    for file_name in &file_names {
        let path = sql_dir.join(file_name);
        let path = path.to_str().unwrap_or_else(|| panic!("{} is not a UTF-8 path", path.display()));
        println!("cargo:rerun-if-changed={path}");
        // Debug formatting of a str is a valid Rust string literal.
        writeln!(code, "    ({file_name:?}, include_str!({path:?})),").expect("write to a String");
    }
    code.push_str("]\n");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out_path = out_dir.join("migrations.rs");
    fs::write(&out_path, code).unwrap_or_else(|e| panic!("write {}: {e}", out_path.display()));
}
