//! Stage-level tests: each stage's `run` through a real `StageContext`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use ausa_artifacts::{read_doc_stats, read_documents, DocStat, DocumentsWriter, Split};
use ausa_dag::{
    testing, ExternalFile, InputArtifact, ParamType, ParamValue, Params, Stage, StageError, Stats,
};
use serde_json::json;

use crate::{registry, CorpusStage, DocStatsStage};

fn with(stage: &dyn Stage, overrides: &[(&str, ParamValue)]) -> Params {
    testing::params(stage, overrides)
}

fn run(
    stage: &dyn Stage,
    params: &Params,
    inputs: &[InputArtifact],
    external: &BTreeMap<String, Vec<ExternalFile>>,
    out_dir: &Path,
) -> Result<Stats, StageError> {
    testing::run(stage, params, inputs, external, out_dir)
}

fn external(files: &[(&str, &[PathBuf])]) -> BTreeMap<String, Vec<ExternalFile>> {
    testing::external(files)
}

fn run_corpus(
    params: &Params,
    external: &BTreeMap<String, Vec<ExternalFile>>,
) -> (tempfile::TempDir, Result<Stats, StageError>) {
    let out = tempfile::tempdir().unwrap();
    let result = run(&CorpusStage, params, &[], external, out.path());
    (out, result)
}

fn paths(given: &[&str]) -> ParamValue {
    ParamValue::Paths(given.iter().map(|s| s.to_string()).collect())
}

#[test]
fn registry_lists_every_kind_with_consistent_schemas() {
    let registry = registry();
    let kinds = registry.kinds();
    for expected in ["corpus", "doc_stats", "download", "subset"] {
        assert!(
            kinds.contains(&expected),
            "{expected} is not registered: {kinds:?}"
        );
    }
    for kind in registry.kinds() {
        let stage = registry.get(kind).unwrap();
        assert_eq!(stage.kind(), kind);
        assert!(!stage.salt().is_empty() && !stage.doc().is_empty());
        let mut all_defaulted = true;
        for spec in stage.params() {
            let Some(default) = spec.default.value() else {
                all_defaulted = false; // a required parameter (e.g. download.repo)
                continue;
            };
            let ok = match (spec.ty, &default) {
                (ParamType::Int { min, max }, ParamValue::Int(v)) => (min..=max).contains(v),
                (ParamType::Float { min, max }, ParamValue::Float(v)) => (min..=max).contains(v),
                (ParamType::Choice(choices), ParamValue::Str(v)) => choices.contains(&v.as_str()),
                (ParamType::Str, ParamValue::Str(_))
                | (ParamType::Bool, ParamValue::Bool(_))
                | (ParamType::Strings, ParamValue::Strings(_))
                | (ParamType::Paths { .. }, ParamValue::Paths(_)) => true,
                _ => false,
            };
            assert!(
                ok,
                "{kind}.{}: default {default} does not fit {:?}",
                spec.name, spec.ty
            );
        }
        if all_defaulted {
            stage.check(&testing::defaults(stage)).unwrap();
        }
    }
}

#[test]
fn synthetic_corpus_has_ordered_splits_and_exact_stats() {
    let params = with(&CorpusStage, &[]);
    let (out, stats) = run_corpus(&params, &BTreeMap::new());
    let stats = stats.unwrap();
    let docs = read_documents(out.path().join("documents.parquet")).unwrap();
    assert_eq!(docs.len(), 2000);
    assert_eq!(stats["documents"], json!(2000));
    assert_eq!(stats["source"], json!("synthetic"));
    assert!(docs.iter().enumerate().all(|(i, d)| d.doc_id == i as u64));
    assert!(
        docs.windows(2).all(|w| w[0].split <= w[1].split),
        "train, validation, test"
    );
    let words: usize = docs.iter().map(|d| d.text.split_whitespace().count()).sum();
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    assert_eq!(stats["words"], json!(words));
    assert_eq!(stats["bytes"], json!(bytes));
    for split in Split::ALL {
        let n = docs.iter().filter(|d| d.split == split).count();
        assert_eq!(stats["splits"][split.as_str()]["documents"], json!(n));
    }
    let validation = stats["splits"]["validation"]["documents"].as_u64().unwrap();
    assert!((60..=140).contains(&validation), "{validation}");
}

