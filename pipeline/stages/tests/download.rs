//! The `download` stage against a fake hub on 127.0.0.1: the real `hf-hub` client
//! downloads generated Parquet files over HTTP into a temporary hub cache, the planner
//! hashes them, and the stage builds `documents.parquet` from them.
//!
//! Every test passes its hub settings explicitly ([`HubConfig`]), so none depends on
//! or changes the process environment and they may run in parallel.

mod download_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use ausa_artifacts::{read_documents, Document, Split};
use ausa_dag::{DagSource, DagSpec, Origin, PlainHasher, Plan, Registry, Stats};
use ausa_stages::download::{DownloadStage, HubConfig};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use download_support::{sha256_hex, FakeHub};

const REPO: &str = "Salesforce/wikitext";
const COMMIT: &str = "b08601e04326c79dfdd32d625aee71d232d685c3";
const CONFIG: &str = "wikitext-2-raw-v1";

/// Train rows of the first shard; the article `Beta` continues in the second one.
const TRAIN_0: &[&str] = &[
    "",
    " = Alpha = \n",
    "",
    " Alpha is the first article . \n",
    "",
    " = = History = = \n",
    "",
    " It began . \n",
    "",
    " = Beta = \n",
    "",
    " Beta starts here . \n",
];

/// Train rows of the second shard, with a heading-shaped formula line that is not
/// surrounded by blank lines and so stays inside `Beta`.
const TRAIN_1: &[&str] = &[
    " and continues in the next shard . \n",
    " = 2 x = \n",
    "",
    " = Gamma = \n",
    "",
    " Gamma text . \n",
    "",
];

const VALIDATION: &[&str] = &["", " = Delta = \n", "", " Delta text . \n", ""];
const TEST: &[&str] = &["", " = Epsilon = \n", "", " Epsilon text . \n", ""];

fn expected_documents() -> Vec<(Split, &'static str)> {
    vec![
        (
            Split::Train,
            "= Alpha = \n\n Alpha is the first article . \n\n = = History = = \n\n It began .",
        ),
        (
            Split::Train,
            "= Beta = \n\n Beta starts here . \n and continues in the next shard . \n = 2 x =",
        ),
        (Split::Train, "= Gamma = \n\n Gamma text ."),
        (Split::Validation, "= Delta = \n\n Delta text ."),
        (Split::Test, "= Epsilon = \n\n Epsilon text ."),
    ]
}

/// A snappy-compressed Parquet file with one `text` column, in row groups of 4 rows
/// (the hub's files are snappy-compressed and have several row groups).
fn parquet_bytes(column: &str, rows: &[&str]) -> Vec<u8> {
    let array: ArrayRef = Arc::new(StringArray::from(rows.to_vec()));
    let batch = RecordBatch::try_from_iter([(column, array)]).unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(4))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

fn wikitext_files() -> BTreeMap<String, Vec<u8>> {
    let file =
        |name: &str, rows: &[&str]| (format!("{CONFIG}/{name}"), parquet_bytes("text", rows));
    BTreeMap::from([
        ("README.md".to_string(), b"# WikiText\n".to_vec()),
        file("train-00000-of-00002.parquet", TRAIN_0),
        file("train-00001-of-00002.parquet", TRAIN_1),
        file("validation-00000-of-00001.parquet", VALIDATION),
        file("test-00000-of-00001.parquet", TEST),
        (
            "wikitext-103-raw-v1/train-00000-of-00001.parquet".to_string(),
            parquet_bytes("text", &["", " = Other = \n", "", " x \n"]),
        ),
    ])
}

fn train_shard_0() -> Vec<u8> {
    wikitext_files()[&format!("{CONFIG}/train-00000-of-00002.parquet")].clone()
}

fn hub_with_wikitext() -> FakeHub {
    let hub = FakeHub::start();
    hub.add_dataset(REPO, COMMIT, wikitext_files());
    hub
}

fn config(hub: &FakeHub, cache: &Path) -> HubConfig {
    HubConfig {
        endpoint: hub.endpoint(),
        cache_dir: cache.to_path_buf(),
        token: None,
        offline: false,
        progress: false,
        attempts: 3,
        backoff: Duration::from_millis(10),
    }
}

fn stage_toml(extra: &str) -> String {
    format!(
        "[stages.wt2]\nkind = \"download\"\nrepo = \"{REPO}\"\nconfig = \"{CONFIG}\"\n{extra}\n"
    )
}

