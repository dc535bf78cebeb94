//! Turning the rows of downloaded Parquet files into documents: WikiText articles
//! rebuilt from rows that are lines (one document per non-blank row needs no help).

use ausa_dag::StageError;

use crate::wikitext::starts_article;

/// Rebuilds WikiText articles from a stream of lines (the rows of a split, in order,
/// across all its files: an article may continue in the next shard).
///
/// An article starts at a level-1 heading line (` = Title = `) that has a blank line
/// (or the start of the split) before it and a blank line (or the end) after it: the
/// raw corpus also has lines shaped like headings inside articles (continued formulas,
/// table rows), and only real titles stand alone. Section headings stay inside the
/// article. Each article is emitted trimmed, lines joined with `\n`; text before the
/// first heading is a document of its own.
#[derive(Debug)]
pub(crate) struct ArticleBuilder {
    /// The lines placed in the current article, each followed by `\n`.
    article: String,
    /// The latest line: whether it starts an article depends on the line after it.
    held: Option<String>,
    /// Whether the line before `held` was blank (or `held` is the first line).
    blank_before_held: bool,
}

impl Default for ArticleBuilder {
    fn default() -> Self {
        ArticleBuilder {
            article: String::new(),
            held: None,
            blank_before_held: true,
        }
    }
}

impl ArticleBuilder {
    /// Adds one row: its text without the final `\n` is one line (or several, if it
    /// holds more newlines).
    pub(crate) fn push_row(
        &mut self,
        row: &str,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        let row = row.strip_suffix('\n').unwrap_or(row);
        row.split('\n')
            .try_for_each(|line| self.push_line(line.strip_suffix('\r').unwrap_or(line), emit))
    }

    fn push_line(
        &mut self,
        line: &str,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        if let Some(previous) = self.held.take() {
            self.place(previous, line.trim().is_empty(), emit)?;
        }
        self.held = Some(line.to_string());
        Ok(())
    }

    /// Places the held line `line`, given whether the line after it is blank.
    fn place(
        &mut self,
        line: String,
        blank_after: bool,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        if starts_article(self.blank_before_held, &line, blank_after) {
            self.flush(emit)?;
        }
        self.blank_before_held = line.trim().is_empty();
        self.article.push_str(&line);
        self.article.push('\n');
        Ok(())
    }

    /// Emits the last article.
    pub(crate) fn finish(
        mut self,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        if let Some(last) = self.held.take() {
            self.place(last, true, emit)?;
        }
        self.flush(emit)
    }

    fn flush(
        &mut self,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        let text = self.article.trim();
        if !text.is_empty() {
            emit(text)?;
        }
        self.article.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn articles(rows: &[&str]) -> Vec<String> {
        let mut docs = Vec::new();
        let mut emit = |d: &str| -> Result<(), StageError> {
            docs.push(d.to_string());
            Ok(())
        };
        let mut builder = ArticleBuilder::default();
        for row in rows {
            builder.push_row(row, &mut emit).unwrap();
        }
        builder.finish(&mut emit).unwrap();
        docs
    }

    #[test]
    fn isolated_headings_start_articles_and_sections_stay_inside() {
        let rows = [
            "",
            " = Alpha = \n",
            "",
            " Alpha text . \n",
            "",
            " = = History = = \n",
            "",
            " Old . \n",
            "",
            " = Beta = \n",
            "",
            " Beta text . \n",
        ];
        assert_eq!(
            articles(&rows),
            [
                "= Alpha = \n\n Alpha text . \n\n = = History = = \n\n Old .",
                "= Beta = \n\n Beta text ."
            ]
        );
    }

    #[test]
    fn headings_not_surrounded_by_blank_lines_stay_inside() {
        let rows = [
            " = Alpha = \n",
            "",
            " x \n",
            " = 2 = \n",
            "",
            " = Gamma = \n",
            " y \n",
        ];
        let docs = articles(&rows);
        assert_eq!(docs.len(), 1, "{docs:?}");
        assert!(docs[0].contains("= 2 =") && docs[0].ends_with("y"));
    }

    #[test]
    fn text_before_the_first_heading_and_rows_without_newlines() {
        let rows = ["preface", "", "= T =", "", "body"];
        assert_eq!(articles(&rows), ["preface", "= T =\n\nbody"]);
        assert!(articles(&["", " ", ""]).is_empty());
    }

    #[test]
    fn agrees_with_the_text_splitter_on_isolated_headings() {
        let text = " \n = A = \n \n a1 \n \n = = S = = \n \n a2 \n \n = B = \n \n b1 \n";
        let rows: Vec<&str> = text.split_inclusive('\n').collect();
        let ours = articles(&rows);
        assert_eq!(ours, crate::wikitext::articles(text));
    }
}
