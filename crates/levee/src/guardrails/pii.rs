//! The detectors of personal and secret data: a pattern that finds candidates, and a check
//! that keeps only real ones (a card number must pass Luhn, an IBAN its mod-97 check
//! digits, an IP address must parse), trimmed to the longest valid prefix when the pattern
//! took too much.
//!
//! Every pattern is bounded (no unbounded repetition), and each detector knows the bytes
//! its matches can hold: a streamed answer holds back, per detector, only the trailing run
//! of such bytes (never more than the longest match), because a match still being written
//! can only be such a run.

use std::sync::LazyLock;

use regex::Regex;

use crate::config::guardrails::PiiKind;

/// One kind's detector.
pub struct Detector {
    pub kind: PiiKind,
    /// What replaces a match when redacting.
    pub mask: &'static str,
    pattern: Option<Regex>,
    /// Keeps a candidate `text[start..end]`: the end of the real match (at most `end`), or
    /// `None`.
    check: fn(&str, usize, usize) -> Option<usize>,
    /// Whether a byte can be part of a match.
    pub in_match: fn(u8) -> bool,
    /// The most bytes a match spans.
    pub max_len: usize,
}

impl Detector {
    /// The matches in `text[from..]` (the text before `from` is context only), as spans.
    pub fn find(&self, text: &str, from: usize, spans: &mut Vec<(usize, usize)>) {
        let Some(pattern) = &self.pattern else {
            return;
        };
        let mut at = from;
        while let Some(m) = pattern.find_at(text, at) {
            match (self.check)(text, m.start(), m.end()) {
                Some(end) if end > m.start() => {
                    spans.push((m.start(), end));
                    at = end;
                }
                _ => at = next_char(text, m.start()),
            }
            if at >= text.len() {
                break;
            }
        }
    }
}

/// The detector of `kind` (`All` has none: it is expanded at load).
pub fn detector(kind: PiiKind) -> Option<&'static Detector> {
    DETECTORS.iter().find(|d| d.kind == kind)
}

fn next_char(text: &str, at: usize) -> usize {
    text.get(at..)
        .and_then(|rest| rest.chars().next())
        .map_or(text.len(), |c| at + c.len_utf8())
}

/// The byte before `at`, if any.
fn before(text: &str, at: usize) -> Option<u8> {
    at.checked_sub(1).and_then(|i| text.as_bytes().get(i).copied())
}

fn after(text: &str, at: usize) -> Option<u8> {
    text.as_bytes().get(at).copied()
}

/// The patterns are constants, all built in a test below; one that did not build would
/// find nothing rather than take the process down.
fn built(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    vec![
        Detector {
            kind: PiiKind::Email,
            mask: "[EMAIL]",
            pattern: built(
                r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,4}\.[A-Za-z]{2,24}",
            ),
            check: email,
            in_match: |b| b.is_ascii_alphanumeric() || b".@_%+-".contains(&b),
            max_len: 64 + 1 + 63 + 4 * 64 + 25,
        },
        Detector {
            kind: PiiKind::Phone,
            mask: "[PHONE]",
            pattern: built(
                r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}|\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}",
            ),
            check: phone,
            in_match: |b| b.is_ascii_digit() || b" +().-".contains(&b),
            max_len: 32,
        },
        Detector {
            kind: PiiKind::Card,
            mask: "[CARD]",
            pattern: built(r"\d(?:[ -]?\d){12,18}"),
            check: card,
            in_match: |b| b.is_ascii_digit() || b == b' ' || b == b'-',
            max_len: 19 * 2,
        },
        Detector {
            kind: PiiKind::Iban,
            mask: "[IBAN]",
            pattern: built(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}"),
            check: iban,
            in_match: |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ',
            max_len: 4 + 30 * 2,
        },
        Detector {
            kind: PiiKind::Ssn,
            mask: "[SSN]",
            pattern: built(r"\d{3}-\d{2}-\d{4}"),
            check: ssn,
            in_match: |b| b.is_ascii_digit() || b == b'-',
            max_len: 11,
        },
        Detector {
            kind: PiiKind::Ip,
            mask: "[IP]",
            pattern: built(r"(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"),
            check: ip,
            in_match: |b| b.is_ascii_hexdigit() || b == b'.' || b == b':',
            max_len: 39,
        },
        Detector {
            kind: PiiKind::Secret,
            mask: "[SECRET]",
            pattern: built(concat!(
                r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,200}",
                r"|(?:AKIA|ASIA)[0-9A-Z]{16}",
                r"|gh[pousr]_[A-Za-z0-9]{36,76}",
                r"|xox[baprs]-[A-Za-z0-9-]{10,100}",
                r"|AIza[0-9A-Za-z_-]{35}",
                r"|[sr]k_live_[0-9A-Za-z]{24,99}"
            )),
            check: secret,
            in_match: |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
            max_len: 211,
        },
    ]
});

