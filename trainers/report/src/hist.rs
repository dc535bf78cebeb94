//! The histogram figures: bank statistics from the runs' `run_meta.json` (sets per
//! sequence, atoms per set, one series per data configuration) and the MinHash error
//! of Delta from a `minhash_error.csv` (`tests/bench/minhash_error.sh`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::plots::HistSeries;
use crate::run::Run;
use crate::ReportError;

/// A bank histogram: the bucket width and the `(le, count)` buckets (bucket `le`
/// counts the values in `(le - width, le]`).
pub type Bins = (u64, Vec<(u64, u64)>);

/// One data configuration's bank histograms (from the first run that uses it).
#[derive(Debug, Clone, Serialize)]
pub struct BankData {
    /// The banks' artifact fingerprint (or all the run's fingerprints without a
    /// `banks` stage): what tells data configurations apart.
    pub fingerprint: String,
    /// The legend entry.
    pub label: String,
    /// The runs on this data.
    pub runs: Vec<String>,
    /// `(le, count)` buckets of sets per sequence, and their width.
    pub sets_per_seq: Bins,
    /// `(le, count)` buckets of atoms per set, and their width.
    pub atoms_per_set: Bins,
}

fn buckets(h: &serde_json::Value) -> Option<Bins> {
    let width = h["bin_width"].as_u64().unwrap_or(1).max(1);
    let bins = h["bins"]
        .as_array()?
        .iter()
        .map(|b| Some((b["le"].as_u64()?, b["count"].as_u64()?)))
        .collect::<Option<Vec<_>>>()?;
    Some((width, bins))
}