#[test]
fn synthetic_corpus_bytes_do_not_depend_on_thread_count() {
    let params = with(
        &CorpusStage,
        &[
            ("docs", ParamValue::Int(9000)),
            ("max_words", ParamValue::Int(200)),
        ],
    );
    let bytes_with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (out, stats) = pool.install(|| run_corpus(&params, &BTreeMap::new()));
        stats.unwrap();
        std::fs::read(out.path().join("documents.parquet")).unwrap()
    };
    let one = bytes_with(1);
    assert_eq!(one, bytes_with(2));
    assert_eq!(one, bytes_with(2), "repeatable");
    let other_seed = with(
        &CorpusStage,
        &[
            ("docs", ParamValue::Int(9000)),
            ("max_words", ParamValue::Int(200)),
            ("seed", ParamValue::Int(1)),
        ],
    );
    let (out, stats) = run_corpus(&other_seed, &BTreeMap::new());
    stats.unwrap();
    assert_ne!(
        one,
        std::fs::read(out.path().join("documents.parquet")).unwrap()
    );
}

#[test]
fn check_names_the_parameters_at_fault() {
    let stage = CorpusStage;
    let err = stage
        .check(&with(
            &stage,
            &[
                ("min_words", ParamValue::Int(50)),
                ("max_words", ParamValue::Int(10)),
            ],
        ))
        .unwrap_err();
    assert!(
        err.contains("min_words (50)") && err.contains("max_words (10)"),
        "{err}"
    );
    let err = stage
        .check(&with(
            &stage,
            &[
                ("validation_fraction", ParamValue::Float(0.5)),
                ("test_fraction", ParamValue::Float(0.5)),
            ],
        ))
        .unwrap_err();
    assert!(
        err.contains("validation_fraction") && err.contains("test_fraction"),
        "{err}"
    );
    let local = with(&stage, &[("source", ParamValue::Str("local".into()))]);
    let err = stage.check(&local).unwrap_err();
    assert!(
        err.contains("`train`") && err.contains("`validation`") && err.contains("`test`"),
        "{err}"
    );
    let local = with(
        &stage,
        &[
            ("source", ParamValue::Str("local".into())),
            ("test", paths(&["t.txt"])),
        ],
    );
    stage.check(&local).unwrap();
}

