//! Secrets: password hashes, bearer tokens and WebSocket tickets.
//!
//! Passwords are kept as `pbkdf2-sha256$iterations$salt$hash` (self-describing,
//! so the iteration count can be raised later) and compared in constant time.
//! Tokens are 32 random bytes; the database keeps only their SHA-256. A ticket
//! is a short-lived HMAC-SHA256-signed pass naming a session, used once.

use std::time::Instant;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::db::Db;
use crate::error::ApiError;
use crate::model::{Session, SessionId};
use crate::session_cache::SessionCache;
use crate::store;

/// Fills a fresh array from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

/// Hashes a password with a fresh 16-byte salt, in the stored format.
pub fn hash_password(password: &str, iterations: u32) -> String {
    let salt: [u8; 16] = random_bytes();
    let hash = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), &salt, iterations);
    format!("pbkdf2-sha256${iterations}${}${}", STANDARD_NO_PAD.encode(salt), STANDARD_NO_PAD.encode(hash))
}

/// Checks a password against a stored hash in constant time. A stored value
/// in an unknown format never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let ["pbkdf2-sha256", iterations, salt, hash] = parts.as_slice() else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(expected)) =
        (iterations.parse::<u32>(), STANDARD_NO_PAD.decode(salt), STANDARD_NO_PAD.decode(hash))
    else {
        return false;
    };
    if iterations == 0 || expected.is_empty() || expected.len() > 64 {
        return false;
    }
    let mut actual = vec![0u8; expected.len()];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut actual);
    actual.ct_eq(&expected).into()
}

/// A new bearer token: what the client gets, and the hash the database keeps.
pub fn new_token() -> (String, [u8; 32]) {
    let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header, if well formed.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    let well_formed = token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (scheme.eq_ignore_ascii_case("bearer") && well_formed).then_some(token)
}

/// The session behind a bearer header, from the cache or else the database;
/// `401 unauthorized` when there is none.
pub fn require(db: &mut Db, cache: &SessionCache, authorization: Option<&str>) -> Result<Session, ApiError> {
    let token = bearer_token(authorization).ok_or(ApiError::Unauthorized)?;
    let hash = token_hash(token);
    if let Some(session) = cache.get(&hash, Instant::now(), OffsetDateTime::now_utc()) {
        return Ok(session);
    }
    let generation = cache.generation();
    let session = store::find_session(&mut db.sql()?, &hash)?.ok_or(ApiError::Unauthorized)?;
    cache.put(hash, session.clone(), generation, Instant::now());
    Ok(session)
}

/// How long a WebSocket ticket stays valid.
pub const TICKET_TTL_SECS: i64 = 60;

/// A signed ticket: `session_id.expires_unix.nonce.mac`, all base64url or
/// decimal, so it travels in a URL as it is.
pub fn sign_ticket(key: &[u8], session_id: SessionId, expires_unix: i64) -> String {
    let nonce = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
    let signed = format!("{session_id}.{expires_unix}.{nonce}");
    let mac = URL_SAFE_NO_PAD.encode(ticket_mac(key, &signed).finalize().into_bytes());
    format!("{signed}.{mac}")
}

/// A ticket whose signature checks out; expiry and single use are the caller's.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    pub session_id: SessionId,
    pub expires_unix: i64,
    pub nonce: String,
}

/// Checks a ticket's signature in constant time and returns what it says.
pub fn verify_ticket(key: &[u8], ticket: &str) -> Option<Ticket> {
    let (signed, mac) = ticket.rsplit_once('.')?;
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    ticket_mac(key, signed).verify_slice(&mac).ok()?;
    let mut parts = signed.split('.');
    let session_id = SessionId(parts.next()?.parse().ok()?);
    let expires_unix = parts.next()?.parse().ok()?;
    let nonce = parts.next()?.to_string();
    parts.next().is_none().then_some(Ticket { session_id, expires_unix, nonce })
}

fn ticket_mac(key: &[u8], signed: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(b"ws-ticket.");
    mac.update(signed.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn pbkdf2_matches_published_sha256_vectors() {
        // RFC 7914 section 11, and the widely reproduced RFC 6070-style vectors for SHA-256.
        let vectors: [(&str, &str, u32, usize, &str); 5] = [
            ("password", "salt", 1, 32, "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"),
            ("password", "salt", 2, 32, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"),
            ("password", "salt", 4096, 32, "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"),
            ("passwd", "salt", 1, 64, "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"),
            ("Password", "NaCl", 80000, 64, "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"),
        ];
        for (password, salt, rounds, len, expected) in vectors {
            let mut out = vec![0u8; len];
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), rounds, &mut out);
            assert_eq!(hex(&out), expected, "{password}/{salt}/{rounds}");
        }
    }

    #[test]
    fn a_stored_hash_verifies_only_its_password() {
        let stored = hash_password("correct horse", 1000);
        assert!(stored.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("correct horsf", &stored));
        assert_ne!(stored, hash_password("correct horse", 1000), "salts differ");
    }

    #[test]
    fn malformed_stored_hashes_never_match() {
        for stored in
            ["", "pbkdf2-sha256$x$AAAA$AAAA", "md5$1$a$b", "pbkdf2-sha256$0$AAAA$AAAA", "pbkdf2-sha256$1$!!$AAAA"]
        {
            assert!(!verify_password("anything", stored), "{stored}");
        }
    }

    #[test]
    fn bearer_header_needs_the_scheme_and_a_well_formed_token() {
        let (token, _) = new_token();
        assert_eq!(bearer_token(Some(&format!("Bearer {token}"))), Some(token.as_str()));
        assert_eq!(bearer_token(Some(&format!("bearer {token}"))), Some(token.as_str()));
        assert_eq!(bearer_token(Some(&format!("Basic {token}"))), None);
        assert_eq!(bearer_token(Some("Bearer short")), None);
        assert_eq!(bearer_token(Some(&token)), None);
        assert_eq!(bearer_token(None), None);
    }

    #[test]
    fn tickets_verify_only_with_their_key_and_untouched() {
        let ticket = sign_ticket(b"key one", SessionId(7), 1_900_000_000);
        let parsed = verify_ticket(b"key one", &ticket).unwrap();
        assert_eq!((parsed.session_id, parsed.expires_unix), (SessionId(7), 1_900_000_000));
        assert_eq!(verify_ticket(b"key two", &ticket), None);
        let forged = ticket.replacen("7.", "8.", 1);
        assert_eq!(verify_ticket(b"key one", &forged), None);
        assert_eq!(verify_ticket(b"key one", "garbage"), None);
    }
}
