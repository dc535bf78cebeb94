//! Line handling shared by the plain-text readers: line spans and line-ending
//! normalization.

use std::borrow::Cow;

/// Each line of `text` (with its terminator) and the byte offset where it starts.
pub(crate) fn line_spans(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_inclusive('\n').scan(0, |offset, line| {
        let start = *offset;
        *offset += line.len();
        Some((start, line))
    })
}

/// `text` with every CRLF (`\r\n`) line ending turned into `\n`, so that a Windows
/// copy of a corpus gives the same documents as the original. A `\r` not followed by
/// `\n` is kept: it is content, not a line ending.
pub(crate) fn normalize_line_endings(text: &str) -> Cow<'_, str> {
    if text.contains("\r\n") {
        Cow::Owned(text.replace("\r\n", "\n"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_and_lone_cr_stays() {
        assert_eq!(normalize_line_endings("a\r\nb\r\n\r\nc\rd"), "a\nb\n\nc\rd");
        assert!(matches!(normalize_line_endings("a\nb"), Cow::Borrowed(_)));
    }

    #[test]
    fn spans_start_at_each_line() {
        let spans: Vec<_> = line_spans("ab\ncd\n\ne").collect();
        assert_eq!(spans, [(0, "ab\n"), (3, "cd\n"), (6, "\n"), (7, "e")]);
    }
}
