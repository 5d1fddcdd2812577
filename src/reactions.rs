//! The rules of reactions (contract section 9), as pure functions: what an
//! emoji in a URL may be, and how adding or removing one changes a message's
//! list.
//!
//! A message's reactions are kept with the message, as the list the API
//! shows (`model::Reaction`), and changed only under the message's row lock,
//! so a read never needs a join or a query per message and two changes never
//! interleave. These functions are the only code that changes such a list.

use std::fmt;

use crate::model::{Reaction, UserId};

/// At most this many distinct emoji on one message.
pub const MAX_DISTINCT: usize = 20;

/// The longest emoji, in bytes of UTF-8.
pub const MAX_EMOJI_BYTES: usize = 32;

/// What the `400` for a bad emoji says.
pub const EMOJI_RULE: &str =
    "emoji must be 1 to 32 bytes of percent-encoded UTF-8, without white space or control characters";

/// A checked emoji: 1 to 32 bytes of UTF-8, no white space, no control
/// characters. Held inline, so a route that names one stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Emoji {
    len: u8,
    bytes: [u8; MAX_EMOJI_BYTES],
}

/// A URL segment that is not an emoji by the rules above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadEmoji;

impl Emoji {
    /// Decodes a percent-encoded path segment and checks it. `%` must start
    /// two hex digits; everything else stands for itself (`+` too: this is a
    /// path, not a query string).
    pub fn decode(segment: &str) -> Result<Emoji, BadEmoji> {
        let mut bytes = [0u8; MAX_EMOJI_BYTES];
        let mut len = 0;
        let mut rest = segment.as_bytes();
        while let Some((&first, tail)) = rest.split_first() {
            let (byte, after) = match first {
                b'%' => {
                    let hex = tail.get(..2).filter(|h| h.iter().all(u8::is_ascii_hexdigit)).ok_or(BadEmoji)?;
                    let hex = std::str::from_utf8(hex).map_err(|_| BadEmoji)?;
                    let byte = u8::from_str_radix(hex, 16).map_err(|_| BadEmoji)?;
                    (byte, &tail[2..])
                }
                _ => (first, tail),
            };
            *bytes.get_mut(len).ok_or(BadEmoji)? = byte;
            len += 1;
            rest = after;
        }
        let text = std::str::from_utf8(&bytes[..len]).map_err(|_| BadEmoji)?;
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BadEmoji);
        }
        Ok(Emoji { len: len as u8, bytes })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("checked by decode")
    }
}

impl fmt::Debug for Emoji {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Emoji({:?})", self.as_str())
    }
}

/// A 21st distinct emoji on a message.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany;

/// Adds the user's reaction; `Ok(false)` when it was already there (nothing
/// changes). A new emoji goes last, as its first use; a user goes last
/// among those who reacted with it.
pub fn add(reactions: &mut Vec<Reaction>, emoji: &str, user_id: UserId) -> Result<bool, TooMany> {
    let distinct = reactions.len();
    match reactions.iter_mut().find(|reaction| reaction.emoji == emoji) {
        Some(reaction) if reaction.user_ids.contains(&user_id) => Ok(false),
        Some(reaction) => {
            reaction.user_ids.push(user_id);
            Ok(true)
        }
        None if distinct >= MAX_DISTINCT => Err(TooMany),
        None => {
            reactions.push(Reaction { emoji: emoji.to_string(), user_ids: vec![user_id] });
            Ok(true)
        }
    }
}

