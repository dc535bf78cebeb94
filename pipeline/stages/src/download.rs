//! The `download` stage kind: builds `documents.parquet` from the Parquet files of a
//! Hugging Face hub repository (for example the WikiText corpora in
//! `Salesforce/wikitext`).
//!
//! Planning never downloads: [`Stage::remote_inputs`](ausa_dag::Stage::remote_inputs)
//! resolves the revision to a commit and lists each split's files with the content
//! hash the hub reports (the sha256 of an LFS file, from one metadata request), or,
//! offline (`HF_HUB_OFFLINE=1`) or when the hub cannot be reached, what the hub cache
//! knows. Those hashes enter the key, so the fingerprint pins the exact bytes
//! whatever the revision names. When neither the hub nor the cache can tell, the
//! stage is planned as pending ("needs the hub"). [`TypedStage::run`] downloads the
//! listed files into the standard hub cache (or finds them there), checks them
//! against the listed hashes, and reads them. See [`HubConfig`] for the environment
//! variables honoured.

mod hub;
mod rows;

use std::collections::BTreeMap;
use std::path::PathBuf;

use ausa_artifacts::{Split, DOCUMENTS_FILE};
use ausa_dag::{
    InputSlot, Pending, ProgressUnit, RemoteFile, RemoteInputs, StageContext, StageError, Stats,
    TypedStage,
};
use serde_json::json;

pub use hub::{HubConfig, HubError};

use crate::parquet_text;
use crate::sink::DocumentSink;
use hub::{FetchRequest, HubFile};
use rows::ArticleBuilder;

/// Our splits, in output order, with the parameter naming each one's hub split; the
/// split name is also the key of its files in the stage's remote inputs.
const SPLITS: [(Split, &str); 3] = [
    (Split::Train, "train_split"),
    (Split::Validation, "validation_split"),
    (Split::Test, "test_split"),
];

ausa_dag::stage_params! {
    /// Parameters of the `download` stage.
    pub struct DownloadParams {
        repo: String = required_string(
            "Hub repository id, `owner/name` (e.g. \"Salesforce/wikitext\")"),
        repo_type: String = choice(&["dataset", "model"], "dataset", "Kind of hub repository"),
        revision: String = string("main",
            "Branch, tag or commit sha; a full commit sha pins the files (the resolved \
             commit is reported in the stats either way)"),
        config: String = string("",
            "Folder of the repository holding the files (e.g. \"wikitext-2-raw-v1\"); \
             empty = the repository root"),
        train_split: String = string("train",
            "Hub split read into our train split: files `<config>/<name>-*.parquet` or \
             `<config>/<name>/*.parquet`; empty = no train split"),
        validation_split: String = string("validation",
            "Hub split read into our validation split (files as for train_split); empty = none"),
        test_split: String = string("test",
            "Hub split read into our test split (files as for train_split); empty = none"),
        text_column: String = string("text", "The Utf8 or LargeUtf8 column holding the text"),
        format: String = choice(&["wikitext", "rows"], "wikitext",
            "wikitext: rows are lines, grouped into articles at ` = Title = ` lines that \
             stand between blank lines; rows: each non-blank row is a document"),
    }
}

impl DownloadParams {
    fn split_name(&self, split: Split) -> &str {
        match split {
            Split::Train => &self.train_split,
            Split::Validation => &self.validation_split,
            Split::Test => &self.test_split,
        }
    }
}

/// The `download` stage kind (no inputs; writes `documents.parquet`).
///
/// [`DownloadStage::default`] reads the hub settings from the environment when it
/// lists or fetches; [`DownloadStage::with_hub`] uses the given ones (tests, embedding).
#[derive(Debug, Default, Clone)]
pub struct DownloadStage {
    hub: Option<HubConfig>,
}

impl DownloadStage {
    /// A stage that uses `hub` instead of the environment.
    pub fn with_hub(hub: HubConfig) -> DownloadStage {
        DownloadStage { hub: Some(hub) }
    }

    fn hub(&self) -> Result<HubConfig, HubError> {
        match &self.hub {
            Some(hub) => Ok(hub.clone()),
            None => HubConfig::from_env(),
        }
    }
}

impl TypedStage for DownloadStage {
    type Params = DownloadParams;

