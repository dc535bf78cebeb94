//! Splitting plain-text files into documents: paragraphs, lines or WikiText articles.

use crate::lines::line_spans;
use crate::wikitext;

/// How a `.txt` file is cut into documents (the `text_format` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextFormat {
    /// WikiText if any line is a level-1 heading, else paragraphs.
    Auto,
    /// Documents separated by blank (whitespace-only) lines.
    Paragraphs,
    /// WikiText articles; see [`wikitext`].
    WikiText,
    /// One document per non-blank line.
    Lines,
}

impl ausa_dag::ParamField for TextFormat {
    const WANTED: &'static str = "text format";
    fn from_value(value: &ausa_dag::ParamValue) -> Option<TextFormat> {
        match value {
            ausa_dag::ParamValue::Str(name) => TextFormat::from_name(name),
            _ => None,
        }
    }
}

impl TextFormat {
    /// The names of the formats, as the `text_format` parameter takes them.
    pub(crate) const NAMES: &'static [&'static str] = &["auto", "paragraphs", "wikitext", "lines"];

    pub(crate) fn from_name(name: &str) -> Option<TextFormat> {
        Some(match name {
            "auto" => TextFormat::Auto,
            "paragraphs" => TextFormat::Paragraphs,
            "wikitext" => TextFormat::WikiText,
            "lines" => TextFormat::Lines,
            _ => return None,
        })
    }
}

/// The documents of `text`, trimmed, empty ones dropped, in file order.
pub(crate) fn split_documents(text: &str, format: TextFormat) -> Vec<&str> {
    match format {
        TextFormat::Auto if wikitext::has_article_heading(text) => wikitext::articles(text),
        TextFormat::Auto | TextFormat::Paragraphs => paragraphs(text),
        TextFormat::WikiText => wikitext::articles(text),
        TextFormat::Lines => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect(),
    }
}

fn paragraphs(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = None;
    for (offset, line) in line_spans(text) {
        if line.trim().is_empty() {
            if let Some(s) = start.take() {
                docs.push(text[s..offset].trim());
            }
        } else if start.is_none() {
            start = Some(offset);
        }
    }
    if let Some(s) = start {
        docs.push(text[s..].trim());
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_split_on_blank_lines() {
        let text = "\n\nfirst para\nstill first\n \t \nsecond\r\n\r\n\r\nthird  \n";
        assert_eq!(
            split_documents(text, TextFormat::Paragraphs),
            ["first para\nstill first", "second", "third"]
        );
        assert_eq!(
            split_documents("only one", TextFormat::Paragraphs),
            ["only one"]
        );
        assert!(split_documents(" \n\n \n", TextFormat::Paragraphs).is_empty());
    }

    #[test]
    fn lines_drop_blank_lines() {
        assert_eq!(
            split_documents("a b\n\n  c  \r\n", TextFormat::Lines),
            ["a b", "c"]
        );
    }

    #[test]
    fn auto_picks_wikitext_only_with_a_heading() {
        let wiki = " = A = \n\n x \n\n y \n\n = B = \n\n z \n";
        assert_eq!(
            split_documents(wiki, TextFormat::Auto),
            ["= A = \n\n x \n\n y", "= B = \n\n z"]
        );
        assert_eq!(
            split_documents("p1\n\np2\n", TextFormat::Auto),
            ["p1", "p2"]
        );
        assert_eq!(
            TextFormat::from_name("wikitext"),
            Some(TextFormat::WikiText)
        );
        assert_eq!(TextFormat::from_name("markdown"), None);
    }
}