/// Removes the user's reaction; `false` when there was none. An emoji nobody
/// reacts with any more leaves the list, so adding it again counts as a new
/// first use.
pub fn remove(reactions: &mut Vec<Reaction>, emoji: &str, user_id: UserId) -> bool {
    let Some(idx) = reactions.iter().position(|reaction| reaction.emoji == emoji) else { return false };
    let users = &mut reactions[idx].user_ids;
    let Some(position) = users.iter().position(|user| *user == user_id) else { return false };
    users.remove(position);
    if users.is_empty() {
        reactions.remove(idx);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANN: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    fn shape(reactions: &[Reaction]) -> Vec<(&str, Vec<i64>)> {
        reactions.iter().map(|r| (r.emoji.as_str(), r.user_ids.iter().map(|u| u.0).collect())).collect()
    }

    #[test]
    fn an_emoji_is_percent_decoded_utf8() {
        assert_eq!(Emoji::decode("%F0%9F%91%8D").unwrap().as_str(), "👍");
        assert_eq!(Emoji::decode("%f0%9f%91%8d").unwrap().as_str(), "👍", "hex digits in either case");
        assert_eq!(Emoji::decode("👍").unwrap().as_str(), "👍", "unencoded UTF-8 stands for itself");
        assert_eq!(Emoji::decode("+1").unwrap().as_str(), "+1", "a plus is a plus in a path");
        assert_eq!(Emoji::decode(":tada:").unwrap().as_str(), ":tada:");
    }

    #[test]
    fn an_emoji_is_one_to_thirty_two_bytes() {
        assert_eq!(Emoji::decode(""), Err(BadEmoji));
        assert_eq!(Emoji::decode(&"%F0%9F%91%8D".repeat(8)).unwrap().as_str().len(), 32);
        assert_eq!(Emoji::decode(&format!("{}x", "%F0%9F%91%8D".repeat(8))), Err(BadEmoji));
        assert_eq!(Emoji::decode(&"a".repeat(32)).unwrap().as_str().len(), 32);
        assert_eq!(Emoji::decode(&"a".repeat(33)), Err(BadEmoji));
        assert_eq!(Emoji::decode(&"%41".repeat(10_000)), Err(BadEmoji), "a long segment stops at the limit");
    }

    #[test]
    fn an_emoji_has_no_white_space_or_control_characters() {
        for bad in ["%20", "a%20b", "%09", "%0A", "%E2%80%83", "%C2%A0", "%07", "%7F", "%C2%85", "%00"] {
            assert_eq!(Emoji::decode(bad), Err(BadEmoji), "{bad}");
        }
        assert!(Emoji::decode("%E2%9D%A4%EF%B8%8F").is_ok(), "a variation selector is neither");
        assert!(Emoji::decode("%F0%9F%91%A8%E2%80%8D%F0%9F%91%A9").is_ok(), "nor is a zero-width joiner");
    }

    #[test]
    fn a_malformed_escape_or_utf8_is_no_emoji() {
        for bad in ["%", "%F", "%ZZ", "%+1", "%-1", "% 1", "%F0%9F%91", "%FF", "%C0%AF", "%ED%A0%80"] {
            assert_eq!(Emoji::decode(bad), Err(BadEmoji), "{bad}");
        }
    }

    #[test]
    fn adding_keeps_first_use_order_and_reaction_order() {
        let mut reactions = Vec::new();
        assert_eq!(add(&mut reactions, "👍", BOB), Ok(true));
        assert_eq!(add(&mut reactions, "🎉", ANN), Ok(true));
        assert_eq!(add(&mut reactions, "👍", ANN), Ok(true));
        assert_eq!(shape(&reactions), [("👍", vec![2, 1]), ("🎉", vec![1])]);
    }

    #[test]
    fn adding_again_changes_nothing() {
        let mut reactions = Vec::new();
        add(&mut reactions, "👍", ANN).unwrap();
        assert_eq!(add(&mut reactions, "👍", ANN), Ok(false));
        assert_eq!(shape(&reactions), [("👍", vec![1])]);
    }

    #[test]
    fn a_twenty_first_distinct_emoji_is_refused_but_the_twenty_take_more_users() {
        let mut reactions = Vec::new();
        for n in 0..MAX_DISTINCT {
            assert_eq!(add(&mut reactions, &format!("e{n}"), ANN), Ok(true));
        }
        let before = reactions.clone();
        assert_eq!(add(&mut reactions, "e20", ANN), Err(TooMany));
        assert_eq!(reactions, before, "a refused emoji changes nothing");
        assert_eq!(add(&mut reactions, "e0", BOB), Ok(true));
        assert_eq!(add(&mut reactions, "e19", ANN), Ok(false), "an existing reaction is no 21st");
    }

    #[test]
    fn removing_takes_out_one_user_and_an_emoji_nobody_uses() {
        let mut reactions = Vec::new();
        add(&mut reactions, "👍", ANN).unwrap();
        add(&mut reactions, "🎉", ANN).unwrap();
        add(&mut reactions, "👍", BOB).unwrap();
        assert!(remove(&mut reactions, "👍", ANN));
        assert_eq!(shape(&reactions), [("👍", vec![2]), ("🎉", vec![1])]);
        assert!(remove(&mut reactions, "👍", BOB));
        assert_eq!(shape(&reactions), [("🎉", vec![1])]);
        add(&mut reactions, "👍", BOB).unwrap();
        assert_eq!(shape(&reactions), [("🎉", vec![1]), ("👍", vec![2])], "a new first use goes last");
    }

    #[test]
    fn removing_what_is_not_there_changes_nothing() {
        let mut reactions = Vec::new();
        assert!(!remove(&mut reactions, "👍", ANN));
        add(&mut reactions, "👍", BOB).unwrap();
        assert!(!remove(&mut reactions, "👍", ANN));
        assert!(!remove(&mut reactions, "🎉", BOB));
        assert_eq!(shape(&reactions), [("👍", vec![2])]);
    }
}
