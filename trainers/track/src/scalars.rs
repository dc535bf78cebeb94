//! The scalars of a `metrics.jsonl` line: one mapping for TensorBoard and W&B alike.
//!
//! A line of `kind: "train"` gives `train/<field>` for each of its numeric fields, a line
//! of `kind: "eval"` gives `<split>/<field>` (`valid/word_ppl`, `test/bits_per_byte`);
//! `step` is the step, and the fields that are counters rather than measurements
//! ([`NOT_SCALARS`]: `steps`, `epoch`, `positions`) are left out, as are `null`s (a
//! perplexity without text counts, or a value that was not finite). So every scalar
//! either tool shows is a number of the JSONL file, under a name derived from it.
//!
//! ```
//! let line = serde_json::json!({"kind": "eval", "step": 6, "split": "valid", "loss": 4.2, "word_ppl": null});
//! let (step, values) = ausa_track::scalars::of_line(&line).unwrap();
//! assert_eq!((step, values), (6, vec![("valid/loss".to_string(), 4.2)]));
//! ```

use std::path::Path;

use crate::TrackError;

/// Fields of a metrics line that are not plotted.
pub const NOT_SCALARS: [&str; 6] = ["kind", "step", "split", "steps", "epoch", "positions"];

/// `(step, [(tag, value)])` of one metrics line, tags sorted; `None` for a line that is not a
/// `train` or `eval` record with a step.
pub fn of_line(line: &serde_json::Value) -> Option<(u64, Vec<(String, f64)>)> {
    let object = line.as_object()?;
    let step = object.get("step")?.as_u64()?;
    let prefix = match object.get("kind")?.as_str()? {
        "train" => "train".to_string(),
        "eval" => object.get("split")?.as_str()?.to_string(),
        _ => return None,
    };
    let mut values: Vec<(String, f64)> = object
        .iter()
        .filter(|(k, _)| !NOT_SCALARS.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((format!("{prefix}/{k}"), v.as_f64()?)))
        .collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    Some((step, values))
}

/// The scalars of a whole `metrics.jsonl`, one entry per line, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsFile {
    /// `(step, values)` per line.
    pub lines: Vec<(u64, Vec<(String, f64)>)>,
    /// Whether the last line was cut off (a killed run) and left out.
    pub truncated: bool,
}

impl MetricsFile {
    /// Reads `path`. A last line without its newline that does not parse is a killed
    /// writer's and is dropped (`truncated`); any other line that does not parse is an
    /// error naming its number.
    pub fn read(path: &Path) -> Result<MetricsFile, TrackError> {
        let text = std::fs::read_to_string(path).map_err(TrackError::io(path))?;
        let mut out = MetricsFile::default();
        let count = text.lines().count();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) if i + 1 == count && !text.ends_with('\n') => {
                    out.truncated = true;
                    break;
                }
                Err(e) => {
                    return Err(TrackError::BadFile {
                        path: path.to_path_buf(),
                        message: format!("line {}: {e}", i + 1),
                    })
                }
            };
            if let Some(scalars) = of_line(&value) {
                out.lines.push(scalars);
            }
        }
        Ok(out)
    }

    /// The lines merged per step (consecutive lines of one step: a step's training
    /// values and the evaluations at that step), for loggers that take one record per
    /// step (W&B's `log(..., step=)`).
    pub fn by_step(&self) -> Vec<(u64, Vec<(String, f64)>)> {
        let mut out: Vec<(u64, Vec<(String, f64)>)> = Vec::new();
        for (step, values) in &self.lines {
            match out.last_mut() {
                Some((last, merged)) if last == step => merged.extend(values.iter().cloned()),
                _ => out.push((*step, values.clone())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn train_and_eval_lines_give_tags_from_their_fields() {
        let train = json!({"kind": "train", "step": 3, "steps": 6, "epoch": 0, "loss": 5.5,
            "lr": 0.001, "grad_norm": 1.25, "tokens_per_s": 900.0, "steps_per_s": 2.0, "elapsed_s": 1.5});
        let (step, values) = of_line(&train).unwrap();
        assert_eq!(step, 3);
        let tags: Vec<&str> = values.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tags,
            [
                "train/elapsed_s",
                "train/grad_norm",
                "train/loss",
                "train/lr",
                "train/steps_per_s",
                "train/tokens_per_s"
            ]
        );
        let eval = json!({"kind": "eval", "step": 6, "split": "test", "loss": 4.0, "positions": 100,
            "token_ppl": 54.6, "word_ppl": 80.0, "bits_per_byte": null});
        let (_, values) = of_line(&eval).unwrap();
        assert_eq!(
            values,
            [
                ("test/loss".to_string(), 4.0),
                ("test/token_ppl".to_string(), 54.6),
                ("test/word_ppl".to_string(), 80.0)
            ]
        );
        assert_eq!(of_line(&json!({"kind": "other", "step": 1})), None);
        assert_eq!(of_line(&json!({"kind": "train"})), None);
    }

    #[test]
    fn a_cut_off_last_line_is_dropped_and_other_bad_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let a = r#"{"kind":"train","step":1,"loss":2.0}"#;
        let b = r#"{"kind":"eval","step":1,"split":"valid","loss":3.0}"#;
        std::fs::write(&path, format!("{a}\n{b}\n{{\"kind\":\"tr")).unwrap();
        let file = MetricsFile::read(&path).unwrap();
        assert!(file.truncated);
        assert_eq!(file.lines.len(), 2);
        assert_eq!(
            file.by_step(),
            [(
                1,
                vec![
                    ("train/loss".to_string(), 2.0),
                    ("valid/loss".to_string(), 3.0)
                ]
            )]
        );
        std::fs::write(&path, format!("{a}\n{{oops\n{b}\n")).unwrap();
        let err = MetricsFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
