//! The `download` stage kind: builds `documents.parquet` from the Parquet files of a
//! Hugging Face hub repository (for example the WikiText corpora in
//! `Salesforce/wikitext`).
//!
//! Fetching happens at plan time in [`Stage::fetch_inputs`]: the revision is resolved
//! to a commit, each split's files are downloaded into the standard hub cache (or
//! found there), and their local paths are returned under the keys `train`,
//! `validation` and `test`. The planner hashes them, so the fingerprint pins the
//! exact bytes whatever the revision names; [`Stage::run`] then only reads local
//! files. See [`HubConfig`] for the environment variables honoured.

mod hub;
mod rows;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use ausa_artifacts::{DocumentsWriter, Split, DOCUMENTS_FILE};
use ausa_dag::{
    ExternalFile, ParamDefault, ParamSpec, ParamType, Params, ProgressUnit, Stage, StageContext,
    StageError, Stats,
};
use serde_json::json;

pub use hub::{HubConfig, HubError};

use crate::corpus::SplitTotals;
use hub::FetchRequest;
use rows::ArticleBuilder;

/// Our splits, in output order, with the parameter naming each one's hub split; the
/// split name is also the key of its files in [`Stage::fetch_inputs`].
const SPLITS: [(Split, &str); 3] = [
    (Split::Train, "train_split"),
    (Split::Validation, "validation_split"),
    (Split::Test, "test_split"),
];

static PARAMS: [ParamSpec; 9] = [
    ParamSpec {
        name: "repo",
        ty: ParamType::Str,
        default: ParamDefault::Required,
        doc: "Hub repository id, `owner/name` (e.g. \"Salesforce/wikitext\")",
    },
    ParamSpec {
        name: "repo_type",
        ty: ParamType::Choice(&["dataset", "model"]),
        default: ParamDefault::Str("dataset"),
        doc: "Kind of hub repository",
    },
    ParamSpec {
        name: "revision",
        ty: ParamType::Str,
        default: ParamDefault::Str("main"),
        doc: "Branch, tag or commit sha; a full commit sha pins the files (the resolved \
              commit is reported in the stats either way)",
    },
    ParamSpec {
        name: "config",
        ty: ParamType::Str,
        default: ParamDefault::Str(""),
        doc: "Folder of the repository holding the files (e.g. \"wikitext-2-raw-v1\"); \
              empty = the repository root",
    },
    split_param(
        "train_split",
        "train",
        "Hub split read into our train split: files `<config>/<name>-*.parquet` or \
         `<config>/<name>/*.parquet`; empty = no train split",
    ),
    split_param(
        "validation_split",
        "validation",
        "Hub split read into our validation split (files as for train_split); empty = none",
    ),
    split_param(
        "test_split",
        "test",
        "Hub split read into our test split (files as for train_split); empty = none",
    ),
    ParamSpec {
        name: "text_column",
        ty: ParamType::Str,
        default: ParamDefault::Str("text"),
        doc: "The Utf8 or LargeUtf8 column holding the text",
    },
    ParamSpec {
        name: "format",
        ty: ParamType::Choice(&["wikitext", "rows"]),
        default: ParamDefault::Str("wikitext"),
        doc: "wikitext: rows are lines, grouped into articles at ` = Title = ` lines that \
              stand between blank lines; rows: each non-blank row is a document",
    },
];

const fn split_param(name: &'static str, default: &'static str, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty: ParamType::Str,
        default: ParamDefault::Str(default),
        doc,
    }
}

/// The `download` stage kind (no inputs; writes `documents.parquet`).
///
/// [`DownloadStage::default`] reads the hub settings from the environment when it
/// fetches; [`DownloadStage::with_hub`] uses the given ones (tests, embedding).
#[derive(Debug, Default, Clone)]
pub struct DownloadStage {
    hub: Option<HubConfig>,
}

impl DownloadStage {
    /// A stage that uses `hub` instead of the environment.
    pub fn with_hub(hub: HubConfig) -> DownloadStage {
        DownloadStage { hub: Some(hub) }
    }
}

