//! Splitting a WikiText file (as in WikiText-2/103 raw) into articles.
//!
//! An article starts at a level-1 heading line ` = Title = ` and runs to the next
//! one; section headings (` = = Section = = `, ` = = = Sub = = = `) stay inside
//! the article. The heading line is kept as the start of the article's text. Text
//! before the first heading becomes a document of its own.

use crate::lines::line_spans;

/// Whether `line` is a level-1 heading: trimmed, it is `= Title =` with a non-blank
/// title, and it is not a deeper heading (`= = Title = =`).
pub(crate) fn is_article_heading(line: &str) -> bool {
    let t = line.trim();
    t.len() >= 5
        && t.starts_with("= ")
        && t.ends_with(" =")
        && !t.starts_with("= = ")
        && !t[2..t.len() - 2].trim().is_empty()
}

/// Whether any line of `text` is a level-1 heading (how `text_format = "auto"` decides).
pub(crate) fn has_article_heading(text: &str) -> bool {
    text.lines().any(is_article_heading)
}

/// Whether a line starts an article: a level-1 heading with a blank line (or the
/// start) before it and a blank line (or the end) after it. The raw corpus also has
/// heading-shaped lines inside articles (continued formulas, table rows); only real
/// titles stand alone. The `download` stage's streaming splitter uses the same rule.
pub(crate) fn starts_article(blank_before: bool, line: &str, blank_after: bool) -> bool {
    blank_before && blank_after && is_article_heading(line)
}

/// The articles of `text`, trimmed, empty ones dropped.
pub(crate) fn articles(text: &str) -> Vec<&str> {
    let lines: Vec<(usize, &str)> = line_spans(text).collect();
    let blank = |i: Option<usize>| {
        i.and_then(|i| lines.get(i))
            .is_none_or(|(_, l)| l.trim().is_empty())
    };
    let starts = (0..lines.len())
        .filter(|&i| starts_article(blank(i.checked_sub(1)), lines[i].1, blank(Some(i + 1))))
        .map(|i| lines[i].0);
    let mut docs = Vec::new();
    let mut start = 0;
    for end in starts.chain(std::iter::once(text.len())) {
        let doc = text[start..end].trim();
        if !doc.is_empty() {
            docs.push(doc);
        }
        start = end;
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 is a game . \n \n = = Gameplay = = \n \n Play it . \n = = = Sub = = = \n More . \n \n = Tower Building = \n \n The tower . \n";

    #[test]
    fn headings_are_detected_with_surrounding_spaces() {
        assert!(is_article_heading(" = Valkyria Chronicles III = \n"));
        assert!(is_article_heading("= A ="));
        assert!(!is_article_heading(" = = Gameplay = = "));
        assert!(!is_article_heading(" = = = Sub = = = "));
        assert!(!is_article_heading("=   ="));
        assert!(!is_article_heading("= no closing"));
        assert!(!is_article_heading("x = y = z"));
    }

    #[test]
    fn sections_stay_inside_articles() {
        let docs = articles(SAMPLE);
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert!(docs[0].starts_with("= Valkyria Chronicles III ="));
        assert!(docs[0].contains("= = Gameplay = ="));
        assert!(docs[0].contains("= = = Sub = = =") && docs[0].ends_with("More ."));
        assert_eq!(docs[1], "= Tower Building = \n \n The tower .");
    }

    #[test]
    fn text_before_first_heading_is_its_own_document() {
        let docs = articles("preface line\n\n = Title = \n\nbody\n");
        assert_eq!(docs, ["preface line", "= Title = \n\nbody"]);
        let inline = articles("x\n = 2 = \n\n = Real = \n\ny\n");
        assert_eq!(
            inline,
            ["x\n = 2 =", "= Real = \n\ny"],
            "a heading-shaped line inside text is not a title"
        );
        assert!(has_article_heading(SAMPLE));
        assert!(!has_article_heading("plain\n\ntext = with = signs\n"));
    }
}
