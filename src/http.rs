//! Request bodies in, JSON replies out.
//!
//! A body is read with the size limit enforced while reading, so a huge upload
//! costs at most `MAX_BODY_BYTES` of memory. Inputs are decoded into a `Body`
//! whose typed getters name the field at fault; every string is checked for
//! NUL here, once, because PostgreSQL text cannot hold it. A key given twice
//! in any object is refused: parsers disagree on which copy counts (serde_json
//! keeps the last, others the first), and a proxy that checks one copy while
//! the server uses the other is a smuggling risk.

use std::fmt;
use std::io::Read;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::error::ApiError;

/// A reply before it is written: status, JSON bytes and extra headers.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        let body = serde_json::to_vec(value).expect("our replies serialize: plain data, string keys");
        Reply { status, body, headers: Vec::new() }
    }

    /// A body that is not JSON, with its `Content-Type`.
    pub fn text(status: u16, content_type: &str, body: String) -> Reply {
        Reply { status, body: body.into_bytes(), headers: vec![("Content-Type", content_type.to_string())] }
    }

    pub fn no_content() -> Reply {
        Reply { status: 204, body: Vec::new(), headers: Vec::new() }
    }

    pub fn error(error: &ApiError) -> Reply {
        let mut reply = Reply::json(error.status(), &error.to_json());
        reply.headers = error.headers();
        reply
    }
}

/// Returns the value of the first header called `name`, ignoring case.
pub fn header<'r>(request: &'r tiny_http::Request, name: &str) -> Option<&'r str> {
    request.headers().iter().find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

/// Reads and decodes a JSON object body, enforcing size and media type.
pub fn read_json(request: &mut tiny_http::Request, limit: usize) -> Result<Body, ApiError> {
    let media_type = header(request, "Content-Type").unwrap_or("");
    let essence = media_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut bytes = Vec::new();
    let read = request.as_reader().take(limit as u64 + 1).read_to_end(&mut bytes);
    if read.is_err() {
        return Err(ApiError::malformed("could not read the request body"));
    }
    if bytes.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    parse_body(&bytes)
}

/// Decodes a JSON object: a request body, or a frame of the seed's socket.
pub fn parse_body(bytes: &[u8]) -> Result<Body, ApiError> {
    match parse_object(bytes) {
        Ok(fields) => Ok(Body(fields)),
        Err(Malformed::NotObject) => Err(ApiError::malformed("body must be a JSON object")),
        Err(Malformed::NotJson) => Err(ApiError::malformed("body is not valid JSON")),
        Err(Malformed::DuplicateKey) => Err(ApiError::malformed("body has a key more than once")),
    }
}

/// Decodes a WebSocket frame of the current protocol: a JSON object.
pub fn parse_frame(bytes: &[u8]) -> Result<Body, ApiError> {
    match parse_object(bytes) {
        Ok(fields) => Ok(Body(fields)),
        Err(Malformed::NotObject | Malformed::NotJson) => Err(ApiError::malformed("frame is not a JSON object")),
        Err(Malformed::DuplicateKey) => Err(ApiError::malformed("frame has a key more than once")),
    }
}

/// Why bytes are not a JSON object this server accepts.
#[derive(Debug, PartialEq)]
enum Malformed {
    NotJson,
    NotObject,
    DuplicateKey,
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Malformed> {
    match serde_json::from_slice::<UniqueKeys>(bytes) {
        Ok(UniqueKeys(Value::Object(fields))) => Ok(fields),
        Ok(_) => Err(Malformed::NotObject),
        // Every value is accepted, so the only data error is the duplicate key.
        Err(error) if error.classify() == serde_json::error::Category::Data => Err(Malformed::DuplicateKey),
        Err(_) => Err(Malformed::NotJson),
    }
}

/// A JSON value whose objects, at every depth, have each key once (compared
/// after unescaping, so `"a"` and `"\u0061"` are one key).
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<UniqueKeys, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value, E> {
        Ok(Value::String(text.to_string()))
    }

    fn visit_string<E>(self, text: String) -> Result<Value, E> {
        Ok(Value::String(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if fields.insert(key, value).is_some() {
                return Err(de::Error::custom("a key appears more than once"));
            }
        }
        Ok(Value::Object(fields))
    }
}

/// A decoded JSON object with getters that name the field at fault.
pub struct Body(Map<String, Value>);

impl Body {
    /// Every field, as parsed.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// A required string.
    pub fn str(&self, field: &'static str) -> Result<&str, ApiError> {
        self.opt_str(field)?.ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))
    }

    /// An optional string; `null` counts as absent.
    pub fn opt_str(&self, field: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.contains('\0') => {
                Err(ApiError::invalid(field, format!("{field} must not contain a NUL character")))
            }
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid(field, format!("{field} must be a string"))),
        }
    }

    /// A required whole number.
    pub fn i64(&self, field: &'static str) -> Result<i64, ApiError> {
        self.opt_i64(field)?.ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))
    }

    /// An optional whole number; `null` counts as absent.
    pub fn opt_i64(&self, field: &'static str) -> Result<Option<i64>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                n.as_i64().map(Some).ok_or_else(|| ApiError::invalid(field, format!("{field} must be a whole number")))
            }
            Some(_) => Err(ApiError::invalid(field, format!("{field} must be a whole number"))),
        }
    }

    /// A required boolean.
    pub fn bool(&self, field: &'static str) -> Result<bool, ApiError> {
        self.opt_bool(field)?.ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))
    }

    /// An optional boolean; `null` counts as absent.
    pub fn opt_bool(&self, field: &'static str) -> Result<Option<bool>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(field, format!("{field} must be true or false"))),
        }
    }

    /// An optional array; `null` counts as absent.
    pub fn opt_array(&self, field: &'static str) -> Result<Option<&Vec<Value>>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(ApiError::invalid(field, format!("{field} must be an array"))),
        }
    }
}