    fn kind(&self) -> &'static str {
        "download"
    }

    fn salt(&self) -> &'static str {
        // 2: keyed by the hub's content hashes (sha256 of LFS files), fetched at run time.
        "2"
    }

    fn doc(&self) -> &'static str {
        "Builds the documents table (documents.parquet: doc_id, split, text) from the \
         Parquet files of a Hugging Face hub repository. Planning only reads metadata: \
         the files' content hashes from the hub (or, with HF_HUB_OFFLINE=1 or no network, \
         from the standard hub cache; a stage neither knows is shown as needing the hub), \
         and the fingerprint covers them; the build downloads the files into the hub cache \
         (HF_HOME / HF_HUB_CACHE; HF_ENDPOINT and HF_TOKEN are honoured) and checks them. \
         Each of train, validation and test reads the files of one hub split under \
         `config`. Rows are WikiText lines grouped into articles, or documents themselves. \
         Rows are train, then validation, then test documents, each in file order; doc_id \
         is the row index. Documents are trimmed and empty ones dropped."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &[]
    }

    fn check(&self, params: &DownloadParams) -> Result<(), String> {
        FetchRequest::from_params(params).map(|_| ())
    }

    fn remote_inputs(&self, params: &DownloadParams) -> RemoteInputs {
        let listing = FetchRequest::from_params(params)
            .map_err(HubProblem::Params)
            .and_then(|request| {
                let hub = self.hub().map_err(HubProblem::Hub)?;
                hub::list(&hub, &request).map_err(HubProblem::Hub)
            });
        match listing {
            Ok(listing) => RemoteInputs::Known(remote_files(&listing)),
            Err(problem) => RemoteInputs::Unknown(problem.pending()),
        }
    }

    fn run(&self, params: &DownloadParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let request = FetchRequest::from_params(params)?;
        let hub = self.hub()?;
        let wikitext = params.format == "wikitext";
        let total: u64 = SPLITS
            .iter()
            .flat_map(|(split, _)| ctx.remote_files(split.as_str()))
            .map(|f| f.size)
            .sum();
        // Downloading (or finding in the cache) counts once, reading once more.
        ctx.progress.set_total(2 * total, ProgressUnit::Bytes);
        // Download everything first: a half-read corpus is worthless if a later file fails.
        let mut files = BTreeMap::new();
        let mut commit = None;
        for (split, _) in SPLITS {
            let mut paths = Vec::new();
            for remote in ctx.remote_files(split.as_str()) {
                let (file_commit, file) = hub_file(remote)?;
                paths.push(hub::fetch_file(
                    &hub,
                    &request,
                    file_commit,
                    &file,
                    ctx.progress,
                )?);
                commit = Some(file_commit.to_string());
            }
            files.insert(split, paths);
        }
        if let Some(commit) = &commit {
            hub::record_ref(&hub, &request, commit)?;
        }
        let mut sink = DocumentSink::create(&ctx.out_dir.join(DOCUMENTS_FILE))?;
        for (split, param) in SPLITS {
            if params.split_name(split).trim().is_empty() {
                continue;
            }
            let paths = &files[&split];
            read_split(split, paths, &params.text_column, wikitext, &mut sink, ctx)?;
            if sink.totals(split).documents == 0 {
                return Err(empty_split(split, param, &params.text_column, paths).into());
            }
        }
        let mut stats = sink.finish()?;
        let names: serde_json::Map<_, _> = SPLITS
            .iter()
            .filter(|(split, _)| !ctx.remote_files(split.as_str()).is_empty())
            .map(|(split, _)| {
                let paths: Vec<&str> = ctx
                    .remote_files(split.as_str())
                    .iter()
                    .map(|f| f.location.split_once('/').map_or("", |(_, p)| p))
                    .collect();
                (split.as_str().to_string(), json!(paths))
            })
            .collect();
        stats.insert("repo".into(), json!(request.repo));
        stats.insert("revision".into(), json!(request.revision));
        stats.insert("commit".into(), json!(commit));
        stats.insert("files".into(), serde_json::Value::Object(names));
        Ok(stats)
    }
}

/// Why the remote inputs are unknown.
enum HubProblem {
    /// The parameters do not describe a request (reported by `check` already).
    Params(String),
    /// The hub or its cache could not tell.
    Hub(HubError),
}

