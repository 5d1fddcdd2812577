//! Words, as message search sees them (contract section 9): a word is a
//! maximal run of Unicode letters and digits (`char::is_alphanumeric`),
//! lower-cased character by character with Rust's Unicode tables.
//!
//! The server makes the words, not PostgreSQL's text-search parser, because
//! the contract's rule must hold whatever the database's locale: the parser
//! keeps `bob@example.com`, URLs and `1.5` as single tokens, and `lower()` or
//! the `simple` dictionary fold case by the locale (under `C`, `ÄPFEL` stays
//! upper case). So `store.rs` stores `index` as a `tsvector` of verbatim
//! lexemes (`array_to_tsvector`) and searches with `tsquery`'s text, which the
//! `::tsquery` cast reads without a parser or a dictionary. Pure.

use std::collections::HashSet;

/// The longest lexeme PostgreSQL stores, in bytes (`MAXSTRLEN`): longer
/// words are left out of the index, so no search finds them.
pub const MAX_WORD_BYTES: usize = 2047;

/// The words of `text`, lower-cased, in order, repeats included.
///
/// Case goes character by character (`char::to_lowercase`), and a final
/// sigma `ς` becomes `σ`: `str::to_lowercase` would write `ΟΔΟΣ` with a
/// final sigma, and a search for its prefix `οδοσ…` would then miss it.
fn split(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| word.chars().flat_map(char::to_lowercase).map(|c| if c == 'ς' { 'σ' } else { c }).collect())
}

/// The distinct words of a message's content, in order of first use, without
/// those over `MAX_WORD_BYTES`: the lexemes its `words` column holds.
pub fn index(content: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    split(content).filter(|word| word.len() <= MAX_WORD_BYTES && seen.insert(word.clone())).collect()
}

/// The `tsquery` text that finds the messages holding every word of `query`,
/// the last also as a prefix: `'cat' & 'sat':*`. `None` when `query` has no word.
pub fn tsquery(query: &str) -> Option<String> {
    let lexemes: Vec<String> = split(query).map(|word| quote(&word)).collect();
    let (last, others) = lexemes.split_last()?;
    Some(others.iter().map(|lexeme| format!("{lexeme} & ")).chain([format!("{last}:*")]).collect())
}

/// A lexeme in `tsquery` syntax: single-quoted, with `'` and `\` escaped.
/// A word never holds either, but the quoting does not rely on it.
fn quote(lexeme: &str) -> String {
    format!("'{}'", lexeme.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_is_a_run_of_letters_and_digits_and_anything_else_splits() {
        // (text, words, why)
        let cases: [(&str, &[&str], &str); 8] = [
            ("bob@example.com", &["bob", "example", "com"], "an address is three words"),
            ("see https://x.org/a_b?q=1", &["see", "https", "x", "org", "a", "b", "q", "1"], "a URL splits"),
            ("1.5 or 3,000", &["1", "5", "or", "3", "000"], "a number's point splits it"),
            ("don't-stop", &["don", "t", "stop"], "an apostrophe and a hyphen split"),
            ("under_score", &["under", "score"], "an underscore is not a letter"),
            ("  \t\n", &[], "white space only"),
            ("", &[], "nothing"),
            ("日本語のテキスト ١٢٣ Ⅻ", &["日本語のテキスト", "١٢٣", "ⅻ"], "letters and digits of any script"),
        ];
        for (text, words, why) in cases {
            assert_eq!(index(text), words, "{why}: {text:?}");
        }
    }

    #[test]
    fn words_are_lower_cased_in_any_script() {
        // (text, words, why)
        let cases: [(&str, &[&str], &str); 6] = [
            ("ÄPFEL Äpfel äpfel", &["äpfel"], "German umlauts"),
            ("ΚΑΛΗΜΕΡΑ Καλημέρα", &["καλημερα", "καλημέρα"], "Greek; an accent is part of the letter"),
            ("ПРИВЕТ Привет", &["привет"], "Cyrillic"),
            ("ΟΔΟΣ οδος", &["οδοσ"], "a final sigma is a sigma"),
            ("STRASSE Straße", &["strasse", "straße"], "lower case, not case folding: ß is not ss"),
            ("İstanbul", &["i\u{307}stanbul"], "a capital dotted I lowers to i and a combining dot"),
        ];
        for (text, words, why) in cases {
            assert_eq!(index(text), words, "{why}: {text:?}");
        }
    }

    #[test]
    fn the_index_keeps_each_word_once_in_order_of_first_use() {
        assert_eq!(index("the cat, THE hat, the Cat"), ["the", "cat", "hat"]);
    }

    #[test]
    fn the_index_leaves_out_words_over_postgresqls_lexeme_limit() {
        let longest = "a".repeat(MAX_WORD_BYTES);
        let too_long = "b".repeat(MAX_WORD_BYTES + 1);
        let two_byte_over = "é".repeat(MAX_WORD_BYTES / 2 + 1);
        let text = format!("{longest} {too_long} {two_byte_over} short");
        assert_eq!(index(&text), [longest.as_str(), "short"], "the limit is in bytes, after lower-casing");
        // Lower-casing can lengthen a word: İ (2 bytes) becomes i and a combining dot (3 bytes).
        let lengthened = "İ".repeat(MAX_WORD_BYTES / 2);
        assert_eq!(lengthened.len(), MAX_WORD_BYTES - 1);
        assert_eq!(index(&lengthened), Vec::<String>::new(), "measured after lower-casing");
    }

    #[test]
    fn the_query_wants_every_word_and_the_last_as_a_prefix() {
        // (query, tsquery, why)
        let cases = [
            ("hello", Some("'hello':*"), "one word is a prefix"),
            ("Hello World", Some("'hello' & 'world':*"), "lower-cased, the last a prefix"),
            ("bob@example.com", Some("'bob' & 'example' & 'com':*"), "punctuation splits"),
            ("cat cat", Some("'cat' & 'cat':*"), "a repeat is harmless: the whole word implies the prefix"),
            ("  ÄPFEL, ", Some("'äpfel':*"), "trailing punctuation does not make an empty last word"),
            ("?!  ...", None, "no word"),
            ("", None, "nothing"),
        ];
        for (query, tsquery_text, why) in cases {
            assert_eq!(tsquery(query).as_deref(), tsquery_text, "{why}: {query:?}");
        }
    }

    #[test]
    fn a_lexeme_is_quoted_with_quotes_and_backslashes_escaped() {
        assert_eq!(quote("cat"), "'cat'");
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn the_query_matches_the_index_whatever_the_case() {
        for (content, query) in [("Καλημέρα κόσμε", "ΚΑΛΗΜΈΡΑ"), ("Привет, мир", "ПРИВЕТ"), ("ODOS ΟΔΟΣ", "οδος")]
        {
            let lexeme = tsquery(query).unwrap();
            let word = lexeme.trim_start_matches('\'').trim_end_matches(":*").trim_end_matches('\'');
            assert!(index(content).iter().any(|w| w == word), "{query:?} finds {content:?}");
        }
    }
}
