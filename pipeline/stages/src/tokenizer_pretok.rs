//! The GPT-2 byte-level pre-tokenizer split, written as a scanner.
//!
//! Byte-level BPE first cuts text into pieces with the GPT-2 pattern (the one the
//! `tokenizers` crate's `ByteLevel` pre-tokenizer uses):
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! and BPE never merges across pieces. Running that pattern through a backtracking
//! regex engine is the slowest part of encoding, so this module implements the same
//! leftmost-first match by hand: every character falls in one of four classes
//! (letter `\p{L}`, number `\p{N}`, space `\s`, other), and a piece is a contraction,
//! an optional single `' '` followed by a run of one class, or a run of spaces. The
//! lookahead `\s+(?!\S)` means a run of spaces followed by a non-space gives its last
//! space to the next piece (`"a  b"` is `a`, `" "`, `" b"`). The class tables come
//! from `regex-syntax`, the crate behind the `tokenizers` crate's regex engine, so
//! both agree on every code point; tests compare the two on adversarial text.

use std::sync::LazyLock;

use regex_syntax::hir::{Class, HirKind};

/// The character classes of the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CharClass {
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\s` (Unicode `White_Space`).
    Space,
    /// Everything else.
    Other,
}

/// The contractions the pattern matches first, at an apostrophe.
const CONTRACTIONS: [&str; 7] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

/// Class tables: ASCII by lookup, the rest by binary search over sorted ranges.
struct Classes {
    ascii: [CharClass; 128],
    letters: Vec<(u32, u32)>,
    numbers: Vec<(u32, u32)>,
    spaces: Vec<(u32, u32)>,
}

static CLASSES: LazyLock<Classes> = LazyLock::new(Classes::new);

impl Classes {
    fn new() -> Classes {
        let mut classes = Classes {
            ascii: [CharClass::Other; 128],
            letters: unicode_ranges(r"\p{L}"),
            numbers: unicode_ranges(r"\p{N}"),
            spaces: unicode_ranges(r"\s"),
        };
        for b in 0..128u8 {
            classes.ascii[usize::from(b)] = classes.search(char::from(b));
        }
        classes
    }

    /// Letters first, as the pattern tries `\p{L}` before `\p{N}` and `\s`.
    fn search(&self, c: char) -> CharClass {
        let c = u32::from(c);
        let contains = |ranges: &[(u32, u32)]| {
            let i = ranges.partition_point(|&(_, end)| end < c);
            ranges.get(i).is_some_and(|&(start, _)| start <= c)
        };
        if contains(&self.letters) {
            CharClass::Letter
        } else if contains(&self.numbers) {
            CharClass::Number
        } else if contains(&self.spaces) {
            CharClass::Space
        } else {
            CharClass::Other
        }
    }

    fn of(&self, c: char) -> CharClass {
        match self.ascii.get(c as usize) {
            Some(&class) => class,
            None => self.search(c),
        }
    }
}

/// The sorted code point ranges of a Unicode class pattern.
fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    // The patterns are constants that always parse to a Unicode class.
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("constant Unicode class pattern");
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        other => unreachable!("constant pattern {pattern} parsed to {other:?}"),
    }
}

/// The pieces of `text`, in order; together they cover `text` exactly.
pub(crate) fn pieces(text: &str) -> Pieces<'_> {
    Pieces {
        text,
        at: 0,
        classes: &CLASSES,
    }
}

/// Iterator returned by [`pieces`].
pub(crate) struct Pieces<'t> {
    text: &'t str,
    at: usize,
    classes: &'static Classes,
}

impl<'t> Iterator for Pieces<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        let rest = &self.text[self.at..];
        if rest.is_empty() {
            return None;
        }
        let len = self.piece_len(rest);
        self.at += len;
        Some(&rest[..len])
    }
}

impl Pieces<'_> {
    /// Byte length of the piece at the start of non-empty `rest`.
    fn piece_len(&self, rest: &str) -> usize {
        if let Some(c) = CONTRACTIONS.iter().find(|c| rest.starts_with(*c)) {
            return c.len();
        }
        let mut chars = rest.chars();
        let first = chars.next().unwrap_or(' ');
        if first == ' ' {
            let next = chars.next().map(|c| self.classes.of(c));
            if let Some(class) = next.filter(|&c| c != CharClass::Space) {
                return 1 + self.run_len(&rest[1..], class);
            }
        }
        match self.classes.of(first) {
            CharClass::Space => self.space_run_len(rest),
            class => self.run_len(rest, class),
        }
    }

    /// Byte length of the longest prefix of `s` whose characters are all `class`.
    fn run_len(&self, s: &str, class: CharClass) -> usize {
        s.char_indices()
            .find(|&(_, c)| self.classes.of(c) != class)
            .map_or(s.len(), |(i, _)| i)
    }

    /// `\s+(?!\S)|\s+`: a run of spaces, less its last character when a non-space
    /// follows and the run has more than one character.
    fn space_run_len(&self, s: &str) -> usize {
        let run = self.run_len(s, CharClass::Space);
        if run == s.len() {
            return run;
        }
        match s[..run].char_indices().next_back() {
            Some((last, _)) if last > 0 => last,
            _ => run,
        }
    }
}

/// The GPT-2 byte-to-character map: printable bytes map to themselves, the others
/// to `U+0100 + n` in byte order; vocabulary strings are written with it.
pub(crate) fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        chars[usize::from(b)] = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(0x100 + shifted - 1).unwrap_or('\0')
        };
    }
    chars
}

/// `bytes` written with [`byte_chars`].
pub(crate) fn byte_level_string(bytes: &[u8], chars: &[char; 256]) -> String {
    bytes.iter().map(|&b| chars[usize::from(b)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        pieces(text).collect()
    }

    #[test]
    fn splits_like_gpt2() {
        assert_eq!(
            split("Hello world, it's 2024!  Bye\n\nnow  "),
            vec![
                "Hello", " world", ",", " it", "'s", " 2024", "!", " ", " Bye", "\n", "\n", "now",
                "  "
            ]
        );
        assert_eq!(split("a  b"), vec!["a", " ", " b"]);
        assert_eq!(split(" \n b"), vec![" \n", " b"]);
        assert_eq!(split("x 's 'sam"), vec!["x", " '", "s", " '", "sam"]);
        assert_eq!(split("'ll've"), vec!["'ll", "'ve"]);
        assert_eq!(split("naïve 東京 ٣٤"), vec!["naïve", " 東京", " ٣٤"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn pieces_cover_the_text() {
        let text = "  mixed\t\tspaces\u{3000}and\u{a0}\u{a0}x... ";
        assert_eq!(split(text).concat(), text);
    }

    #[test]
    fn classes_are_disjoint_and_ascii_is_tabled() {
        let c = &*CLASSES;
        for (a, b) in [
            (&c.letters, &c.numbers),
            (&c.letters, &c.spaces),
            (&c.numbers, &c.spaces),
        ] {
            for &(s, e) in a.iter() {
                assert!(
                    b.iter().all(|&(s2, e2)| e < s2 || e2 < s),
                    "{s:x}-{e:x} overlaps"
                );
            }
        }
        assert_eq!(c.of('a'), CharClass::Letter);
        assert_eq!(c.of('7'), CharClass::Number);
        assert_eq!(c.of('\n'), CharClass::Space);
        assert_eq!(c.of('\u{3000}'), CharClass::Space);
        assert_eq!(c.of('\u{301}'), CharClass::Other);
    }

    #[test]
    fn byte_chars_are_gpt2s() {
        let chars = byte_chars();
        assert_eq!(chars[usize::from(b'A')], 'A');
        assert_eq!(chars[usize::from(b' ')], 'Ġ');
        assert_eq!(chars[usize::from(b'\n')], 'Ċ');
        let distinct: std::collections::BTreeSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