/// Loads a one-stage DAG and plans it (listing the files, downloading nothing); a
/// stage left pending is an error here, with its reason.
fn plan(hub: &HubConfig, toml: &str) -> Result<Plan, String> {
    let plan = plan_pending(hub, toml)?;
    match &plan.stages[0].pending {
        Some(pending) => Err(pending.reason.clone()),
        None => Ok(plan),
    }
}

/// Loads a one-stage DAG and plans it, pending or not.
fn plan_pending(hub: &HubConfig, toml: &str) -> Result<Plan, String> {
    let mut registry = Registry::new();
    registry.register(Box::new(DownloadStage::with_hub(hub.clone())));
    let source = DagSource {
        name: "test".to_string(),
        origin: Origin::Embedded("test".to_string()),
        base_dir: PathBuf::from("."),
        text: toml.to_string(),
    };
    let spec = DagSpec::load(&source, &registry, &[]).map_err(|e| e.to_string())?;
    Plan::resolve(&spec, None, &registry, &PlainHasher).map_err(|e| e.to_string())
}

/// Runs the planned stage (which downloads) into a temporary directory.
fn run(hub: &HubConfig, plan: &Plan) -> Result<(Stats, Vec<Document>), String> {
    let out = tempfile::tempdir().unwrap();
    let stage = DownloadStage::with_hub(hub.clone());
    let stats = ausa_dag::testing::run_planned(&stage, &plan.stages[0], &[], out.path())
        .map_err(|e| e.to_string())?;
    let docs = read_documents(out.path().join("documents.parquet")).unwrap();
    Ok((stats, docs))
}

fn assert_expected(docs: &[Document]) {
    let got: Vec<(Split, &str)> = docs.iter().map(|d| (d.split, d.text.as_str())).collect();
    assert_eq!(got, expected_documents());
    let ids: Vec<u64> = docs.iter().map(|d| d.doc_id).collect();
    assert_eq!(ids, (0..docs.len() as u64).collect::<Vec<_>>());
}

fn assert_err_contains(error: &str, needles: &[&str]) {
    for needle in needles {
        assert!(error.contains(needle), "`{needle}` missing from: {error}");
    }
}

#[test]
fn downloads_the_splits_and_builds_articles() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let plan = plan(&cfg, &stage_toml("")).unwrap();
    let remote = &plan.stages[0].remote;
    assert!(plan.stages[0].external.is_empty());
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        ["test", "train", "validation"]
    );
    let train: Vec<&str> = remote["train"]
        .iter()
        .map(|f| f.location.as_str())
        .collect();
    assert_eq!(
        train,
        [
            format!("{COMMIT}/{CONFIG}/train-00000-of-00002.parquet"),
            format!("{COMMIT}/{CONFIG}/train-00001-of-00002.parquet")
        ]
    );
    // The key holds the hub's content hashes, known without downloading.
    let digests = &plan.stages[0].key["external"]["train"];
    assert_eq!(
        digests[0],
        serde_json::json!({
            "digest": format!("sha256:{}", sha256_hex(&train_shard_0())),
            "size": train_shard_0().len(),
        })
    );
    assert_eq!(digests.as_array().unwrap().len(), 2, "{digests}");
    let bodies = hub
        .requests()
        .iter()
        .filter(|r| r.is_body_download())
        .count();
    assert_eq!(
        bodies,
        0,
        "planning downloads nothing: {:#?}",
        hub.requests()
    );
    assert!(!cache.path().join("datasets--Salesforce--wikitext").exists());

    let (stats, docs) = run(&cfg, &plan).unwrap();
    // The branch is recorded so that an offline run can resolve it later.
    let main_ref = cache
        .path()
        .join("datasets--Salesforce--wikitext/refs/main");
    assert_eq!(std::fs::read_to_string(main_ref).unwrap(), COMMIT);
    assert_expected(&docs);
    assert_eq!(stats["documents"], 5);
    assert_eq!(stats["splits"]["train"]["documents"], 3);
    assert_eq!(stats["repo"], REPO);
    assert_eq!(stats["revision"], "main");
    assert_eq!(stats["commit"], COMMIT);
    assert_eq!(
        stats["files"]["validation"],
        serde_json::json!([format!("{CONFIG}/validation-00000-of-00001.parquet")])
    );
    let words: u64 = docs
        .iter()
        .map(|d| d.text.split_whitespace().count() as u64)
        .sum();
    assert_eq!(stats["words"], words);
}