/// The query string of a URL, decoded into name and value pairs.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(url: &str) -> Query {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        Query(pairs)
    }

    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// An optional text parameter; a NUL in it is a 400 naming it, as in a body.
    pub fn text(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            Some(text) if text.contains('\0') => {
                Err(ApiError::invalid(name, format!("{name} must not contain a NUL character")))
            }
            other => Ok(other),
        }
    }

    /// An optional whole number within `min..=max`; anything else is a 400 naming it.
    pub fn int(&self, name: &'static str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(name, format!("{name} must be a whole number from {min} to {max}"))),
            },
        }
    }
}

/// Decodes `%XX` escapes and `+`; invalid UTF-8 becomes U+FFFD.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let hex = bytes.get(idx + 1..idx + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        let hex = hex.and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[idx], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                idx += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                idx += 1;
            }
            (byte, _) => {
                out.push(byte);
                idx += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let query = Query::parse("/api/users?q=al%20ice&limit=5&x");
        assert_eq!(query.get("q"), Some("al ice"));
        assert_eq!(query.get("limit"), Some("5"));
        assert_eq!(query.get("x"), Some(""));
        assert_eq!(query.get("y"), None);
        assert_eq!(Query::parse("/a?q=%zz%4").get("q"), Some("%zz%4"));
        assert_eq!(
            Query::parse("/a?q=%+1%-1").get("q"),
            Some("% 1%-1"),
            "% starts two hex digits or stands for itself"
        );
    }

    #[test]
    fn query_int_enforces_bounds_and_names_the_parameter() {
        let query = Query::parse("/x?limit=0&before=abc&after=7");
        assert!(matches!(query.int("limit", 1, 200), Err(ApiError::InvalidRequest { field: Some("limit"), .. })));
        assert!(matches!(
            query.int("before", 0, i64::MAX),
            Err(ApiError::InvalidRequest { field: Some("before"), .. })
        ));
        assert_eq!(query.int("after", 0, i64::MAX).unwrap(), Some(7));
        assert_eq!(query.int("missing", 0, 1).unwrap(), None);
    }

    #[test]
    fn a_key_given_twice_at_any_depth_is_refused() {
        // (JSON, why)
        let cases = [
            (r#"{"a": 1, "a": 2}"#, "at the top"),
            (r#"{"a": 1, "\u0061": 2}"#, "the same key escaped"),
            (r#"{"x": {"b": true, "b": false}}"#, "in a nested object"),
            (r#"{"x": [1, {"c": null, "c": null}]}"#, "in an object in an array"),
            (r#"{"content": "hi", "type": "send", "content": "smuggled"}"#, "apart"),
        ];
        for (json, why) in cases {
            assert_eq!(parse_object(json.as_bytes()), Err(Malformed::DuplicateKey), "{why}: {json}");
        }
        let refused = parse_body(br#"{"a": 1, "a": 1}"#).err().unwrap();
        assert!(matches!(refused, ApiError::InvalidRequest { field: None, .. }), "{refused:?}");
        let frame = parse_frame(br#"{"type": "ping", "type": "send"}"#).err().unwrap();
        assert_eq!(frame.message(), "frame has a key more than once");
    }

    #[test]
    fn distinct_keys_parse_as_serde_json_would() {
        let json = r#"{"a": 1, "A": -2, "b": [1.5, "x", null, true, {"a": 18446744073709551615}], "c": {"a": "é\n"}}"#;
        let fields = parse_object(json.as_bytes()).unwrap();
        assert_eq!(Value::Object(fields), serde_json::from_str::<Value>(json).unwrap());
        assert_eq!(parse_object(b"[1, 2]"), Err(Malformed::NotObject));
        assert_eq!(parse_object(b"{\"a\": 1,}"), Err(Malformed::NotJson));
        assert_eq!(parse_object(b"{\"a\": 1} x"), Err(Malformed::NotJson));
        assert_eq!(parse_object(b"\xff"), Err(Malformed::NotJson));
        assert_eq!(parse_frame(b"[]").err().unwrap().message(), "frame is not a JSON object");
    }

    #[test]
    fn body_getters_name_the_field() {
        let body = Body(serde_json::from_str(r#"{"a": 5, "b": "x\u0000", "c": null}"#).unwrap());
        assert!(matches!(body.str("a"), Err(ApiError::InvalidRequest { field: Some("a"), .. })));
        assert!(matches!(body.str("b"), Err(ApiError::InvalidRequest { field: Some("b"), .. })));
        assert!(matches!(body.str("c"), Err(ApiError::InvalidRequest { field: Some("c"), .. })));
        assert_eq!(body.i64("a").unwrap(), 5);
        assert!(body.opt_str("c").unwrap().is_none());
    }
}
