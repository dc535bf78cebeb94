//! Talking to the Hugging Face hub for the `download` stage: configuration from the
//! environment, resolving a revision to a commit and choosing each split's Parquet
//! files with their content hashes ([`list`], at plan time: one metadata request, or
//! offline only the cache), and downloading a listed file into the standard hub cache
//! ([`fetch_file`], when the stage runs).
//!
//! The HTTP work is done by the `hf-hub` crate's blocking client, so the cache layout
//! (`<cache>/datasets--owner--name/{blobs,snapshots,refs}`) is the one the Python
//! `huggingface_hub` library reads and writes: files fetched by either are shared.
//! (`hf-hub` 0.4, on `ureq` 2: 0.5 moved to `ureq` 3, which asks for gzip along with
//! byte ranges, and the hub then ignores the range.)
//! `hf-hub` neither retries requests nor checks what it downloaded, so this module
//! retries transient failures with backoff (a new attempt resumes the partial file)
//! and checks every fresh Parquet blob against its sha256 (the hub's ETag for LFS
//! files).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};

/// The public hub, used when `HF_ENDPOINT` is not set.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the hub and where its cache lives.
///
/// [`HubConfig::from_env`] reads the same environment variables as the Python
/// `huggingface_hub` library; tests build one directly so that nothing depends on the
/// process environment.
#[derive(Clone)]
pub struct HubConfig {
    /// Base URL of the hub, without a trailing slash (`HF_ENDPOINT`; default
    /// `https://huggingface.co`).
    pub endpoint: String,
    /// The hub cache directory holding `datasets--owner--name` folders
    /// (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Access token sent as a bearer token (`HF_TOKEN`, else the token file written by
    /// `huggingface-cli login`).
    pub token: Option<String>,
    /// Use only the local cache, never the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Draw `hf-hub`'s progress bar on stderr while downloading (it stays hidden when
    /// stderr is not a terminal).
    pub progress: bool,
    /// Attempts per request before a transient failure is reported (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub backoff: Duration,
}

