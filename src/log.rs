//! Log lines in logfmt on stderr: `ts=… level=… msg=… key=value …`.
//!
//! No framework: a `Log` is the configured level, `Copy`, handed to every
//! thread that logs. A line is formatted whole and written with one call, so
//! lines of different threads never interleave, and a value is quoted and
//! escaped so that one event is always one line, whatever a client sent.

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;

use time::OffsetDateTime;

/// How much to log, from nothing to everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    /// The levels as `LOG` spells them, in the order of `Level`.
    pub const NAMES: [&'static str; 5] = ["off", "error", "warn", "info", "debug"];

    pub fn parse(name: &str) -> Option<Level> {
        const LEVELS: [Level; 5] = [Level::Off, Level::Error, Level::Warn, Level::Info, Level::Debug];
        Level::NAMES.iter().position(|n| *n == name).map(|idx| LEVELS[idx])
    }

    fn name(self) -> &'static str {
        Level::NAMES[self as usize]
    }
}

/// One `key=value` pair of a line.
pub type Field<'a> = (&'a str, &'a dyn Display);

/// The logger: the most detailed level that is written.
#[derive(Clone, Copy, Debug)]
pub struct Log {
    max: Level,
}

impl Log {
    pub fn new(max: Level) -> Log {
        Log { max }
    }

    pub fn enabled(&self, level: Level) -> bool {
        level != Level::Off && level <= self.max
    }

    pub fn error(&self, msg: &str, fields: &[Field]) {
        self.write(Level::Error, msg, fields);
    }

    pub fn warn(&self, msg: &str, fields: &[Field]) {
        self.write(Level::Warn, msg, fields);
    }

    pub fn info(&self, msg: &str, fields: &[Field]) {
        self.write(Level::Info, msg, fields);
    }

    pub fn debug(&self, msg: &str, fields: &[Field]) {
        self.write(Level::Debug, msg, fields);
    }

    /// Writes one line if `level` is enabled.
    pub fn write(&self, level: Level, msg: &str, fields: &[Field]) {
        if !self.enabled(level) {
            return;
        }
        let mut line = format_line(OffsetDateTime::now_utc(), level, msg, fields);
        line.push('\n');
        // Nothing useful can be done when stderr itself fails.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// A line without its newline.
fn format_line(at: OffsetDateTime, level: Level, msg: &str, fields: &[Field]) -> String {
    let mut line = String::with_capacity(128);
    let ts = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    );
    let _ = write!(line, "ts={ts} level={} msg=", level.name());
    push_value(&mut line, msg);
    let mut value = String::new();
    for (key, shown) in fields {
        value.clear();
        let _ = write!(value, "{shown}");
        let _ = write!(line, " {key}=");
        push_value(&mut line, &value);
    }
    line
}

/// Appends a value, quoted when it is empty or holds a space, `=` or `"`;
/// quotes, backslashes and control characters are escaped.
fn push_value(line: &mut String, value: &str) {
    let plain =
        !value.is_empty() && value.chars().all(|c| !c.is_whitespace() && !c.is_control() && !"=\"\\".contains(c));
    if plain {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// Shows a value that may be absent as `-`.
pub struct OrDash<T>(pub Option<T>);

impl<T: Display> Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap()
    }

    #[test]
    fn a_line_is_ts_level_msg_then_fields() {
        let line = format_line(at(), Level::Warn, "request", &[("status", &503), ("path", &"/readyz")]);
        assert_eq!(line, "ts=2026-11-18T11:06:40.123Z level=warn msg=request status=503 path=/readyz");
    }

    #[test]
    fn values_that_need_it_are_quoted_and_escaped() {
        let line = format_line(at(), Level::Error, "two words", &[("error", &"a \"b\"=c\\d\nnext"), ("empty", &"")]);
        assert!(line.ends_with(r#"msg="two words" error="a \"b\"=c\\d\nnext" empty="""#), "{line}");
        assert!(!line.contains('\n'));
        let line = format_line(at(), Level::Info, "x", &[("odd", &"\u{7}\t")]);
        assert!(line.ends_with(r#"odd="\u{7}\t""#), "{line}");
    }

    #[test]
    fn levels_parse_and_filter() {
        for name in Level::NAMES {
            assert_eq!(Level::parse(name).map(Level::name), Some(name));
        }
        assert_eq!(Level::parse("loud"), None);
        let log = Log::new(Level::Warn);
        assert!(log.enabled(Level::Error) && log.enabled(Level::Warn));
        assert!(!log.enabled(Level::Info) && !log.enabled(Level::Debug) && !log.enabled(Level::Off));
        assert!(!Log::new(Level::Off).enabled(Level::Error));
    }

    #[test]
    fn absent_values_show_as_a_dash() {
        assert_eq!(OrDash(Some(5)).to_string(), "5");
        assert_eq!(OrDash::<i64>(None).to_string(), "-");
    }
}