fn write_text_parquet(path: &Path, texts: &[Option<&str>]) {
    let schema = Schema::new(vec![
        Field::new("id", arrow_schema::DataType::Int64, false),
        Field::new("content", arrow_schema::DataType::Utf8, true),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..texts.len() as i64)),
        Arc::new(StringArray::from(texts.to_vec())),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn local_corpus_reads_txt_jsonl_and_parquet_in_split_order() {
    let dir = tempfile::tempdir().unwrap();
    let wiki = dir.path().join("wiki.txt");
    std::fs::write(
        &wiki,
        " = First = \n \n body one \n = = Section = = \n more \n \n = Second = \n \n body two \n",
    )
    .unwrap();
    let paras = dir.path().join("paras.txt");
    std::fs::write(&paras, "\u{feff}para one\n\n  para two  \n").unwrap();
    let jsonl = dir.path().join("val.jsonl");
    std::fs::write(
        &jsonl,
        "{\"body\": \" v1 \", \"x\": 1}\n\n{\"body\": \"\"}\n{\"body\": \"v2 w\"}\n",
    )
    .unwrap();
    let pq = dir.path().join("test.parquet");
    write_text_parquet(&pq, &[Some("t1"), None, Some("  "), Some("t2 u v")]);
    let params = with(
        &CorpusStage,
        &[
            ("source", ParamValue::Str("local".into())),
            ("train", paths(&["wiki.txt", "paras.txt"])),
            ("validation", paths(&["val.jsonl"])),
            ("test", paths(&["test.parquet"])),
            ("jsonl_field", ParamValue::Str("body".into())),
            ("parquet_column", ParamValue::Str("content".into())),
        ],
    );
    let ext = external(&[
        ("train", &[wiki, paras]),
        ("validation", &[jsonl]),
        ("test", &[pq]),
    ]);
    let (out, stats) = run_corpus(&params, &ext);
    let stats = stats.unwrap();
    let docs = read_documents(out.path().join("documents.parquet")).unwrap();
    let got: Vec<(u64, Split, &str)> = docs
        .iter()
        .map(|d| (d.doc_id, d.split, d.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                0,
                Split::Train,
                "= First = \n \n body one \n = = Section = = \n more"
            ),
            (1, Split::Train, "= Second = \n \n body two"),
            (2, Split::Train, "para one"),
            (3, Split::Train, "para two"),
            (4, Split::Validation, "v1"),
            (5, Split::Validation, "v2 w"),
            (6, Split::Test, "t1"),
            (7, Split::Test, "t2 u v"),
        ]
    );
    assert_eq!(stats["source"], json!("local"));
    let train_bytes: usize = got[..4].iter().map(|(_, _, t)| t.len()).sum();
    assert_eq!(
        stats["splits"]["train"],
        json!({"documents": 4, "words": 20, "bytes": train_bytes})
    );
    assert_eq!(stats["splits"]["validation"]["words"], json!(3));
    assert_eq!(stats["words"], json!(27));
}

fn local_run(
    file_name: &str,
    content: &[u8],
    overrides: &[(&str, ParamValue)],
) -> (tempfile::TempDir, Result<Stats, StageError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name);
    std::fs::write(&path, content).unwrap();
    let mut all = vec![
        ("source", ParamValue::Str("local".into())),
        ("train", paths(&[file_name])),
    ];
    all.extend(overrides.iter().cloned());
    let params = with(&CorpusStage, &all);
    let ext = external(&[("train", &[path])]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let result = run(&CorpusStage, &params, &[], &ext, &out);
    (dir, result)
}

#[test]
fn jsonl_errors_name_file_and_line() {
    let (_dir, result) = local_run("docs.jsonl", b"{\"text\": \"ok\"}\n\n{\"text\": 3}\n", &[]);
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("docs.jsonl") && msg.contains("line 3") && msg.contains("not a string"),
        "{msg}"
    );
    let (_dir, result) = local_run("docs.jsonl", b"{\"text\": \"ok\"}\n{broken\n", &[]);
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("docs.jsonl") && msg.contains("line 2") && msg.contains("invalid JSON"),
        "{msg}"
    );
    let (_dir, result) = local_run("docs.jsonl", b"[1]\n", &[]);
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("line 1: expected a JSON object"));
}

#[test]
fn invalid_utf8_is_an_error_with_offset_or_replaced() {
    let content = b"good line\n\nbad \xff\xfe here\n";
    let (_dir, result) = local_run("bad.txt", content, &[]);
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("bad.txt") && msg.contains("byte offset 15") && msg.contains("line 3"),
        "{msg}"
    );
    let (dir, result) = local_run(
        "bad.txt",
        content,
        &[("on_invalid_utf8", ParamValue::Str("replace".into()))],
    );
    assert_eq!(result.unwrap()["documents"], json!(2));
    let docs = read_documents(dir.path().join("out/documents.parquet")).unwrap();
    assert_eq!(docs[1].text, "bad \u{fffd}\u{fffd} here");
}

#[test]
fn empty_given_split_is_an_error_naming_the_file() {
    let (_dir, result) = local_run("blank.txt", b" \n\n\t\n", &[]);
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("split `train` is empty") && msg.contains("blank.txt"),
        "{msg}"
    );
}