impl HubProblem {
    fn pending(self) -> Pending {
        match self {
            HubProblem::Params(reason) => Pending { reason, hint: None },
            HubProblem::Hub(error) => {
                let hint = match &error {
                    HubError::Network { .. } | HubError::NotCached { .. } => Some(
                        "connect to the network (check HF_ENDPOINT) and run without \
                         HF_HUB_OFFLINE, or fill the hub cache (HF_HOME / HF_HUB_CACHE) \
                         where the hub can be reached"
                            .to_string(),
                    ),
                    _ => None,
                };
                Pending {
                    reason: format!("needs the hub: {error}"),
                    hint,
                }
            }
        }
    }
}

/// The listing as the stage's remote inputs: per split, files located by
/// `<commit>/<path>` with the hub's content hash.
fn remote_files(listing: &hub::Listing) -> BTreeMap<String, Vec<RemoteFile>> {
    listing
        .files
        .iter()
        .map(|(split, files)| {
            let files = files
                .iter()
                .map(|f| RemoteFile {
                    location: format!("{}/{}", listing.commit, f.path),
                    digest: match f.etag.len() {
                        64 => format!("sha256:{}", f.etag),
                        _ => format!("git-sha1:{}", f.etag),
                    },
                    size: f.size,
                })
                .collect();
            (split.clone(), files)
        })
        .collect()
}

/// `(commit, file)` of a remote input made by [`remote_files`].
fn hub_file(remote: &RemoteFile) -> Result<(&str, HubFile), StageError> {
    let bad = || {
        format!(
            "remote input `{}` is not one of ours (engine bug)",
            remote.location
        )
    };
    let (commit, path) = remote.location.split_once('/').ok_or_else(bad)?;
    let (_, etag) = remote.digest.split_once(':').ok_or_else(bad)?;
    Ok((
        commit,
        HubFile {
            path: path.to_string(),
            etag: etag.to_string(),
            size: remote.size,
        },
    ))
}

impl FetchRequest {
    /// The request the parameters describe, or a message naming the bad parameter.
    fn from_params(params: &DownloadParams) -> Result<FetchRequest, String> {
        let repo = params.repo.trim();
        if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') {
            return Err(format!(
                "`repo` must be a hub repository id like \"owner/name\", not `{repo}`"
            ));
        }
        if repo.contains(char::is_whitespace) || repo.split('/').any(|p| p == ".." || p.is_empty())
        {
            return Err(format!("`repo` `{repo}` is not a valid hub repository id"));
        }
        let revision = params.revision.trim();
        if revision.is_empty() {
            return Err(
                "`revision` must not be empty (use \"main\" for the default branch)".into(),
            );
        }
        let config = params.config.trim().trim_matches('/');
        if config.split('/').any(|p| p == "..") {
            return Err(format!(
                "`config` `{config}` must be a folder inside the repository"
            ));
        }
        let mut splits = Vec::new();
        for (split, param) in SPLITS {
            let name = params.split_name(split).trim();
            if name.contains('/') || name == ".." {
                return Err(format!(
                    "`{param}` `{name}` must be a split name, not a path"
                ));
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
        let repo_type = match params.repo_type.as_str() {
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
    files: &[PathBuf],
    column: &str,
    wikitext: bool,
    sink: &mut DocumentSink,
    ctx: &StageContext<'_>,
) -> Result<(), StageError> {
    let mut emit = |doc: &str| sink.push(split, doc);
    let mut articles = ArticleBuilder::default();
    for path in files {
        if wikitext {
            parquet_text::for_each_row(path, column, "text_column", &mut |row| {
                articles.push_row(row, &mut emit)
            })?;
        } else {
            parquet_text::for_each_row(path, column, "text_column", &mut emit)?;
        }
        ctx.progress
            .advance(std::fs::metadata(path).map_or(0, |m| m.len()));
    }
    if wikitext {
        articles.finish(&mut emit)?;
    }
    Ok(())
}

fn empty_split(split: Split, param: &str, column: &str, files: &[PathBuf]) -> String {
    if files.is_empty() {
        return format!(
            "split `{split}` has no input files (its hub split is named by `{param}`); \
             the plan did not list them"
        );
    }
    let names: Vec<String> = files.iter().map(|f| format!("`{}`", f.display())).collect();
    format!(
        "split `{split}` is empty: column `{column}` of {} holds no text (set `{param}` \
         to \"\" to leave the split out)",
        names.join(", ")
    )
}
