//! Unknown-word markers: strings in the text that stand for a word the corpus does not
//! spell out (WikiText's `<unk>`), encoded as the `<unk>` token instead of as text.
//!
//! In `tokenizer.json` terms (so that the Python `tokenizers` package gives the same
//! ids): `<unk>` is an added token that is **not special** (`"special": false`,
//! `"normalized": true`), so it is matched in text even in `encode_special_tokens`
//! mode, which keeps `<pad>`, `<s>` and `</s>` plain text; markers other than `<unk>`
//! itself become a normalizer, `Replace(marker, "<unk>")` for each in order. Encoding
//! is therefore: replace each marker by `<unk>` in turn, cut the text at every
//! `<unk>`, encode the pieces between as usual, and put the `<unk>` id at each cut.
//! Text around a marker is kept as it is (the space before ` <unk>` is its own `Ġ`
//! token), so decoding gives the text back with `<unk>` at each marker.

use std::borrow::Cow;

/// The markers of one tokenizer: the replacements, then the token cut out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Markers {
    /// Markers other than `token`, replaced by it in this order.
    replaced: Vec<String>,
    /// The added token the text is cut at (`<unk>`).
    token: String,
    /// Its id.
    id: u32,
}

impl Markers {
    /// Markers `markers` (none empty) mapped to `token` with id `id`.
    pub(crate) fn new(markers: &[String], token: &str, id: u32) -> Markers {
        Markers {
            replaced: markers.iter().filter(|m| *m != token).cloned().collect(),
            token: token.to_string(),
            id,
        }
    }

    /// The markers replaced by the token (the normalizer's patterns, in order).
    pub(crate) fn replaced(&self) -> &[String] {
        &self.replaced
    }

    /// The token the text is cut at (`<unk>`).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The token's id.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Calls `segment` with each stretch of text between markers (possibly empty) and
    /// `marker` at each marker, in order.
    pub(crate) fn split<E>(
        &self,
        text: &str,
        mut segment: impl FnMut(&str) -> Result<(), E>,
        mut marker: impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut normalized = Cow::Borrowed(text);
        for pattern in &self.replaced {
            if normalized.contains(pattern.as_str()) {
                normalized = Cow::Owned(normalized.replace(pattern.as_str(), &self.token));
            }
        }
        let mut rest: &str = &normalized;
        while let Some(at) = rest.find(self.token.as_str()) {
            segment(&rest[..at])?;
            marker()?;
            rest = &rest[at + self.token.len()..];
        }
        segment(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(markers: &Markers, text: &str) -> Vec<String> {
        let out = std::cell::RefCell::new(Vec::new());
        markers
            .split::<()>(
                text,
                |s| {
                    out.borrow_mut().push(s.to_string());
                    Ok(())
                },
                || {
                    out.borrow_mut().push("#".to_string());
                    Ok(())
                },
            )
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn text_is_cut_at_every_marker() {
        let m = Markers::new(&["<unk>".into()], "<unk>", 3);
        assert_eq!(
            pieces(&m, "a <unk> b<unk><unk>"),
            ["a ", "#", " b", "#", "", "#", ""]
        );
        assert_eq!(pieces(&m, "no markers"), ["no markers"]);
        assert_eq!(pieces(&m, "<unk"), ["<unk"]);
        let m = Markers::new(&["@@UNK@@".into(), "[UNK]".into()], "<unk>", 3);
        assert_eq!(m.replaced(), ["@@UNK@@", "[UNK]"]);
        assert_eq!(
            pieces(&m, "x @@UNK@@ [UNK]<unk>"),
            ["x ", "#", " ", "#", "", "#", ""]
        );
    }
}