#[test]
fn parquet_input_with_missing_column_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("in.parquet");
    write_text_parquet(&pq, &[Some("a")]);
    let params = with(
        &CorpusStage,
        &[
            ("source", ParamValue::Str("local".into())),
            ("train", paths(&["in.parquet"])),
        ],
    );
    let (_out, result) = run_corpus(&params, &external(&[("train", &[pq])]));
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("in.parquet")
            && msg.contains("no column `text`")
            && msg.contains("[id, content]"),
        "{msg}"
    );
}

/// A documents artifact directory holding `texts` as `(split, text)`.
fn documents_input(texts: &[(Split, &str)]) -> (tempfile::TempDir, Vec<InputArtifact>) {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = DocumentsWriter::create(dir.path().join("documents.parquet")).unwrap();
    for (i, (split, text)) in texts.iter().enumerate() {
        writer.push(i as u64, *split, text).unwrap();
    }
    writer.finish().unwrap();
    let input = InputArtifact {
        slot: "documents",
        kind: "corpus".into(),
        dir: dir.path().to_path_buf(),
    };
    (dir, vec![input])
}

#[test]
fn doc_stats_counts_a_hand_made_corpus_exactly() {
    let texts = [
        (Split::Train, "one"),                                    // 1 word, 3 chars
        (Split::Train, "two words"),                              // 2, 9
        (Split::Train, "a b c d e"),                              // 5, 9
        (Split::Train, "ünï cödé\tthree"),                        // 3, 14
        (Split::Validation, "x y z w v u t s r q p o n m l k j"), // 17, 33
        (Split::Test, "  padded   out  "),                        // 2, 16
    ];
    let (_input_dir, inputs) = documents_input(&texts);
    let out = tempfile::tempdir().unwrap();
    let params = with(&DocStatsStage, &[("histogram_bins", ParamValue::Int(4))]);
    let stats = run(
        &DocStatsStage,
        &params,
        &inputs,
        &BTreeMap::new(),
        out.path(),
    )
    .unwrap();

    let rows = read_doc_stats(out.path().join("doc_stats.parquet")).unwrap();
    let words: Vec<u64> = rows.iter().map(|r| r.words).collect();
    let chars: Vec<u64> = rows.iter().map(|r| r.chars).collect();
    assert_eq!(words, [1, 2, 5, 3, 17, 2]);
    assert_eq!(chars, [3, 9, 9, 14, 33, 16]);
    assert_eq!(
        rows[4],
        DocStat {
            doc_id: 4,
            split: Split::Validation,
            words: 17,
            chars: 33
        }
    );

    assert_eq!(stats["documents"], json!(6));
    assert_eq!(stats["words"], json!(30));
    assert_eq!(stats["chars"], json!(84));
    let train = &stats["splits"]["train"];
    assert_eq!(train["documents"], json!(4));
    assert_eq!(train["words"], json!(11));
    assert_eq!(train["chars"], json!(35));
    assert_eq!(train["min_words"], json!(1));
    assert_eq!(train["max_words"], json!(5));
    assert_eq!(train["mean_words"], json!(2.75));
    assert_eq!(train["median_words"], json!(2.5));
    // Bins: [0,2) [2,4) [4,8) [8,inf): 1 | 2, 3 | 5.
    assert_eq!(
        train["histogram"],
        json!({"bins": [
            {"lo": 0, "hi": 2, "count": 1},
            {"lo": 2, "hi": 4, "count": 2},
            {"lo": 4, "hi": 8, "count": 1},
            {"lo": 8, "hi": null, "count": 0},
        ]})
    );
    assert_eq!(
        stats["splits"]["validation"]["histogram"]["bins"][3]["count"],
        json!(1)
    );
    assert_eq!(stats["splits"]["test"]["median_words"], json!(2.0));

    let histogram: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("histogram.json")).unwrap()).unwrap();
    assert_eq!(histogram["splits"]["train"], train["histogram"]);
}