impl Stage for DownloadStage {
    fn kind(&self) -> &'static str {
        "download"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Builds the documents table (documents.parquet: doc_id, split, text) from the \
         Parquet files of a Hugging Face hub repository, downloaded at plan time into the \
         standard hub cache (HF_HOME / HF_HUB_CACHE; HF_ENDPOINT, HF_TOKEN and \
         HF_HUB_OFFLINE=1 are honoured). Each of train, validation and test reads the \
         files of one hub split under `config`; the fingerprint covers their content. \
         Rows are WikiText lines grouped into articles, or documents themselves. Rows \
         are train, then validation, then test documents, each in file order; doc_id is \
         the row index. Documents are trimmed and empty ones dropped."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> &'static [ausa_dag::InputSlot] {
        &[]
    }

    fn check(&self, params: &Params) -> Result<(), String> {
        FetchRequest::from_params(params)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn fetch_inputs(&self, params: &Params) -> Result<BTreeMap<String, Vec<PathBuf>>, StageError> {
        let request = FetchRequest::from_params(params)?;
        let hub = match &self.hub {
            Some(hub) => hub.clone(),
            None => HubConfig::from_env()?,
        };
        Ok(hub::fetch(&hub, &request)?)
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let column = ctx.params.str("text_column")?;
        let wikitext = ctx.params.str("format")? == "wikitext";
        let total = SPLITS
            .iter()
            .flat_map(|(split, _)| ctx.external_files(split.as_str()))
            .map(|f| f.size)
            .sum();
        ctx.progress.set_total(total, ProgressUnit::Bytes);
        let mut sink = DocSink::create(&ctx.out_dir.join(DOCUMENTS_FILE))?;
        for (split, param) in SPLITS {
            if ctx.params.str(param)?.trim().is_empty() {
                continue;
            }
            let files = ctx.external_files(split.as_str());
            read_split(split, files, column, wikitext, &mut sink, ctx)?;
            if sink.totals[split.index()].documents == 0 {
                return Err(empty_split(split, param, column, files).into());
            }
        }
        let mut stats = sink.finish()?;
        add_source_stats(&mut stats, ctx)?;
        Ok(stats)
    }
}

impl FetchRequest {
    /// The request the parameters describe, or a message naming the bad parameter.
    fn from_params(params: &Params) -> Result<FetchRequest, StageError> {
        let repo = params.str("repo")?.trim();
        if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') {
            return Err(format!(
                "`repo` must be a hub repository id like \"owner/name\", not `{repo}`"
            )
            .into());
        }
        if repo.contains(char::is_whitespace) || repo.split('/').any(|p| p == ".." || p.is_empty())
        {
            return Err(format!("`repo` `{repo}` is not a valid hub repository id").into());
        }
        let revision = params.str("revision")?.trim();
        if revision.is_empty() {
            return Err(
                "`revision` must not be empty (use \"main\" for the default branch)".into(),
            );
        }
        let config = params.str("config")?.trim().trim_matches('/');
        if config.split('/').any(|p| p == "..") {
            return Err(
                format!("`config` `{config}` must be a folder inside the repository").into(),
            );
        }
        let mut splits = Vec::new();
        for (split, param) in SPLITS {
            let name = params.str(param)?.trim();
            if name.contains('/') || name == ".." {
                return Err(format!("`{param}` `{name}` must be a split name, not a path").into());
            }
            if !name.is_empty() {
                splits.push((split.as_str(), name.to_string()));
            }
        }
        if splits.is_empty() {
            return Err(
                "`train_split`, `validation_split` and `test_split` are all empty: \
                        name at least one hub split to read"
                    .into(),
            );
        }
        let repo_type = match params.str("repo_type")? {
            "model" => hf_hub::RepoType::Model,
            _ => hf_hub::RepoType::Dataset,
        };
        Ok(FetchRequest {
            repo: repo.to_string(),
            repo_type,
            revision: revision.to_string(),
            config: config.to_string(),
            splits,
        })
    }
}

/// Reads the files of one split in order into `sink`. WikiText articles may continue
/// from one shard into the next, so one builder spans all the split's files.
fn read_split(
    split: Split,
    files: &[ExternalFile],
    column: &str,
    wikitext: bool,
    sink: &mut DocSink,
    ctx: &StageContext<'_>,
) -> Result<(), StageError> {
    let mut emit = |doc: &str| sink.push(split, doc);
    let mut articles = ArticleBuilder::default();
    for file in files {
        if wikitext {
            rows::for_each_row(&file.path, column, &mut |row| {
                articles.push_row(row, &mut emit)
            })?;
        } else {
            rows::for_each_row(&file.path, column, &mut emit)?;
        }
        ctx.progress.advance(file.size);
    }
    if wikitext {
        articles.finish(&mut emit)?;
    }
    Ok(())
}