fn email(text: &str, start: usize, end: usize) -> Option<usize> {
    // The local part starts at a word's start (the pattern would otherwise start mid-run).
    match before(text, start) {
        Some(b) if b.is_ascii_alphanumeric() || b"._%+-".contains(&b) => None,
        _ => Some(end),
    }
}

fn digit_bounded(text: &str, start: usize, end: usize) -> bool {
    !before(text, start).is_some_and(|b| b.is_ascii_digit())
        && !after(text, end).is_some_and(|b| b.is_ascii_digit())
}

fn phone(text: &str, start: usize, end: usize) -> Option<usize> {
    let digits = text.get(start..end)?.bytes().filter(u8::is_ascii_digit).count();
    let plus_before = before(text, start) == Some(b'+');
    ((10..=15).contains(&digits) && digit_bounded(text, start, end) && !plus_before).then_some(end)
}

/// The longest prefix of `text[start..end]` whose digits pass `valid`, with `min..=max`
/// digits, ending on a digit that no digit follows.
fn longest_digits(
    text: &str,
    start: usize,
    end: usize,
    min: usize,
    max: usize,
    valid: fn(&[u8]) -> bool,
) -> Option<usize> {
    if before(text, start).is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    let span = text.get(start..end)?.as_bytes();
    let mut digits = Vec::with_capacity(max);
    let mut ends = Vec::with_capacity(max);
    for (i, b) in span.iter().enumerate() {
        if b.is_ascii_digit() {
            digits.push(b - b'0');
            ends.push(start + i + 1);
        }
    }
    (min..=max.min(digits.len())).rev().find_map(|n| {
        let end = *ends.get(n - 1)?;
        let (prefix, next) = (digits.get(..n)?, after(text, end));
        (!next.is_some_and(|b| b.is_ascii_digit()) && valid(prefix)).then_some(end)
    })
}

fn card(text: &str, start: usize, end: usize) -> Option<usize> {
    longest_digits(text, start, end, 13, 19, luhn)
}

/// The Luhn check of payment card numbers.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            match i % 2 {
                1 if d * 2 > 9 => d * 2 - 9,
                1 => d * 2,
                _ => d,
            }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