#[test]
fn the_build_downloads_once_and_a_second_build_uses_the_cache() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let first = plan(&cfg, &stage_toml("")).unwrap();
    run(&cfg, &first).unwrap();
    let downloads = hub
        .requests()
        .iter()
        .filter(|r| r.is_body_download())
        .count();
    assert_eq!(downloads, 4, "{:#?}", hub.requests());
    hub.clear_requests();
    let second = plan(&cfg, &stage_toml("")).unwrap();
    assert_expected(&run(&cfg, &second).unwrap().1);
    let requests = hub.requests();
    assert!(
        requests.iter().all(|r| r.path.starts_with("/api/")),
        "only the revision is listed again: {requests:#?}"
    );
    assert_eq!(first.stages[0].fingerprint, second.stages[0].fingerprint);
}

#[test]
fn offline_with_a_warm_cache_needs_no_server() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let online = config(&hub, cache.path());
    let first = plan(&online, &stage_toml("")).unwrap();
    run(&online, &first).unwrap();
    hub.clear_requests();
    let offline = HubConfig {
        offline: true,
        ..online.clone()
    };
    let by_branch = plan(&offline, &stage_toml("")).unwrap();
    let by_commit = plan(&offline, &stage_toml(&format!("revision = \"{COMMIT}\""))).unwrap();
    assert!(hub.requests().is_empty(), "{:#?}", hub.requests());
    assert_eq!(first.stages[0].remote, by_branch.stages[0].remote);
    assert_eq!(first.stages[0].remote, by_commit.stages[0].remote);
    assert_eq!(first.stages[0].fingerprint, by_branch.stages[0].fingerprint);
    let (stats, docs) = run(&offline, &by_branch).unwrap();
    assert_expected(&docs);
    assert_eq!(stats["commit"], COMMIT);
}

#[test]
fn offline_with_a_cold_cache_leaves_the_stage_pending_saying_what_is_missing() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let offline = HubConfig {
        offline: true,
        ..config(&hub, cache.path())
    };
    let plan = plan_pending(&offline, &stage_toml("")).unwrap();
    let stage = &plan.stages[0];
    assert_eq!(stage.fingerprint, ausa_dag::UNKNOWN_FINGERPRINT);
    let pending = stage.pending.as_ref().expect("pending, not an error");
    let cache_dir = cache.path().display().to_string();
    assert_err_contains(
        &pending.reason,
        &[
            "needs the hub",
            REPO,
            "`main`",
            &cache_dir,
            "HF_HUB_OFFLINE",
        ],
    );
    assert!(pending.hint.as_deref().unwrap_or("").contains("network"));
    assert!(hub.requests().is_empty());
    // Building it fails with that reason.
    let error = run(&offline, &plan).unwrap_err();
    assert_err_contains(&error, &["needs the hub", REPO]);
}

#[test]
fn offline_with_an_interrupted_download_names_the_missing_shard() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    run(&cfg, &plan(&cfg, &stage_toml("")).unwrap()).unwrap();
    let snapshot = cache
        .path()
        .join("datasets--Salesforce--wikitext/snapshots")
        .join(COMMIT);
    std::fs::remove_file(snapshot.join(CONFIG).join("train-00000-of-00002.parquet")).unwrap();
    let offline = HubConfig {
        offline: true,
        ..cfg.clone()
    };
    let error = plan(&offline, &stage_toml("")).unwrap_err();
    assert_err_contains(&error, &["train-00000-of-00002.parquet", "HF_HUB_OFFLINE"]);
    // Online, the listing comes from the hub and the build fetches the shard again.
    let plan = plan(&cfg, &stage_toml("")).unwrap();
    assert_expected(&run(&cfg, &plan).unwrap().1);
}

#[test]
fn an_unknown_repository_is_a_clear_404() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let toml = "[stages.x]\nkind = \"download\"\nrepo = \"Salesforce/no-such-set\"\n";
    let error = plan(&config(&hub, cache.path()), toml).unwrap_err();
    assert_err_contains(
        &error,
        &[
            "dataset `Salesforce/no-such-set`",
            "HTTP 404",
            "`repo`",
            "`revision`",
        ],
    );
    let error = plan(
        &config(&hub, cache.path()),
        &stage_toml("revision = \"v9\""),
    )
    .unwrap_err();
    assert_err_contains(&error, &["revision `v9`", "HTTP 404"]);
}