#[test]
fn doc_stats_reports_empty_splits_as_null() {
    let (_input_dir, inputs) = documents_input(&[(Split::Train, "just train")]);
    let out = tempfile::tempdir().unwrap();
    let stats = run(
        &DocStatsStage,
        &with(&DocStatsStage, &[]),
        &inputs,
        &BTreeMap::new(),
        out.path(),
    )
    .unwrap();
    let test = &stats["splits"]["test"];
    assert_eq!(test["documents"], json!(0));
    assert_eq!(test["median_words"], json!(null));
    assert_eq!(test["histogram"]["bins"].as_array().unwrap().len(), 16);
}

#[test]
fn doc_stats_on_synthetic_corpus_is_deterministic_and_consistent() {
    let (corpus_dir, corpus_stats) = run_corpus(&with(&CorpusStage, &[]), &BTreeMap::new());
    let corpus_stats = corpus_stats.unwrap();
    let inputs = [InputArtifact {
        slot: "documents",
        kind: "corpus".into(),
        dir: corpus_dir.path().to_path_buf(),
    }];
    let params = with(&DocStatsStage, &[]);
    let run_in_pool = |threads: usize| {
        let out = tempfile::tempdir().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let stats = pool
            .install(|| {
                run(
                    &DocStatsStage,
                    &params,
                    &inputs,
                    &BTreeMap::new(),
                    out.path(),
                )
            })
            .unwrap();
        (out, stats)
    };
    let (a, stats_a) = run_in_pool(1);
    let (b, stats_b) = run_in_pool(2);
    assert_eq!(stats_a, stats_b);
    for file in ["doc_stats.parquet", "histogram.json"] {
        assert_eq!(
            std::fs::read(a.path().join(file)).unwrap(),
            std::fs::read(b.path().join(file)).unwrap()
        );
    }
    assert_eq!(stats_a["words"], corpus_stats["words"]);
    for split in ["train", "validation", "test"] {
        assert_eq!(
            stats_a["splits"][split]["documents"],
            corpus_stats["splits"][split]["documents"]
        );
        let bins = stats_a["splits"][split]["histogram"]["bins"]
            .as_array()
            .unwrap();
        let binned: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(json!(binned), corpus_stats["splits"][split]["documents"]);
    }
}

#[test]
fn doc_stats_rejects_a_foreign_input_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_text_parquet(&dir.path().join("documents.parquet"), &[Some("x")]);
    let inputs = [InputArtifact {
        slot: "documents",
        kind: "corpus".into(),
        dir: dir.path().to_path_buf(),
    }];
    let out = tempfile::tempdir().unwrap();
    let err = run(
        &DocStatsStage,
        &with(&DocStatsStage, &[]),
        &inputs,
        &BTreeMap::new(),
        out.path(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("documents.parquet") && msg.contains("missing column `doc_id`"),
        "{msg}"
    );
}

/// The real WikiText-2 validation text, or `None` after a visible skip of `test`'s
/// real-text part on a fresh clone without `../shared`.
fn real_wikitext(test: &str) -> Option<String> {
    let path = ausa_testkit::shared_file("data/wikitext-2/valid.txt", test)?;
    Some(std::fs::read_to_string(path).unwrap())
}

/// WikiText-shaped synthetic text (articles, sections, `<unk>`).
fn synthetic_wikitext() -> String {
    (0..40)
        .map(|i| {
            format!(
                " \n = Article {i} = \n \n The <unk> of {i} is here . \n \n = = Part = = \n \n More <unk> text , {i} . \n"
            )
        })
        .collect()
}

