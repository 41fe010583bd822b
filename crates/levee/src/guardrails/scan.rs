//! Finding and redacting what a `pii` or `deny` guardrail looks for, in a whole text or in
//! a text that arrives in pieces (a streamed answer).
//!
//! In pieces, the result must be exactly the whole text's, however the text is cut. A piece
//! is scanned together with what was held back before it; everything up to a boundary is
//! final and goes out, the rest is held. The boundary leaves out only what a match still
//! being written could be: for each detector, the trailing run of bytes its matches are
//! made of (at most its longest match), for a deny list its longest word or
//! `max_match_bytes`; and it moves back to the start of any match it would cut. One byte of
//! what already went out is kept as context, so checks that look at the byte before a match
//! (a card number must not follow a digit) see it.

use crate::config::guardrails::{DenySpec, PiiKind};

use super::pii::{detector, Detector};

/// What one guardrail looks for.
#[derive(Clone, Copy)]
pub enum Finder<'a> {
    Pii(&'a [PiiKind]),
    Deny(&'a DenySpec),
}

/// A match: its bytes, the mask that replaces it, the kind it is (for the verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    start: usize,
    end: usize,
    mask: &'static str,
    kind: &'static str,
}

/// The deny list's mask and kind.
const DENIED: &str = "[REDACTED]";

impl Finder<'_> {
    fn detectors(&self) -> impl Iterator<Item = &'static Detector> + '_ {
        let kinds: &[PiiKind] = match self {
            Finder::Pii(kinds) => kinds,
            Finder::Deny(_) => &[],
        };
        kinds.iter().filter_map(|k| detector(*k))
    }

    /// The matches in `text[from..]`, in order and not overlapping: where two overlap, the
    /// one that starts first wins, then the longer, then the kind listed first.
    fn find(&self, text: &str, from: usize) -> Vec<Found> {
        let mut all = Vec::new();
        let mut spans = Vec::new();
        match self {
            Finder::Pii(_) => {
                for detector in self.detectors() {
                    spans.clear();
                    detector.find(text, from, &mut spans);
                    all.extend(spans.iter().map(|&(start, end)| Found {
                        start,
                        end,
                        mask: detector.mask,
                        kind: detector.kind.name(),
                    }));
                }
            }
            Finder::Deny(deny) => {
                for pattern in deny.words.iter().chain(&deny.patterns) {
                    let mut at = from;
                    while at <= text.len() {
                        let Some(m) = pattern.find_at(text, at) else { break };
                        if m.end() > m.start() {
                            all.push(Found {
                                start: m.start(),
                                end: m.end(),
                                mask: DENIED,
                                kind: "deny",
                            });
                        }
                        at = if m.end() > m.start() { m.end() } else { m.end() + 1 };
                    }
                }
            }
        }
        // A stable sort keeps the listed order among equals.
        all.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
        let mut kept: Vec<Found> = Vec::with_capacity(all.len());
        for found in all {
            if kept.last().is_none_or(|last| found.start >= last.end) {
                kept.push(found);
            }
        }
        kept
    }

    /// The bytes at the end of `text` a match still being written could take.
    fn hold(&self, text: &str) -> usize {
        match self {
            Finder::Deny(deny) => deny.hold.min(text.len()),
            Finder::Pii(_) => self
                .detectors()
                .map(|d| {
                    let run = text.bytes().rev().take_while(|b| (d.in_match)(*b)).count();
                    run.min(d.max_len)
                })
                .max()
                .unwrap_or(0),
        }
    }
}

/// What a scan found and left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// The text with every match masked.
    pub redacted: String,
    /// The same text as it was.
    pub plain: String,
    /// The kinds found, each once, in the order first found.
    pub kinds: Vec<&'static str>,
}

impl Scanned {
    fn note(&mut self, kind: &'static str) {
        if !self.kinds.contains(&kind) {
            self.kinds.push(kind);
        }
    }
}

/// Scans a whole text.
pub fn scan(finder: Finder<'_>, text: &str) -> Scanned {
    let mut out = Scanned::default();
    let found = finder.find(text, 0);
    write_redacted(text, 0, text.len(), &found, &mut out);
    out
}

/// Appends `text[from..to]` with the matches in it masked.
fn write_redacted(text: &str, from: usize, to: usize, found: &[Found], out: &mut Scanned) {
    out.plain.push_str(text.get(from..to).unwrap_or_default());
    let mut at = from;
    for f in found.iter().filter(|f| f.start >= from && f.end <= to) {
        out.redacted.push_str(text.get(at..f.start).unwrap_or_default());
        out.redacted.push_str(f.mask);
        out.note(f.kind);
        at = f.end;
    }
    out.redacted.push_str(text.get(at..to).unwrap_or_default());
}