fn iban(text: &str, start: usize, end: usize) -> Option<usize> {
    if before(text, start).is_some_and(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let span = text.get(start..end)?.as_bytes();
    let mut chars = Vec::with_capacity(34);
    let mut ends = Vec::with_capacity(34);
    for (i, b) in span.iter().enumerate() {
        if b.is_ascii_alphanumeric() {
            chars.push(*b);
            ends.push(start + i + 1);
        }
    }
    // The longest prefix of 15 to 34 characters with right check digits, ending where a
    // word ends.
    (15..=chars.len().min(34)).rev().find_map(|n| {
        let end = *ends.get(n - 1)?;
        let ends_word = !after(text, end).is_some_and(|b| b.is_ascii_alphanumeric());
        (ends_word && iban_valid(chars.get(..n)?)).then_some(end)
    })
}

/// ISO 13616: the first four characters moved to the end, letters as 10..35, mod 97 is 1.
pub fn iban_valid(chars: &[u8]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    let (head, tail) = chars.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.iter().chain(head) {
        let value = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn ssn(text: &str, start: usize, end: usize) -> Option<usize> {
    let s = text.get(start..end)?;
    let (area, group, serial) = (s.get(0..3)?, s.get(4..6)?, s.get(7..11)?);
    let valid = area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000";
    (valid && digit_bounded(text, start, end) && after(text, end) != Some(b'-')).then_some(end)
}

fn ip(text: &str, start: usize, end: usize) -> Option<usize> {
    let candidate = text.get(start..end)?;
    let bounded = |extra: &[u8]| {
        let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
        !edge(before(text, start)) && !edge(after(text, end))
    };
    if candidate.contains('.') {
        let ok = candidate.parse::<std::net::Ipv4Addr>().is_ok() && bounded(b".");
        return ok.then_some(end);
    }
    // Not a dotted tail either: `::ffff:192.0.2.1` is one address, not `::ffff:192` and more.
    let ok = candidate.parse::<std::net::Ipv6Addr>().is_ok() && bounded(b":.");
    ok.then_some(end)
}

fn secret(text: &str, start: usize, end: usize) -> Option<usize> {
    match before(text, start) {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => None,
        _ => Some(end),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn found(kind: PiiKind, text: &str) -> Vec<&str> {
        let mut spans = Vec::new();
        detector(kind).unwrap().find(text, 0, &mut spans);
        spans.iter().map(|(s, e)| &text[*s..*e]).collect()
    }

    #[test]
    fn each_kind_finds_real_ones_and_passes_look_alikes() {
        assert_eq!(
            found(PiiKind::Email, "write to jane.doe+x@mail.example.co.uk now"),
            ["jane.doe+x@mail.example.co.uk"]
        );
        assert!(found(PiiKind::Email, "not@an email").is_empty());
        assert_eq!(
            found(PiiKind::Card, "card 4111 1111 1111 1111, exp 12/29"),
            ["4111 1111 1111 1111"]
        );
        assert!(
            found(PiiKind::Card, "order 4111 1111 1111 1112").is_empty(),
            "fails Luhn"
        );
        assert_eq!(
            found(PiiKind::Card, "5500-0000-0000-0004 2"),
            ["5500-0000-0000-0004"]
        );
        assert_eq!(
            found(PiiKind::Iban, "IBAN DE89 3704 0044 0532 0130 00 THANKS"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            found(PiiKind::Iban, "GB82WEST12345698765432."),
            ["GB82WEST12345698765432"]
        );
        assert!(
            found(PiiKind::Iban, "DE89 3704 0044 0532 0130 01").is_empty(),
            "bad check digits"
        );
        assert_eq!(found(PiiKind::Ssn, "ssn 123-45-6789."), ["123-45-6789"]);
        assert!(found(PiiKind::Ssn, "000-12-3456 666-12-3456 123-00-4567").is_empty());
        assert_eq!(
            found(PiiKind::Ip, "from 192.168.1.20, and 2001:db8::8a2e:370:7334 too"),
            ["192.168.1.20", "2001:db8::8a2e:370:7334"]
        );
        assert!(found(PiiKind::Ip, "version 1.2.3.456 at 12:30:45").is_empty());
        assert_eq!(
            found(PiiKind::Phone, "call +1 415 555 0100 or (415) 555-0199."),
            ["+1 415 555 0100", "(415) 555-0199"]
        );
        assert!(found(PiiKind::Phone, "in 2024 we had 12 people").is_empty());
        let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
        assert_eq!(
            found(PiiKind::Secret, &format!("key={key} and AKIAIOSFODNN7EXAMPLE")),
            [key, "AKIAIOSFODNN7EXAMPLE"]
        );
        assert!(found(PiiKind::Secret, "task-abcdefghijklmnopqrstuvwxyz").is_empty());
    }

    #[test]
    fn every_pattern_builds() {
        assert!(DETECTORS.iter().all(|d| d.pattern.is_some()));
        assert_eq!(DETECTORS.len(), PiiKind::EVERY.len());
    }

    #[test]
    fn luhn_and_iban_checks() {
        assert!(luhn(&[4, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4, 2]));
        assert!(!luhn(&[1, 2, 3, 4]));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(!iban_valid(b"GB82WEST12345698765433"));
    }
}