#[test]
fn a_refused_request_mentions_hf_token_and_a_token_opens_it() {
    let hub = hub_with_wikitext();
    hub.require_token("hf_secret");
    let cache = tempfile::tempdir().unwrap();
    let anonymous = config(&hub, cache.path());
    let error = plan(&anonymous, &stage_toml("")).unwrap_err();
    assert_err_contains(&error, &["HTTP 401", "HF_TOKEN", REPO]);
    assert_eq!(hub.requests().len(), 1, "401 is not retried");

    let wrong = HubConfig {
        token: Some("hf_wrong".into()),
        ..anonymous.clone()
    };
    let error = plan(&wrong, &stage_toml("")).unwrap_err();
    assert_err_contains(&error, &["HTTP 401", "token", "rejected"]);
    assert!(
        !error.contains("hf_wrong"),
        "the token must not be shown: {error}"
    );

    let authorized = HubConfig {
        token: Some("hf_secret".into()),
        ..anonymous.clone()
    };
    let plan = plan(&authorized, &stage_toml("")).unwrap();
    let cold = tempfile::tempdir().unwrap();
    let error = run(
        &HubConfig {
            cache_dir: cold.path().to_path_buf(),
            ..anonymous
        },
        &plan,
    )
    .unwrap_err();
    assert_err_contains(&error, &["HTTP 401", "HF_TOKEN"]);
    assert_expected(&run(&authorized, &plan).unwrap().1);
}

#[test]
fn a_connection_dropped_mid_file_is_retried_and_resumed() {
    let hub = hub_with_wikitext();
    let shard = train_shard_0();
    hub.cut_once(&shard);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let plan = plan(&cfg, &stage_toml("")).unwrap();
    assert_expected(&run(&cfg, &plan).unwrap().1);
    let cdn_path = format!("/cdn/{}", sha256_hex(&shard));
    let ranges: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.is_body_download() && r.path == cdn_path)
        .filter_map(|r| r.range)
        .collect();
    let half = shard.len() / 2;
    assert_eq!(ranges, ["bytes=0-".to_string(), format!("bytes={half}-")]);
    assert_eq!(std::fs::read(shard_0_in(cache.path())).unwrap(), shard);
}

/// The snapshot path of the first train shard in the hub cache at `cache`.
fn shard_0_in(cache: &Path) -> PathBuf {
    cache
        .join("datasets--Salesforce--wikitext/snapshots")
        .join(COMMIT)
        .join(CONFIG)
        .join("train-00000-of-00002.parquet")
}

#[test]
fn a_corrupt_download_is_detected_and_fetched_again() {
    let hub = hub_with_wikitext();
    let shard = train_shard_0();
    hub.corrupt_once(&shard);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let plan = plan(&cfg, &stage_toml("")).unwrap();
    assert_expected(&run(&cfg, &plan).unwrap().1);
    let cdn_path = format!("/cdn/{}", sha256_hex(&shard));
    let bodies = hub
        .requests()
        .iter()
        .filter(|r| r.is_body_download() && r.path == cdn_path)
        .count();
    assert_eq!(bodies, 2);
    assert_eq!(std::fs::read(shard_0_in(cache.path())).unwrap(), shard);
}

#[test]
fn server_errors_are_retried_then_reported() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    hub.fail_next(&[503, 502]);
    let listed = plan(&cfg, &stage_toml("")).unwrap();
    hub.fail_next(&[503]);
    assert_expected(&run(&cfg, &listed).unwrap().1);

    let cold = tempfile::tempdir().unwrap();
    hub.fail_next(&[503, 503, 503]);
    let error = plan(&config(&hub, cold.path()), &stage_toml("")).unwrap_err();
    assert_err_contains(
        &error,
        &["after 3 attempt(s)", "503", REPO, "HF_HUB_OFFLINE=1"],
    );
}

#[test]
fn an_unreachable_hub_is_reported_after_the_retries() {
    let endpoint = {
        let hub = FakeHub::start();
        hub.endpoint()
    }; // stopped: nothing listens there any more
    let cache = tempfile::tempdir().unwrap();
    let cfg = HubConfig {
        endpoint: endpoint.clone(),
        ..config(&FakeHub::start(), cache.path())
    };
    let error = plan(&cfg, &stage_toml("")).unwrap_err();
    assert_err_contains(&error, &["after 3 attempt(s)", &endpoint, "HF_ENDPOINT"]);
}