/// The data fingerprint of a run: its `banks` artifact's, else all of them.
fn fingerprint(meta: &serde_json::Value) -> String {
    let artifacts = meta["run"]["artifacts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let fp = |a: &serde_json::Value| a["fingerprint"].as_str().unwrap_or("").to_string();
    if let Some(b) = artifacts.iter().find(|a| a["kind"] == "banks") {
        return fp(b);
    }
    artifacts.iter().map(fp).collect::<Vec<_>>().join("+")
}

/// The bank histograms of the runs' training splits, one entry per data configuration
/// (runs without histograms in their metadata are left out).
pub fn bank_data(runs: &[Run]) -> Vec<BankData> {
    let mut out: Vec<BankData> = Vec::new();
    for r in runs {
        let train = &r.meta["data"]["train"];
        let h = &train["histograms"];
        let (Some(sets), Some(atoms)) = (buckets(&h["sets_per_seq"]), buckets(&h["atoms_per_set"]))
        else {
            continue;
        };
        let fp = fingerprint(&r.meta);
        if let Some(d) = out.iter_mut().find(|d| d.fingerprint == fp) {
            d.runs.push(r.label.clone());
            continue;
        }
        let short: String = fp.chars().take(8).collect();
        let label = format!(
            "{} L{} w{}/s{}{}",
            r.meta["run"]["dag"].as_str().unwrap_or("data"),
            train["seq_len"],
            train["window"],
            train["stride"],
            if short.is_empty() {
                String::new()
            } else {
                format!(" [{short}]")
            }
        );
        out.push(BankData {
            fingerprint: fp,
            label,
            runs: vec![r.label.clone()],
            sets_per_seq: sets,
            atoms_per_set: atoms,
        });
    }
    out
}

/// Histogram bars of integer buckets: bucket `le` of width `w` holds the integers
/// `le - w + 1 ..= le`, drawn over `[le - w + 0.5, le + 0.5]`.
pub fn integer_bins(label: &str, (width, bins): &Bins) -> HistSeries {
    HistSeries {
        label: label.to_string(),
        bins: bins
            .iter()
            .map(|&(le, c)| (le as f64 - *width as f64 + 0.5, le as f64 + 0.5, c as f64))
            .collect(),
    }
}

/// What a `minhash_error.csv` holds for one `k`.
#[derive(Debug, Clone, Serialize)]
pub struct MinhashK {
    /// MinHash values per set.
    pub k: u64,
    /// `(lo, hi, pairs)` error bins, `lo`/`hi` infinite for the outer ones.
    pub bins: Vec<(f64, f64, u64)>,
    /// The summary rows (`pairs`, `mean`, `mean_abs`, `rmse`, `p90_abs`, ...).
    pub stats: Vec<(String, f64)>,
}

impl MinhashK {
    /// A summary value by name.
    pub fn stat(&self, name: &str) -> Option<f64> {
        self.stats.iter().find(|s| s.0 == name).map(|s| s.1)
    }
}

/// Reads a `minhash_error.csv` (`k,kind,lo,hi,value` rows of
/// `artifacts/examples/minhash_error.rs`, several k appended); errors name the file
/// and the line.
pub fn read_minhash_csv(path: &Path) -> Result<Vec<MinhashK>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, message: String| ReportError::BadFile {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    const HEADER: &str = "k,kind,lo,hi,value";
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        Some((n, h)) => {
            let what = format!("header {h:?}, expected {HEADER:?} (minhash_error's CSV)");
            return Err(bad(n, what));
        }
        None => return Err(bad(1, format!("empty file, expected the header {HEADER}"))),
    }
    let mut out: Vec<MinhashK> = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let [k, kind, lo, hi, value] = f[..] else {
            return Err(bad(
                n,
                format!("{} fields, expected 5 (k,kind,lo,hi,value)", f.len()),
            ));
        };
        let num = |s: &str, what: &str| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| bad(n, format!("{what} {s:?} is not a number")))
        };
        let k: u64 = k
            .trim()
            .parse()
            .map_err(|_| bad(n, format!("k {k:?} is not a positive integer")))?;
        let entry = match out.iter_mut().position(|e| e.k == k) {
            Some(i) => &mut out[i],
            None => {
                out.push(MinhashK {
                    k,
                    bins: Vec::new(),
                    stats: Vec::new(),
                });
                out.last_mut().expect("just pushed")
            }
        };
        match kind {
            "hist" => {
                let (lo, hi, v) = (num(lo, "lo")?, num(hi, "hi")?, num(value, "count")?);
                if lo.is_nan() || hi.is_nan() || lo >= hi || v < 0.0 || v.fract() != 0.0 {
                    return Err(bad(
                        n,
                        format!(
                            "bin [{lo}, {hi}) with count {v}: expected lo < hi and a whole count"
                        ),
                    ));
                }
                entry.bins.push((lo, hi, v as u64));
            }
            "stat" => entry.stats.push((lo.to_string(), num(value, "value")?)),
            other => return Err(bad(n, format!("kind {other:?}, expected hist or stat"))),
        }
    }
    if out.is_empty() {
        return Err(bad(1, "no rows after the header".into()));
    }
    out.sort_by_key(|e| e.k);
    Ok(out)
}

/// The CSV to draw: `explicit`, else a `minhash_error.csv` directly inside one of
/// the report's input directories.
pub fn find_minhash_csv(explicit: Option<&Path>, inputs: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    inputs
        .iter()
        .map(|i| i.join("minhash_error.csv"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minhash_csv_reads_bins_and_stats_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(
            &path,
            "k,kind,lo,hi,value\n32,hist,-inf,-40,0\n32,hist,-40,-38,3\n32,stat,pairs,,3\n64,hist,-40,-38,1\n",
        )
        .unwrap();
        let ks = read_minhash_csv(&path).unwrap();
        assert_eq!(ks.len(), 2);
        assert_eq!(
            ks[0].bins,
            vec![(f64::NEG_INFINITY, -40.0, 0), (-40.0, -38.0, 3)]
        );
        assert_eq!(ks[0].stat("pairs"), Some(3.0));
        std::fs::write(
            &path,
            "k,kind,lo,hi,value\n32,hist,-40,-38,3\n32,hist,-38,x,1\n",
        )
        .unwrap();
        let err = read_minhash_csv(&path).unwrap_err().to_string();
        assert!(
            err.contains("m.csv: line 3: hi \"x\" is not a number"),
            "{err}"
        );
        std::fs::write(&path, "a,b\n").unwrap();
        let err = read_minhash_csv(&path).unwrap_err().to_string();
        assert!(err.contains("m.csv: line 1: header"), "{err}");
    }
}