#[test]
fn crlf_copies_give_the_same_documents_and_tokens_files_are_text() {
    let text = real_wikitext("crlf_copies_give_the_same_documents_and_tokens_files_are_text")
        .unwrap_or_else(synthetic_wikitext);
    let crlf = text.replace('\n', "\r\n");
    assert!(crlf.matches("\r\n").count() > 100);
    let (lf_dir, lf) = local_run("wiki.valid.tokens", text.as_bytes(), &[]);
    let (crlf_dir, crlf_stats) = local_run("valid-crlf.txt", crlf.as_bytes(), &[]);
    let (lf, crlf_stats) = (lf.unwrap(), crlf_stats.unwrap());
    let read =
        |dir: &tempfile::TempDir| read_documents(dir.path().join("out/documents.parquet")).unwrap();
    let (lf_docs, crlf_docs) = (read(&lf_dir), read(&crlf_dir));
    assert!(lf_docs.len() > 10, "{} documents", lf_docs.len());
    assert!(
        crlf_docs.iter().all(|d| !d.text.contains('\r')),
        "a \\r survived"
    );
    let texts =
        |docs: &[ausa_artifacts::Document]| docs.iter().map(|d| d.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&lf_docs), texts(&crlf_docs));
    assert_eq!(lf["words"], crlf_stats["words"]);
    assert_eq!(lf["bytes"], crlf_stats["bytes"]);
}

/// A `corpus` DAG planned against the real registry.
fn plan_corpus(
    dir: &Path,
    text: &str,
    overrides: &[&str],
) -> Result<ausa_dag::Plan, ausa_dag::DagError> {
    let registry = registry();
    let source = ausa_dag::DagSource {
        name: "t".into(),
        origin: ausa_dag::Origin::File(dir.join("t.toml")),
        base_dir: dir.to_path_buf(),
        text: text.into(),
    };
    let overrides: Vec<_> = overrides
        .iter()
        .map(|o| ausa_dag::Override::parse(o).unwrap())
        .collect();
    let spec = ausa_dag::DagSpec::load(&source, &registry, &overrides)?;
    ausa_dag::Plan::resolve(&spec, None, &registry, &ausa_dag::PlainHasher)
}

#[test]
fn only_parameters_of_the_chosen_source_enter_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one\n\ntwo\n").unwrap();
    let local = "[stages.corpus]\nkind = \"corpus\"\nsource = \"local\"\ntrain = \"a.txt\"\n";
    let fp = |text: &str, ovs: &[&str]| {
        plan_corpus(dir.path(), text, ovs).unwrap().stages[0]
            .fingerprint
            .clone()
    };
    assert_eq!(
        fp(local, &[]),
        fp(local, &["corpus.docs=5"]),
        "docs is synthetic-only"
    );
    assert_eq!(
        fp(local, &[]),
        fp(local, &["corpus.seed=9", "corpus.zipf_exponent=2.0"])
    );
    assert_ne!(fp(local, &[]), fp(local, &["corpus.text_format=lines"]));
    let synthetic = "[stages.corpus]\nkind = \"corpus\"\ndocs = 10\n";
    assert_eq!(
        fp(synthetic, &[]),
        fp(
            synthetic,
            &["corpus.text_format=lines", "corpus.jsonl_field=body"]
        ),
        "local options do not apply to the generator"
    );
    assert_ne!(fp(synthetic, &[]), fp(synthetic, &["corpus.docs=11"]));
    let key = &plan_corpus(dir.path(), local, &[]).unwrap().stages[0].key;
    assert!(key["params"].get("docs").is_none(), "{key}");
    assert_eq!(key["params"]["text_format"], json!("auto"));
}

#[test]
fn unsupported_files_and_wikitext_names_are_decided_at_planning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wiki.train.tokens"), " = A = \n\n x \n").unwrap();
    std::fs::write(dir.path().join("notes.csv"), "a,b\n").unwrap();
    let dag = |file: &str| {
        format!("[stages.corpus]\nkind = \"corpus\"\nsource = \"local\"\ntrain = \"{file}\"\n")
    };
    let plan = plan_corpus(dir.path(), &dag("wiki.train.tokens"), &[]).unwrap();
    assert_eq!(plan.stages[0].external["train"].len(), 1);
    let err = plan_corpus(dir.path(), &dag("notes.csv"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.csv") && err.contains(".tokens"),
        "{err}"
    );
    // A directory keeps the files the corpus reads.
    let plan = plan_corpus(dir.path(), &dag("."), &[]).unwrap();
    assert_eq!(plan.stages[0].external["train"].len(), 1);
}