/// A text scanned as it arrives.
#[derive(Debug, Default)]
pub struct Incremental {
    /// The last character that went out (context for the checks), then what is held.
    buffer: String,
    /// Where the held text starts in `buffer`.
    held_from: usize,
}

impl Incremental {
    /// Adds `piece`; returns what is now final.
    pub fn push(&mut self, finder: Finder<'_>, piece: &str) -> Scanned {
        self.buffer.push_str(piece);
        self.advance(finder, false)
    }

    /// The text is complete: everything held goes out.
    pub fn finish(&mut self, finder: Finder<'_>) -> Scanned {
        self.advance(finder, true)
    }

    /// Bytes held back now.
    pub fn held(&self) -> usize {
        self.buffer.len() - self.held_from
    }

    fn advance(&mut self, finder: Finder<'_>, last: bool) -> Scanned {
        let from = self.held_from;
        let text = self.buffer.as_str();
        let found = finder.find(text, from);
        let mut boundary = match last {
            true => text.len(),
            false => text.len() - finder.hold(text.get(from..).unwrap_or_default()),
        };
        if let Some(cut) = found.iter().find(|f| f.start < boundary && f.end > boundary) {
            boundary = cut.start;
        }
        while !text.is_char_boundary(boundary) {
            boundary -= 1;
        }
        let boundary = boundary.max(from);
        let mut out = Scanned::default();
        write_redacted(text, from, boundary, &found, &mut out);
        // Keep the last character that went out as context, then the held text.
        let context = text
            .get(..boundary)
            .and_then(|gone| gone.char_indices().next_back())
            .map_or(boundary, |(i, _)| i);
        self.buffer.drain(..context);
        self.held_from = boundary - context;
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const TEXT: &str = "Mail jane.doe@example.com or call +44 20 7946 0958; card 4111-1111-1111-1111, \
        IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789, host 10.0.0.12 or fe80::1ff:fe23:4567:890a, \
        key sk-proj-abcdefghijklmnopqrstuvwxyz012345. Ünïcödé ✓ done 4111111111111111";

    #[test]
    fn a_whole_text_is_masked_kind_by_kind() {
        let scanned = scan(Finder::Pii(&PiiKind::EVERY), TEXT);
        assert_eq!(
            scanned.redacted,
            "Mail [EMAIL] or call [PHONE]; card [CARD], IBAN [IBAN], SSN [SSN], host [IP] or [IP], \
             key [SECRET]. Ünïcödé ✓ done [CARD]"
        );
        assert_eq!(
            scanned.kinds,
            ["email", "phone", "card", "iban", "ssn", "ip", "secret"]
        );
    }

    #[test]
    fn a_text_cut_at_every_byte_is_masked_exactly_as_whole() {
        let finder = Finder::Pii(&PiiKind::EVERY);
        let whole = scan(finder, TEXT).redacted;
        let bytes = TEXT.as_bytes();
        for cut in 1..bytes.len() {
            // Pieces must be text: a cut inside a character moves to its start.
            let mut at = cut;
            while !TEXT.is_char_boundary(at) {
                at -= 1;
            }
            let mut scan = Incremental::default();
            let mut out = scan.push(finder, &TEXT[..at]).redacted;
            out.push_str(&scan.push(finder, &TEXT[at..]).redacted);
            out.push_str(&scan.finish(finder).redacted);
            assert_eq!(out, whole, "cut at byte {cut}");
        }
        // And one byte at a time.
        let mut scan = Incremental::default();
        let mut out = String::new();
        for c in TEXT.chars() {
            out.push_str(&scan.push(finder, c.encode_utf8(&mut [0; 4])).redacted);
            assert!(scan.held() <= 500, "held {}", scan.held());
        }
        out.push_str(&scan.finish(finder).redacted);
        assert_eq!(out, whole);
    }

    #[test]
    fn plain_prose_is_held_back_only_by_its_last_word() {
        let finder = Finder::Pii(&PiiKind::EVERY);
        let mut scan = Incremental::default();
        let out = scan.push(finder, "The weather is nice today and tomorrow");
        assert_eq!(out.redacted, "The weather is nice today and ");
        assert_eq!(scan.held(), "tomorrow".len());
    }
}