impl fmt::Debug for HubConfig {
    /// Like a derived `Debug`, but never shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl HubConfig {
    /// The configuration the process environment asks for.
    pub fn from_env() -> Result<HubConfig, HubError> {
        HubConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// The configuration for the variables `lookup` returns (`None` = unset):
    /// `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HOME`, `HF_TOKEN`,
    /// `HF_TOKEN_PATH` and `HF_HUB_OFFLINE`. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<HubConfig, HubError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))?;
            Some(cache.join("huggingface"))
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|home| home.join("hub")))
            .ok_or(HubError::NoCacheDir)?;
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| hf_home.map(|home| home.join("token")));
        let token = var("HF_TOKEN")
            .map(|t| t.trim().to_string())
            .or_else(|| token_file.and_then(read_token_file));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Ok(HubConfig {
            endpoint: var("HF_ENDPOINT").map_or(DEFAULT_ENDPOINT.to_string(), |e| {
                e.trim().trim_end_matches('/').to_string()
            }),
            cache_dir,
            token,
            offline,
            progress: true,
            attempts: 4,
            backoff: Duration::from_millis(500),
        })
    }

    fn api(&self) -> Result<Api, HubError> {
        ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(self.progress)
            // Retries are ours (`retry`), around metadata requests too, not only bodies.
            .with_retries(0)
            .build()
            .map_err(|e| HubError::Client {
                detail: e.to_string(),
            })
    }

    /// Runs `op` until it succeeds, fails for good, or has failed transiently
    /// `attempts` times; waits `backoff`, doubling, between attempts.
    fn retry<T>(
        &self,
        what: &str,
        mut op: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, HubError> {
        let attempts = self.attempts.max(1);
        let mut wait = self.backoff;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Transient(detail)) if attempt >= attempts => {
                    return Err(HubError::Network {
                        what: what.to_string(),
                        endpoint: self.endpoint.clone(),
                        attempts,
                        detail,
                    })
                }
                Err(Failure::Transient(_)) => {
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}

/// Reads a saved token; a missing or empty file means no token.
fn read_token_file(path: PathBuf) -> Option<String> {
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// The hub could not deliver the requested files. Every message names the repository,
/// revision or file concerned and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No cache directory could be derived from the environment.
    #[error("cannot locate the Hugging Face hub cache: set HF_HUB_CACHE or HF_HOME")]
    NoCacheDir,
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client for the hub: {detail}")]
    Client {
        /// What the client library said.
        detail: String,
    },
    /// HTTP 404.
    #[error(
        "{what} was not found on {endpoint} (HTTP 404): check the `repo`, `repo_type` \
         and `revision` parameters"
    )]
    NotFound {
        /// The repository or file asked for.
        what: String,
        /// The hub's base URL.
        endpoint: String,
    },
    /// HTTP 401 or 403.
    #[error("{endpoint} refused access to {what} (HTTP {status}): {advice}")]
    Auth {
        /// The repository or file asked for.
        what: String,
        /// The hub's base URL.
        endpoint: String,
        /// 401 or 403.
        status: u16,
        /// What to do about it (depends on whether a token was sent).
        advice: &'static str,
    },
    /// Another HTTP error status that retrying cannot fix.
    #[error("{endpoint} answered HTTP {status} for {what}")]
    Status {
        /// The repository or file asked for.
        what: String,
        /// The hub's base URL.
        endpoint: String,
        /// The status code.
        status: u16,
    },
    /// Network errors, server errors or corrupt downloads, every attempt.
    #[error(
        "cannot download {what} from {endpoint} after {attempts} attempt(s): {detail}; \
         check the network connection and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use \
         files already in the hub cache"
    )]
    Network {
        /// The repository or file asked for.
        what: String,
        /// The hub's base URL.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        detail: String,
    },
    /// The server's answers lack what a hub sends (wrong `HF_ENDPOINT`?).
    #[error(
        "{endpoint} does not answer like a Hugging Face hub for {what} ({detail}): \
         check HF_ENDPOINT"
    )]
    Protocol {
        /// The repository or file asked for.
        what: String,
        /// The hub's base URL.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
    /// The revision has no Parquet files for a split.
    #[error("{what} has no Parquet files for split `{split}`: looked for {pattern}; {found}")]
    NoFiles {
        /// The repository and revision.
        what: String,
        /// The hub's split name.
        split: String,
        /// The file names looked for.
        pattern: String,
        /// The folders that do hold Parquet files, as a hint.
        found: String,
    },
    /// Offline (or the hub unreachable), and the cache lacks what is needed.
    #[error(
        "{what} is not in the hub cache {}: {detail}; the hub is needed (run without \
         HF_HUB_OFFLINE, with a network connection)",
        cache.display()
    )]
    NotCached {
        /// The repository and revision.
        what: String,
        /// The cache directory looked in.
        cache: PathBuf,
        /// What exactly is missing.
        detail: String,
    },
    /// The cache directory could not be read or written.
    #[error("cannot use the hub cache at {}: {source}", path.display())]
    Cache {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One failed attempt, classified.
enum Failure {
    /// Another attempt may succeed (network error, HTTP 408/429/5xx, the file lock held
    /// by another download, a corrupt download); the text says what happened.
    Transient(String),
    /// Retrying cannot help.
    Fatal(HubError),
}

/// What to fetch: one revision of a repository, and the hub split names wanted for
/// each of our splits.
#[derive(Debug, Clone)]
pub(crate) struct FetchRequest {
    /// `owner/name`.
    pub(crate) repo: String,
    /// Dataset or model repository.
    pub(crate) repo_type: RepoType,
    /// Branch, tag or commit sha.
    pub(crate) revision: String,
    /// The folder holding the files (`""` = the repository root).
    pub(crate) config: String,
    /// `(our split, the hub's split name)`, in output order.
    pub(crate) splits: Vec<(&'static str, String)>,
}

impl FetchRequest {
    fn repo_at(&self, revision: &str) -> Repo {
        Repo::with_revision(self.repo.clone(), self.repo_type, revision.to_string())
    }

    fn describe(&self, revision: &str) -> String {
        let kind = match self.repo_type {
            RepoType::Model => "model",
            RepoType::Space => "space",
            RepoType::Dataset => "dataset",
        };
        format!("{kind} `{}` at revision `{revision}`", self.repo)
    }

    fn describe_file(&self, commit: &str, name: &str) -> String {
        format!("file `{name}` of {}", self.describe(commit))
    }

    /// The file names a hub split matches, for messages.
    fn pattern(&self, split: &str) -> String {
        let dir = if self.config.is_empty() {
            String::new()
        } else {
            format!("{}/", self.config)
        };
        format!("`{dir}{split}-*.parquet` and `{dir}{split}/*.parquet`")
    }
}

/// One file of a listing: where it is in the repository and what the hub says its
/// content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HubFile {
    /// Path in the repository.
    pub(crate) path: String,
    /// The hub's ETag: the sha256 of an LFS file (64 hex digits), or the git blob id
    /// of a small file (40). The hub cache names the file's blob after it.
    pub(crate) etag: String,
    /// Size in bytes.
    pub(crate) size: u64,
}

/// The files of each wanted split at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listing {
    /// The commit the revision resolved to.
    pub(crate) commit: String,
    /// Our split name -> its files, sorted by repository path.
    pub(crate) files: BTreeMap<String, Vec<HubFile>>,
}

