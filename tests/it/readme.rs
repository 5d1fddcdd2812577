//! The README's curl walkthrough, run verbatim against a fresh server, so the
//! first thing a reader tries keeps working and its answer comments stay true.
//!
//! An answer comment is a `# ` line in the block that holds a JSON object or
//! a bare status code; the others are prose. The answers, in order, must
//! match the lines the commands print, in order.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::binary::Running;
use crate::support::{assert_keys, assert_utc_timestamp, spawn_app};

const START: &str = "<!-- walkthrough:start -->";
const END: &str = "<!-- walkthrough:end -->";

/// The ```sh block between the walkthrough markers.
fn walkthrough(readme: &str) -> &str {
    let start = readme.find(START).unwrap_or_else(|| panic!("README.md has no {START}"));
    let end = readme.find(END).unwrap_or_else(|| panic!("README.md has no {END}"));
    assert!(start < end, "{START} comes before {END}");
    let between = &readme[start + START.len()..end];
    let open = between.find("```sh\n").unwrap_or_else(|| panic!("no ```sh block between the markers"));
    let body = &between[open + "```sh\n".len()..];
    let close = body.rfind("```").unwrap_or_else(|| panic!("the ```sh block between the markers is not closed"));
    &body[..close]
}

/// What a command is documented to print.
#[derive(Debug)]
enum Answer {
    Json(Value),
    Line(String),
}

/// The answer comments of `block`, in order.
fn answers(block: &str) -> Vec<Answer> {
    block
        .lines()
        .filter_map(|line| line.trim().strip_prefix("# "))
        .filter_map(|comment| match serde_json::from_str::<Value>(comment) {
            Ok(value @ Value::Object(_)) => Some(Answer::Json(value)),
            _ if comment.len() == 3 && comment.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Answer::Line(comment.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// Asserts that `got` has the keys of `documented`, each with a value of the same JSON type.
fn assert_same_shape(got: &Value, documented: &Value, what: &str) {
    let keys: Vec<&str> = documented.as_object().expect("an answer object").keys().map(String::as_str).collect();
    assert_keys(got, &keys, what);
    for key in keys {
        let kind = |value: &Value| match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        assert_eq!(
            kind(&got[key]),
            kind(&documented[key]),
            "{what}: type of {key} in {got}, documented as {documented}"
        );
    }
}

#[test]
fn the_readme_walkthrough_gives_the_documented_answers() {
    let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(readme_path).unwrap_or_else(|e| panic!("read {readme_path}: {e}"));
    let block = walkthrough(&readme);
    let documented = answers(block);
    let app = spawn_app();
    let mut bash = Command::new("bash");
    bash.args(["-euo", "pipefail", "-c", block]).env("API", format!("http://{}", app.http_addr));
    // The block talks to 127.0.0.1; a proxy set for the machine must not stand in between.
    for proxy in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        bash.env_remove(proxy);
    }

    let output = Running::start(bash, "the README walkthrough".to_string()).finish(Duration::from_secs(60));

    assert!(output.status.success(), "the walkthrough failed:\n{}", output.describe());
    let lines = output.stdout_lines();
    assert_eq!(lines.len(), 4, "two JSON accounts, then 204 and 401:\n{}", output.describe());
    let parse = |line: &str| -> Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON ({e}):\n{}", output.describe()))
    };
    let signup = parse(lines[0]);
    let me = parse(lines[1]);
    assert_keys(&signup, &["id", "username", "email", "created_at"], "the signup answer");
    assert_eq!(signup["username"], "alice", "the signup answer: {signup}");
    assert_eq!(signup["email"], "alice@example.com", "the signup answer: {signup}");
    assert!(signup["id"].is_i64(), "the signup answer has an integer id: {signup}");
    assert_utc_timestamp(&signup["created_at"], "the signup answer's created_at");
    assert_eq!(me, signup, "GET /api/users/me answers the same account");
    assert_eq!(lines[2..], ["204", "401"], "logout answers 204, then the old token gets 401");

    assert_eq!(documented.len(), lines.len(), "one answer comment per printed line: {documented:?}");
    for (idx, (answer, line)) in documented.iter().zip(&lines).enumerate() {
        let what = format!("answer comment {} of the walkthrough", idx + 1);
        match answer {
            Answer::Json(documented) => {
                assert_same_shape(&parse(line), documented, &what);
                if let Some(created_at) = documented.get("created_at") {
                    assert_utc_timestamp(created_at, &what);
                }
            }
            Answer::Line(documented) => assert_eq!(line, documented, "{what}"),
        }
    }
}
