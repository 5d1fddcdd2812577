//! The bundled web client at `GET /` (contract section 7): `web/index.html`,
//! one static page built into the binary, so a copied binary serves it too.
//!
//! The page's script and style sit inline (one file, no build step), so the
//! Content-Security-Policy allows exactly those two by their SHA-256, and no
//! other script, style or origin: text injected into the page would not run.
//! WebSockets may go to any `ws:` or `wss:` URL, because the WebSocket
//! listener has a port (and, behind a proxy, an origin) the page cannot name.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::http::Reply;

/// The page, as `web/index.html` held it at build time.
const PAGE: &str = include_str!("../web/index.html");

/// `GET /`: the page, with headers that keep it from being framed, sniffed
/// or told where the user came from.
pub fn get_web_client() -> Result<Reply, ApiError> {
    static POLICY: OnceLock<String> = OnceLock::new();
    let policy = POLICY.get_or_init(|| content_security_policy(PAGE));
    let headers = vec![
        ("Content-Type", "text/html; charset=utf-8".to_string()),
        ("Content-Security-Policy", policy.clone()),
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("Referrer-Policy", "no-referrer".to_string()),
        ("X-Frame-Options", "DENY".to_string()),
        // A new binary may bring a new page: revalidate rather than keep one
        // whose script hash the new policy no longer allows.
        ("Cache-Control", "no-cache".to_string()),
    ];
    Ok(Reply { status: 200, body: PAGE.as_bytes().to_vec(), headers })
}

/// The policy for `page`: its own inline `<script>` and `<style>` elements
/// by hash, requests to its own origin, WebSockets anywhere, nothing else.
fn content_security_policy(page: &str) -> String {
    let (scripts, styles) = (inline_hashes(page, "script"), inline_hashes(page, "style"));
    format!(
        "default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self' ws: wss:; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The CSP sources (`'sha256-…'`) of the contents of each bare `<tag>`
/// element of `page`, space-separated; `'none'` when there is none.
fn inline_hashes(page: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let sources: Vec<String> = page
        .split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close))
        .map(|(contents, _)| format!("'sha256-{}'", STANDARD.encode(Sha256::digest(contents.as_bytes()))))
        .collect();
    if sources.is_empty() {
        return "'none'".to_string();
    }
    sources.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_elements_are_allowed_by_the_hash_of_their_contents() {
        let page = "<p>x</p><script>alert(1)</script><style>p{}</style><script></script>";
        let empty = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='";
        assert_eq!(
            inline_hashes(page, "script"),
            format!("'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI=' {empty}")
        );
        assert_eq!(inline_hashes(page, "style"), "'sha256-gG2yISYereRMiG2lMXrbiUgi0Ubw9p7QCeWcroOvy9Y='");
        assert_eq!(inline_hashes("<p>nothing inline</p>", "script"), "'none'");
    }

    #[test]
    fn the_page_has_one_bare_script_and_one_bare_style() {
        // An element with attributes (`<script src=…>`, `<style media=…>`)
        // would be missed by the hashes above and blocked by the policy.
        for tag in ["script", "style"] {
            let opened = PAGE.matches(&format!("<{tag}")).count();
            assert_eq!(opened, 1, "<{tag} opens once in web/index.html");
            assert_eq!(PAGE.matches(&format!("<{tag}>")).count(), 1, "<{tag}> has no attributes");
            assert_eq!(PAGE.matches(&format!("</{tag}>")).count(), 1, "</{tag}> closes once");
        }
    }

    #[test]
    fn the_policy_allows_only_the_page_itself_and_websockets() {
        let policy = content_security_policy(PAGE);
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"), "{policy}");
        assert!(policy.contains("; style-src 'sha256-"), "{policy}");
        assert!(policy.contains("; connect-src 'self' ws: wss:;"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }
}