/// Lists each wanted split's files with their content hashes, downloading nothing:
/// online one metadata request (`/api/.../revision/<rev>?blobs=true`); offline
/// (`HF_HUB_OFFLINE`), or when the hub cannot be reached, what the hub cache knows.
pub(crate) fn list(hub: &HubConfig, request: &FetchRequest) -> Result<Listing, HubError> {
    if hub.offline {
        return list_cached(hub, request);
    }
    match list_online(hub, request) {
        Err(network @ HubError::Network { .. }) => list_cached(hub, request).map_err(|_| network),
        other => other,
    }
}

fn list_online(hub: &HubConfig, request: &FetchRequest) -> Result<Listing, HubError> {
    let api = hub.api()?;
    let what = request.describe(&request.revision);
    let info: serde_json::Value = hub.retry(&what, || {
        let response = api
            .repo(request.repo_at(&request.revision))
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| classify_request(hub, &what, e))?;
        let text = response
            .into_string()
            .map_err(|e| Failure::Transient(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| protocol(hub, &what, format!("invalid JSON: {e}")))
    })?;
    let bad = |detail: &str| HubError::Protocol {
        what: what.clone(),
        endpoint: hub.endpoint.clone(),
        detail: detail.to_string(),
    };
    let commit = info["sha"].as_str().ok_or_else(|| bad("no `sha`"))?;
    if !is_commit_sha(commit) {
        // It names a cache folder, so it must not be able to point elsewhere.
        return Err(bad(&format!("`{commit}` is not a commit sha")));
    }
    let mut listed = BTreeMap::new();
    for sibling in info["siblings"]
        .as_array()
        .ok_or_else(|| bad("no `siblings`"))?
    {
        let path = sibling["rfilename"]
            .as_str()
            .ok_or_else(|| bad("a sibling without `rfilename`"))?;
        let lfs = &sibling["lfs"];
        let (etag, size) = match (lfs["sha256"].as_str(), lfs["size"].as_u64()) {
            (Some(sha), Some(size)) => (sha, size),
            _ => (
                sibling["blobId"].as_str().unwrap_or(""),
                sibling["size"].as_u64().unwrap_or(0),
            ),
        };
        listed.insert(path.to_string(), (etag.to_string(), size));
    }
    let names: Vec<&str> = listed.keys().map(String::as_str).collect();
    let mut files = BTreeMap::new();
    for (ours, theirs) in &request.splits {
        let chosen = split_files(&names, &request.config, theirs);
        if chosen.is_empty() {
            return Err(no_files(request, &what, theirs, &names));
        }
        let split = chosen
            .into_iter()
            .map(|path| {
                let (etag, size) = listed[&path].clone();
                if !is_etag(&etag) {
                    return Err(bad(&format!("no content hash for `{path}`")));
                }
                Ok(HubFile { path, etag, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        files.insert(ours.to_string(), split);
    }
    Ok(Listing {
        commit: commit.to_string(),
        files,
    })
}

/// Whether `text` looks like a hub ETag we can name a blob after: a sha256 or a git
/// blob id, in hex.
fn is_etag(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot path of `file` at `commit`, downloading it unless the cache already
/// holds exactly that content; a fresh download is checked against the listed hash.
/// `progress` is told the bytes downloaded.
pub(crate) fn fetch_file(
    hub: &HubConfig,
    request: &FetchRequest,
    commit: &str,
    file: &HubFile,
    progress: &dyn ausa_dag::Progress,
) -> Result<PathBuf, HubError> {
    let pinned = request.repo_at(commit);
    let pointer = hub
        .cache_dir
        .join(pinned.folder_name())
        .join("snapshots")
        .join(commit)
        .join(&file.path);
    if cached_etag(&pointer).as_deref() == Some(file.etag.as_str()) {
        progress.advance(file.size);
        return Ok(pointer);
    }
    let what = request.describe_file(commit, &file.path);
    if hub.offline {
        return Err(HubError::NotCached {
            what,
            cache: hub.cache_dir.clone(),
            detail: format!("`{}` is missing", pointer.display()),
        });
    }
    let api = hub.api()?;
    let path = hub.retry(&what, || {
        // Pinned to the commit so that every file comes from the same one even if the
        // branch moves during the download.
        let path = api
            .repo(pinned.clone())
            .download_with_progress(&file.path, ProgressAdapter(progress))
            .map_err(|e| classify(hub, &what, e))?;
        verify_blob(&path)?;
        Ok(path)
    })?;
    match cached_etag(&path) {
        Some(etag) if etag != file.etag => Err(HubError::Protocol {
            what,
            endpoint: hub.endpoint.clone(),
            detail: format!(
                "the plan listed content {} but the hub served {etag}; plan again",
                file.etag
            ),
        }),
        _ => Ok(path),
    }
}

/// Lets a later offline run resolve `request.revision` (a branch or tag) to `commit`.
pub(crate) fn record_ref(
    hub: &HubConfig,
    request: &FetchRequest,
    commit: &str,
) -> Result<(), HubError> {
    if request.revision == commit || hub.offline {
        return Ok(());
    }
    let cache = Cache::new(hub.cache_dir.clone()).repo(request.repo_at(&request.revision));
    cache.create_ref(commit).map_err(|source| HubError::Cache {
        path: hub.cache_dir.clone(),
        source,
    })
}

/// `hf-hub`'s download progress, passed on to the stage's [`ausa_dag::Progress`].
struct ProgressAdapter<'a>(&'a dyn ausa_dag::Progress);

impl hf_hub::api::Progress for ProgressAdapter<'_> {
    fn init(&mut self, _size: usize, _filename: &str) {}
    fn update(&mut self, size: usize) {
        self.0.advance(size as u64);
    }
    fn finish(&mut self) {}
}

/// The ETag of a cached snapshot file: the name of the blob its link points to. A
/// snapshot file that is not a link (a cache written without symlinks) is hashed.
fn cached_etag(pointer: &Path) -> Option<String> {
    match std::fs::read_link(pointer) {
        Ok(target) => {
            let name = target.file_name()?.to_str()?;
            (is_etag(name) && pointer.is_file()).then(|| name.to_ascii_lowercase())
        }
        Err(_) if pointer.is_file() => sha256_file(pointer).ok(),
        Err(_) => None,
    }
}

fn no_files(request: &FetchRequest, what: &str, split: &str, names: &[&str]) -> HubError {
    let mut folders: Vec<&str> = names
        .iter()
        .filter(|n| n.ends_with(".parquet"))
        .map(|n| {
            n.split('/')
                .next()
                .filter(|_| n.contains('/'))
                .unwrap_or(".")
        })
        .collect();
    folders.sort_unstable();
    folders.dedup();
    let found = if folders.is_empty() {
        "the revision holds no Parquet files at all".to_string()
    } else {
        format!(
            "folders with Parquet files (candidates for `config`): {}",
            folders.join(", ")
        )
    };
    HubError::NoFiles {
        what: what.to_string(),
        split: split.to_string(),
        pattern: request.pattern(split),
        found,
    }
}

/// The repository paths among `names` holding hub split `split` under folder `config`:
/// `<config>/<split>-*.parquet` (the hub's usual shards) or `<config>/<split>/*.parquet`
/// (the layout of the hub's automatic Parquet conversion), sorted.
pub(crate) fn split_files(names: &[&str], config: &str, split: &str) -> Vec<String> {
    let mut chosen: Vec<String> = names
        .iter()
        .filter(|name| belongs_to_split(name, config, split))
        .map(|name| name.to_string())
        .collect();
    chosen.sort();
    chosen
}

fn belongs_to_split(name: &str, config: &str, split: &str) -> bool {
    let relative = if config.is_empty() {
        Some(name)
    } else {
        name.strip_prefix(config).and_then(|r| r.strip_prefix('/'))
    };
    let Some(rest) = relative
        .and_then(|r| r.strip_suffix(".parquet"))
        .and_then(|r| r.strip_prefix(split))
    else {
        return false;
    };
    match rest.split_at_checked(1) {
        Some(("-", tail)) => !tail.contains('/'),
        Some(("/", tail)) => !tail.is_empty() && !tail.contains('/'),
        _ => false,
    }
}

/// Checks a freshly downloaded file against its sha256 when the hub gave one (the
/// ETag of LFS files, which the blob is named after); a mismatch deletes the blob so
/// that the next attempt downloads it afresh.
fn verify_blob(pointer: &Path) -> Result<(), Failure> {
    let Ok(target) = std::fs::read_link(pointer) else {
        return Ok(()); // not a symlink: nothing names the expected digest
    };
    let Some(expected) = target.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(()); // a git blob id (small non-LFS file), not a content sha256
    }
    let actual = sha256_file(pointer).map_err(|e| Failure::Transient(e.to_string()))?;
    if actual.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let blob = pointer.parent().map(|dir| dir.join(&target));
    if let Some(blob) = blob {
        std::fs::remove_file(blob).ok();
    }
    std::fs::remove_file(pointer).ok();
    Err(Failure::Transient(format!(
        "the downloaded data has sha256 {actual}, but the hub announced {expected}"
    )))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn protocol(hub: &HubConfig, what: &str, detail: String) -> Failure {
    Failure::Fatal(HubError::Protocol {
        what: what.to_string(),
        endpoint: hub.endpoint.clone(),
        detail,
    })
}

/// Sorts a failed HTTP request into "try again" and "give up".
fn classify_request(hub: &HubConfig, what: &str, error: ureq::Error) -> Failure {
    match error {
        ureq::Error::Status(status, _) => classify_status(hub, what, status),
        ureq::Error::Transport(transport) => Failure::Transient(transport.to_string()),
    }
}

/// Sorts an `hf-hub` error into "try again" and "give up" (with a message that says
/// what to do).
fn classify(hub: &HubConfig, what: &str, error: ApiError) -> Failure {
    match error {
        ApiError::RequestError(inner) => classify_request(hub, what, *inner),
        ApiError::TooManyRetries(inner) => classify(hub, what, *inner),
        ApiError::MissingHeader(_) | ApiError::InvalidHeader(_) | ApiError::ParseIntError(_) => {
            protocol(hub, what, error.to_string())
        }
        ApiError::InvalidResume => {
            // A partial file longer than the announced size: start that file afresh.
            remove_partial_downloads(&hub.cache_dir);
            Failure::Transient("a partial download was longer than the file".into())
        }
        other => Failure::Transient(other.to_string()),
    }
}

fn classify_status(hub: &HubConfig, what: &str, status: u16) -> Failure {
    let (what, endpoint) = (what.to_string(), hub.endpoint.clone());
    match status {
        408 | 429 | 500..=599 => Failure::Transient(format!("HTTP {status}")),
        401 | 403 => Failure::Fatal(HubError::Auth {
            what,
            endpoint,
            status,
            advice: if hub.token.is_some() {
                "the token sent (HF_TOKEN or the saved login token) was rejected or lacks \
                 access; check it, and accept the repository's terms on its hub page if it \
                 is gated"
            } else {
                "the repository is private or gated, or does not exist; set HF_TOKEN to an \
                 access token with read permission"
            },
        }),
        404 => Failure::Fatal(HubError::NotFound { what, endpoint }),
        _ => Failure::Fatal(HubError::Status {
            what,
            endpoint,
            status,
        }),
    }
}

/// Deletes `*.part` files under the cache's `blobs` folders (best effort).
fn remove_partial_downloads(cache_dir: &Path) {
    let Ok(repos) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for repo in repos.flatten() {
        let Ok(blobs) = std::fs::read_dir(repo.path().join("blobs")) else {
            continue;
        };
        for blob in blobs.flatten() {
            if blob.path().extension().is_some_and(|e| e == "part") {
                std::fs::remove_file(blob.path()).ok();
            }
        }
    }
}

/// The cache's view: the revision resolves through `refs/<revision>` (or is a commit
/// whose snapshot exists), and the split files are those in the snapshot, hashed by
/// the blob names their links point to.
fn list_cached(hub: &HubConfig, request: &FetchRequest) -> Result<Listing, HubError> {
    let what = request.describe(&request.revision);
    let not_cached = |detail: String| HubError::NotCached {
        what: what.clone(),
        cache: hub.cache_dir.clone(),
        detail,
    };
    let repo_dir = hub
        .cache_dir
        .join(request.repo_at(&request.revision).folder_name());
    let commit = cached_commit(&repo_dir, &request.revision).ok_or_else(|| {
        not_cached(format!(
            "neither `{}` nor a snapshot for that revision exists",
            repo_dir.join("refs").join(&request.revision).display()
        ))
    })?;
    let snapshot = repo_dir.join("snapshots").join(&commit);
    let mut names = Vec::new();
    list_files(&snapshot, "", &mut names).map_err(|source| HubError::Cache {
        path: snapshot.clone(),
        source,
    })?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut files = BTreeMap::new();
    for (ours, theirs) in &request.splits {
        let chosen = split_files(&names, &request.config, theirs);
        if chosen.is_empty() {
            return Err(not_cached(format!(
                "snapshot {commit} has no files for split `{theirs}` ({})",
                request.pattern(theirs)
            )));
        }
        if let Some(missing) = missing_shard(&chosen) {
            return Err(not_cached(format!(
                "snapshot {commit} lacks `{missing}` (an earlier download was interrupted)"
            )));
        }
        let split = chosen
            .into_iter()
            .map(|path| {
                let pointer = snapshot.join(&path);
                let etag = cached_etag(&pointer)
                    .ok_or_else(|| not_cached(format!("`{}` is unreadable", pointer.display())))?;
                let size = std::fs::metadata(&pointer).map_or(0, |m| m.len());
                Ok(HubFile { path, etag, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        files.insert(ours.to_string(), split);
    }
    Ok(Listing { commit, files })
}

/// The commit `revision` names in the cached repository at `repo_dir`, if known.
fn cached_commit(repo_dir: &Path, revision: &str) -> Option<String> {
    if is_commit_sha(revision) && repo_dir.join("snapshots").join(revision).is_dir() {
        return Some(revision.to_string());
    }
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
    let commit = commit.trim();
    let exists = is_commit_sha(commit) && repo_dir.join("snapshots").join(commit).is_dir();
    exists.then(|| commit.to_string())
}

/// Whether `text` is a full git commit sha (40 hex digits).
fn is_commit_sha(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Appends the files under `dir` (following links, as snapshots are links to blobs)
/// as `/`-separated paths relative to the snapshot root, skipping dangling links.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{prefix}{name}");
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, &format!("{relative}/"), out)?;
        } else if path.is_file() {
            out.push(relative);
        }
    }
    Ok(())
}

/// For shards named `...-0000i-of-0000n.parquet`, the first missing one; `None` when
/// all are present or the names do not follow that pattern.
fn missing_shard(names: &[String]) -> Option<String> {
    let parsed: Vec<(&str, u32, u32)> = names.iter().filter_map(|n| parse_shard(n)).collect();
    let &(prefix, _, total) = parsed.first()?;
    (0..total)
        .find(|&i| {
            !parsed
                .iter()
                .any(|&(p, index, _)| p == prefix && index == i)
        })
        .map(|i| format!("{prefix}-{i:05}-of-{total:05}.parquet"))
}

fn parse_shard(name: &str) -> Option<(&str, u32, u32)> {
    let stem = name.strip_suffix(".parquet")?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let (prefix, index) = head.rsplit_once('-')?;
    Some((prefix, index.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_files_match_shards_and_converted_layout() {
        let names = [
            "README.md",
            "wikitext-2-raw-v1/train-00001-of-00002.parquet",
            "wikitext-2-raw-v1/train-00000-of-00002.parquet",
            "wikitext-2-raw-v1/validation-00000-of-00001.parquet",
            "wikitext-2-raw-v1/trainer-00000-of-00001.parquet",
            "wikitext-103-raw-v1/train-00000-of-00001.parquet",
            "other/train/0000.parquet",
            "other/train/deep/0000.parquet",
            "train-00000-of-00001.parquet",
        ];
        assert_eq!(
            split_files(&names, "wikitext-2-raw-v1", "train"),
            [
                "wikitext-2-raw-v1/train-00000-of-00002.parquet",
                "wikitext-2-raw-v1/train-00001-of-00002.parquet"
            ]
        );
        assert_eq!(
            split_files(&names, "other", "train"),
            ["other/train/0000.parquet"]
        );
        assert_eq!(
            split_files(&names, "", "train"),
            ["train-00000-of-00001.parquet"]
        );
        assert!(split_files(&names, "wikitext-2-raw-v1", "test").is_empty());
    }

    #[test]
    fn missing_shards_are_named() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let two = names(&[
            "c/train-00000-of-00002.parquet",
            "c/train-00001-of-00002.parquet",
        ]);
        assert_eq!(missing_shard(&two), None);
        let one = names(&["c/train-00001-of-00002.parquet"]);
        assert_eq!(
            missing_shard(&one).as_deref(),
            Some("c/train-00000-of-00002.parquet")
        );
        assert_eq!(missing_shard(&names(&["c/train/0000.parquet"])), None);
    }

    #[test]
    fn config_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let hub = HubConfig::from_lookup(vars(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(hub.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(hub.endpoint, DEFAULT_ENDPOINT);
        assert!(!hub.offline && hub.token.is_none());
        let hub = HubConfig::from_lookup(vars(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "http://mirror.local/"),
            ("HF_TOKEN", " hf_abc \n"),
            ("HF_HUB_OFFLINE", "1"),
        ]))
        .unwrap();
        assert_eq!(hub.cache_dir, Path::new("/hf/hub"));
        assert_eq!(hub.endpoint, "http://mirror.local");
        assert_eq!(hub.token.as_deref(), Some("hf_abc"));
        assert!(hub.offline);
        assert!(
            !format!("{hub:?}").contains("hf_abc"),
            "token must not be shown"
        );
        let hub = HubConfig::from_lookup(vars(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]));
        assert_eq!(hub.unwrap().cache_dir, Path::new("/c"));
        assert!(matches!(
            HubConfig::from_lookup(vars(&[])),
            Err(HubError::NoCacheDir)
        ));
    }
}