#[test]
fn an_unreachable_hub_plans_from_a_warm_cache() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let online = plan(&cfg, &stage_toml("")).unwrap();
    run(&cfg, &online).unwrap();
    let endpoint = {
        let gone = FakeHub::start();
        gone.endpoint()
    };
    let unreachable = HubConfig { endpoint, ..cfg };
    let cached = plan(&unreachable, &stage_toml("")).unwrap();
    assert_eq!(online.stages[0].fingerprint, cached.stages[0].fingerprint);
    assert_expected(&run(&unreachable, &cached).unwrap().1);
}

#[test]
fn a_config_without_the_split_lists_the_folders() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let toml =
        format!("[stages.x]\nkind = \"download\"\nrepo = \"{REPO}\"\nconfig = \"wikitext-3\"\n");
    let error = plan(&config(&hub, cache.path()), &toml).unwrap_err();
    assert_err_contains(
        &error,
        &[
            "split `train`",
            "`wikitext-3/train-*.parquet`",
            "wikitext-103-raw-v1, wikitext-2-raw-v1",
        ],
    );
}

#[test]
fn rows_format_makes_one_document_per_row_and_splits_can_be_left_out() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let toml = stage_toml("format = \"rows\"\nvalidation_split = \"\"\ntest_split = \"\"");
    let plan = plan(&cfg, &toml).unwrap();
    assert_eq!(plan.stages[0].remote.keys().collect::<Vec<_>>(), ["train"]);
    let (stats, docs) = run(&cfg, &plan).unwrap();
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts.len(), 10, "{texts:?}");
    assert_eq!(texts[0], "= Alpha =");
    assert_eq!(stats["splits"]["validation"]["documents"], 0);
}

#[test]
fn a_wrong_text_column_names_the_file_and_column() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let plan = plan(&cfg, &stage_toml("text_column = \"content\"")).unwrap();
    let error = run(&cfg, &plan).unwrap_err();
    assert_err_contains(
        &error,
        &["train-00000-of-00002.parquet", "`content`", "[text]"],
    );
}

#[test]
fn an_empty_split_is_an_error_naming_it() {
    let hub = FakeHub::start();
    let mut files = wikitext_files();
    files.insert(
        format!("{CONFIG}/test-00000-of-00001.parquet"),
        parquet_bytes("text", &["", " ", ""]),
    );
    hub.add_dataset(REPO, COMMIT, files);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let plan = plan(&cfg, &stage_toml("")).unwrap();
    let error = run(&cfg, &plan).unwrap_err();
    assert_err_contains(
        &error,
        &[
            "split `test` is empty",
            "test-00000-of-00001.parquet",
            "test_split",
        ],
    );
}

#[test]
fn bad_parameters_are_rejected_when_the_dag_loads() {
    let hub = hub_with_wikitext();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let toml = "[stages.x]\nkind = \"download\"\nrepo = \"not a repo\"\n";
    assert_err_contains(&plan(&cfg, toml).unwrap_err(), &["`repo`"]);
    let none = stage_toml("train_split = \"\"\nvalidation_split = \"\"\ntest_split = \"\"");
    assert_err_contains(&plan(&cfg, &none).unwrap_err(), &["at least one hub split"]);
    assert!(hub.requests().is_empty());
}

/// The real WikiText-2 validation split, served as the hub serves it (one row per
/// line, blank lines as empty rows), gives its 60 articles.
#[test]
fn real_wikitext_validation_split_gives_60_articles() {
    let Some(path) = ausa_testkit::shared_file(
        "data/wikitext-2/valid.txt",
        "real_wikitext_validation_split_gives_60_articles",
    ) else {
        return; // a fresh clone has no ../shared; the other tests use generated data
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    let hub = FakeHub::start();
    let name = format!("{CONFIG}/validation-00000-of-00001.parquet");
    hub.add_dataset(
        REPO,
        COMMIT,
        BTreeMap::from([(name, parquet_bytes("text", &rows))]),
    );
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let plan = plan(&cfg, &stage_toml("train_split = \"\"\ntest_split = \"\"")).unwrap();
    let (stats, docs) = run(&cfg, &plan).unwrap();
    assert_eq!(stats["splits"]["validation"]["documents"], 60);
    assert!(
        docs[0].text.starts_with("= Homarus gammarus ="),
        "{}",
        &docs[0].text[..40]
    );
}
