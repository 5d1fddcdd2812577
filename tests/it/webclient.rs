//! The web client at `GET /` (contract section 7): the page as `web/index.html`
//! holds it, with headers that let only its own inline script and style run,
//! and nothing in it that would load from another origin.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::support::{check_error, spawn_app};

const PAGE: &str = include_str!("../../web/index.html");

/// The contents of the page's one `<tag>` element.
fn inline(page: &str, tag: &str) -> String {
    let after = page.split_once(&format!("<{tag}>")).map(|(_, rest)| rest);
    let contents = after.and_then(|rest| rest.split_once(&format!("</{tag}>"))).map(|(contents, _)| contents);
    contents.unwrap_or_else(|| panic!("the page has no <{tag}> element")).to_string()
}

fn csp_hash(contents: &str) -> String {
    format!("'sha256-{}'", STANDARD.encode(Sha256::digest(contents.as_bytes())))
}

#[test]
fn the_web_client_is_served_at_the_root_without_a_token_and_with_its_security_headers() {
    let app = spawn_app();

    let resp = app.get("/", None);

    resp.assert_status(200, "GET /");
    assert_eq!(resp.text(), PAGE, "GET / is web/index.html as built");
    assert_eq!(resp.header("Content-Type"), Some("text/html; charset=utf-8"), "{resp:?}");
    assert_eq!(resp.header("X-Content-Type-Options"), Some("nosniff"), "{resp:?}");
    assert_eq!(resp.header("Referrer-Policy"), Some("no-referrer"), "{resp:?}");
    let policy = resp.header("Content-Security-Policy").unwrap_or_else(|| panic!("no CSP:\n{resp:?}"));
    let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
    for expected in [
        "default-src 'none'".to_string(),
        format!("script-src {}", csp_hash(&inline(PAGE, "script"))),
        format!("style-src {}", csp_hash(&inline(PAGE, "style"))),
        "connect-src 'self' ws: wss:".to_string(),
        "frame-ancestors 'none'".to_string(),
        "base-uri 'none'".to_string(),
        "form-action 'none'".to_string(),
    ] {
        assert!(directives.contains(&expected.as_str()), "the CSP lacks `{expected}`:\n{policy}");
    }
    assert!(!policy.contains("unsafe-"), "{policy}");
    assert!(resp.header("X-Request-Id").is_some(), "{resp:?}");
}

#[test]
fn the_page_loads_nothing_from_anywhere_else() {
    let app = spawn_app();

    let page = app.get("/", None).assert_status(200, "GET /").text();

    let lower = page.to_ascii_lowercase();
    for needle in ["http://", "https://", " src=", " href=", "//cdn", "integrity="] {
        assert!(!lower.contains(needle), "the page holds `{needle}`: everything it needs must be inline");
    }
    let style = inline(&lower, "style");
    for needle in ["url(", "@import", "@font-face"] {
        assert!(!style.contains(needle), "the style holds `{needle}`: everything it needs must be inline");
    }
    // Every request the script makes is to a path of this origin.
    for call in page.match_indices("fetch(").map(|(idx, _)| &page[idx..]) {
        let argument = call["fetch(".len()..].trim_start();
        assert!(argument.starts_with("path") || argument.starts_with("\"/"), "fetch to elsewhere: {}", &call[..40]);
    }
}

#[test]
fn the_root_takes_only_get_and_other_pages_are_not_found() {
    let app = spawn_app();

    let post = app.post("/", None, serde_json::json!({}));
    check_error(&post, 405, "method_not_allowed", None);
    assert_eq!(post.header("Allow"), Some("GET"), "{post:?}");
    check_error(&app.get("/index.html", None), 404, "not_found", None);
    check_error(&app.get("/web/index.html", None), 404, "not_found", None);
}