fn empty_split(split: Split, param: &str, column: &str, files: &[ExternalFile]) -> String {
    if files.is_empty() {
        return format!(
            "split `{split}` has no input files (its hub split is named by `{param}`); \
             the plan did not fetch them"
        );
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| format!("`{}`", f.path.display()))
        .collect();
    format!(
        "split `{split}` is empty: column `{column}` of {} holds no text (set `{param}` \
         to \"\" to leave the split out)",
        names.join(", ")
    )
}

/// Adds `repo`, `revision`, `commit` and the repository paths of each split's files.
/// The commit and paths come from the snapshot paths the fetch returned
/// (`.../<repo folder>/snapshots/<commit>/<path in repo>`), so they describe exactly
/// the files read.
fn add_source_stats(stats: &mut Stats, ctx: &StageContext<'_>) -> Result<(), StageError> {
    let mut commit = None;
    let mut files = serde_json::Map::new();
    for (split, _) in SPLITS {
        let mut names = Vec::new();
        for file in ctx.external_files(split.as_str()) {
            let (file_commit, name) = snapshot_location(&file.path).unzip();
            commit = commit.or(file_commit);
            names.push(name.unwrap_or_else(|| file.path.display().to_string()));
        }
        if !names.is_empty() {
            files.insert(split.as_str().to_string(), json!(names));
        }
    }
    stats.insert("repo".into(), json!(ctx.params.str("repo")?.trim()));
    stats.insert("revision".into(), json!(ctx.params.str("revision")?.trim()));
    stats.insert("commit".into(), json!(commit));
    stats.insert("files".into(), serde_json::Value::Object(files));
    Ok(())
}

/// `(commit, path in the repository)` of a hub-cache snapshot path.
fn snapshot_location(path: &Path) -> Option<(String, String)> {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    let at = parts.iter().position(|p| {
        p.starts_with("datasets--") || p.starts_with("models--") || p.starts_with("spaces--")
    })?;
    match &parts[at + 1..] {
        ["snapshots", commit, rest @ ..] if !rest.is_empty() => {
            Some((commit.to_string(), rest.join("/")))
        }
        _ => None,
    }
}

/// The documents writer plus the running `doc_id` and per-split totals.
struct DocSink {
    writer: DocumentsWriter,
    next_id: u64,
    totals: [SplitTotals; 3],
}

impl DocSink {
    fn create(path: &Path) -> Result<DocSink, StageError> {
        Ok(DocSink {
            writer: DocumentsWriter::create(path)?,
            next_id: 0,
            totals: Default::default(),
        })
    }

    /// Adds a document after trimming it; empty documents are dropped.
    fn push(&mut self, split: Split, text: &str) -> Result<(), StageError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        self.writer.push(self.next_id, split, text)?;
        self.next_id += 1;
        let totals = &mut self.totals[split.index()];
        totals.documents += 1;
        totals.words += text.split_whitespace().count() as u64;
        totals.bytes += text.len() as u64;
        Ok(())
    }

    /// Closes the file; returns the corpus-style statistics.
    fn finish(self) -> Result<Stats, StageError> {
        self.writer.finish()?;
        let sum = |f: fn(&SplitTotals) -> u64| self.totals.iter().map(f).sum::<u64>();
        let splits: serde_json::Map<_, _> = Split::ALL
            .iter()
            .map(|&s| {
                let t = self.totals[s.index()];
                let value = json!({"documents": t.documents, "words": t.words, "bytes": t.bytes});
                (s.as_str().to_string(), value)
            })
            .collect();
        let mut stats = Stats::new();
        stats.insert("documents".into(), json!(sum(|t| t.documents)));
        stats.insert("words".into(), json!(sum(|t| t.words)));
        stats.insert("bytes".into(), json!(sum(|t| t.bytes)));
        stats.insert("splits".into(), serde_json::Value::Object(splits));
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_paths_give_commit_and_repository_path() {
        let path = Path::new(
            "/c/hub/datasets--Salesforce--wikitext/snapshots/abc123/wikitext-2-raw-v1/train-00000-of-00001.parquet",
        );
        assert_eq!(
            snapshot_location(path),
            Some((
                "abc123".to_string(),
                "wikitext-2-raw-v1/train-00000-of-00001.parquet".to_string()
            ))
        );
        assert_eq!(snapshot_location(Path::new("/data/train.parquet")), None);
    }
}
