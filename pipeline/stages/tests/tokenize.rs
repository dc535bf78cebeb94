//! The `tokenizer` and `tokenize` stages end to end through real `StageContext`s:
//! parameters, training, adopting a tokenizer.json, token files, round trips and
//! errors.

mod tokenize_support;

use ausa_artifacts::TOKENIZER_FILE;
use ausa_artifacts::{read_documents, tokens_path, Split, TokensFile};
use ausa_dag::{ParamValue, Stage};
use ausa_stages::tokenizer::{TokenizerStage, SPECIAL_TOKENS};
use tokenize_support::{
    corpus, documents, params, run, run_tokenize, run_tokenizer, run_tokenizer_with, Built,
};

#[test]
fn check_rejects_a_vocab_smaller_than_the_alphabet() {
    let p = params(&TokenizerStage, &[("vocab_size", ParamValue::Int(259))]);
    let err = TokenizerStage.check(&p).unwrap_err();
    assert!(
        err.starts_with(
            "vocab_size 259 is smaller than the byte alphabet (256) plus 4 special tokens"
        ),
        "{err}"
    );
    let p = params(&TokenizerStage, &[("vocab_size", ParamValue::Int(260))]);
    TokenizerStage.check(&p).unwrap();
}

#[test]
fn trained_tokenizer_loads_with_the_library() {
    let docs = corpus(400);
    let (tok, stats) = run_tokenizer(&docs, 600).unwrap();
    let path = tok.path().join(TOKENIZER_FILE);
    let tokenizer = tokenizers::Tokenizer::from_file(&path).unwrap();
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tokenizer.token_to_id(token), Some(id as u32), "{token}");
    }
    assert_eq!(tokenizer.get_vocab_size(true), 600);
    assert_eq!(stats["vocab_size"], 600);
    assert_eq!(stats["merges"], 600 - 260);
    assert_eq!(stats["source"], "trained");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "BPE");
    assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");
    assert_eq!(json["decoder"]["type"], "ByteLevel");
}

#[test]
fn training_uses_only_the_train_split() {
    let docs = documents(&[
        (Split::Train, "aaaa aaaa"),
        (Split::Test, "zzzz zzzz zzzz zzzz"),
    ]);
    let (tok, stats) = run_tokenizer(&docs, 300).unwrap();
    assert_eq!(
        (
            stats["train_documents"].clone(),
            stats["train_bytes"].clone()
        ),
        (1.into(), 9.into())
    );
    let json = std::fs::read_to_string(tok.path().join(TOKENIZER_FILE)).unwrap();
    assert!(json.contains("\"aa\"") && !json.contains("\"zz\""));
}

#[test]
fn training_without_train_documents_is_an_error() {
    let docs = documents(&[(Split::Validation, "only validation")]);
    let err = run_tokenizer(&docs, 300).unwrap_err().to_string();
    assert!(
        err.contains("documents.parquet") && err.contains("no train documents"),
        "{err}"
    );
}

#[test]
fn adopts_a_given_tokenizer_json_unchanged() {
    let docs = corpus(200);
    let (trained, _) = run_tokenizer(&docs, 400).unwrap();
    let given = trained.path().join(TOKENIZER_FILE);
    let p = params(&TokenizerStage, &[]);
    let out = tempfile::tempdir().unwrap();
    let stats = run(
        &TokenizerStage,
        &p,
        &[docs.input("documents")],
        &[("path", &[&given])],
        out.path(),
    )
    .unwrap();
    assert_eq!(stats["source"], "file");
    assert_eq!(stats["byte_level_bpe"], true);
    let copied = std::fs::read(out.path().join(TOKENIZER_FILE)).unwrap();
    assert_eq!(copied, std::fs::read(&given).unwrap());
}

#[test]
fn a_broken_or_eos_less_tokenizer_json_is_rejected_by_name() {
    let docs = corpus(50);
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"model\": 3}").unwrap();
    let no_eos = dir.path().join("no_eos.json");
    let (trained, _) = run_tokenizer(&docs, 300).unwrap();
    let json = std::fs::read_to_string(trained.path().join(TOKENIZER_FILE)).unwrap();
    std::fs::write(&no_eos, json.replace("</s>", "<eos>")).unwrap();
    let p = params(&TokenizerStage, &[]);
    for (file, expected) in [(&broken, "cannot load"), (&no_eos, "no `</s>` token")] {
        let out = tempfile::tempdir().unwrap();
        let err = run(
            &TokenizerStage,
            &p,
            &[docs.input("documents")],
            &[("path", &[file])],
            out.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains(expected),
            "{err}"
        );
    }
}

/// Every split's file holds its documents in order, each ending with `</s>`, and the
/// ids decode back to the text.
#[test]
fn tokenize_round_trips_every_split() {
    let docs = corpus(600);
    let (tok, _) = run_tokenizer(&docs, 800).unwrap();
    let (out, stats) = run_tokenize(&docs, &tok).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(tok.path().join(TOKENIZER_FILE)).unwrap();
    let documents = read_documents(docs.path().join("documents.parquet")).unwrap();
    let mut total = 0;
    for split in Split::ALL {
        let expected: Vec<_> = documents.iter().filter(|d| d.split == split).collect();
        assert!(!expected.is_empty(), "the corpus has {split} documents");
        let file = TokensFile::open(tokens_path(out.path(), split)).unwrap();
        assert_eq!(file.num_documents(), expected.len());
        assert_eq!(file.vocab_size(), 800);
        assert_eq!(stats["splits"][split.as_str()]["tokens"], file.num_tokens());
        for (i, doc) in expected.iter().enumerate() {
            assert_eq!(file.doc_ids()[i], doc.doc_id);
            let ids = file.document(i).unwrap().to_vec();
            assert_eq!(
                ids.last(),
                Some(&2),
                "document {} ends with </s>",
                doc.doc_id
            );
            let text = &ids[..ids.len() - 1];
            assert_eq!(
                tokenizer
                    .encode(doc.text.as_str(), false)
                    .unwrap()
                    .get_ids(),
                text
            );
            assert_eq!(tokenizer.decode(text, false).unwrap(), doc.text);
        }
        total += file.num_tokens();
    }
    assert_eq!(stats["tokens"], total);
    assert_eq!(stats["id_width"], 16);
    assert_eq!(stats["encoder"], "byte-level BPE fast path");
    assert!(stats["tokens_per_word"].as_f64().unwrap() > 1.0);
}

#[test]
fn splits_without_documents_get_no_file() {
    let docs = documents(&[
        (Split::Train, "some train text"),
        (Split::Test, "some test text"),
    ]);
    let (tok, _) = run_tokenizer(&docs, 300).unwrap();
    let (out, stats) = run_tokenize(&docs, &tok).unwrap();
    assert!(tokens_path(out.path(), Split::Train).exists());
    assert!(!tokens_path(out.path(), Split::Validation).exists());
    assert!(tokens_path(out.path(), Split::Test).exists());
    assert_eq!(stats["documents"], 2);
    assert!(stats["splits"].get("validation").is_none());
}

#[test]
fn tokenizing_an_empty_corpus_is_an_error() {
    let train = corpus(50);
    let (tok, _) = run_tokenizer(&train, 300).unwrap();
    let empty = documents(&[]);
    let err = run_tokenize(&empty, &tok).unwrap_err().to_string();
    assert!(
        err.contains("documents.parquet") && err.contains("no documents"),
        "{err}"
    );
}

#[test]
fn tokenize_needs_a_tokenizer_json() {
    let docs = corpus(20);
    let not_a_tokenizer = Built::existing(tempfile::tempdir().unwrap(), "tokenizer");
    let err = run_tokenize(&docs, &not_a_tokenizer)
        .unwrap_err()
        .to_string();
    assert!(err.contains(TOKENIZER_FILE), "{err}");
}

/// A tokenizer outside the fast path (here: prefix space) is encoded by the library.
#[test]
fn other_tokenizers_are_encoded_by_the_library() {
    let docs = corpus(100);
    let (trained, _) = run_tokenizer(&docs, 400).unwrap();
    let json = std::fs::read_to_string(trained.path().join(TOKENIZER_FILE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let given = dir.path().join("prefix.json");
    std::fs::write(
        &given,
        json.replace("\"add_prefix_space\": false", "\"add_prefix_space\": true"),
    )
    .unwrap();
    let p = params(&TokenizerStage, &[]);
    let out = tempfile::tempdir().unwrap();
    run(
        &TokenizerStage,
        &p,
        &[docs.input("documents")],
        &[("path", &[&given])],
        out.path(),
    )
    .unwrap();
    let tok = Built::existing(out, "tokenizer");
    let (tokens, stats) = run_tokenize(&docs, &tok).unwrap();
    assert_eq!(stats["encoder"], "tokenizers library");
    let mut library = tokenizers::Tokenizer::from_file(&given).unwrap();
    library.set_encode_special_tokens(true);
    let documents = read_documents(docs.path().join("documents.parquet")).unwrap();
    let file = TokensFile::open(tokens_path(tokens.path(), Split::Train)).unwrap();
    let train = documents.iter().filter(|d| d.split == Split::Train);
    for (i, doc) in train.enumerate() {
        let mut expected = library
            .encode(doc.text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        expected.push(2);
        assert_eq!(file.document(i).unwrap().to_vec(), expected);
    }
}

/// WikiText's `<unk>` markers: without `unknown_markers` each is three BPE pieces and
/// no `<unk>` id; with it, each is exactly one `<unk>` id (3), the library agrees on
/// every document, and `<pad>`, `<s>`, `</s>` stay plain text. Real WikiText-2
/// validation text when `../shared` has it (the counts are printed), else a synthetic
/// stand-in.
#[test]
#[allow(clippy::print_stderr)] // reports the counts
fn wikitext_unk_markers_become_the_unk_token() {
    let real = ausa_testkit::shared_file(
        "data/wikitext-2/valid.txt",
        "wikitext_unk_markers_become_the_unk_token (real text; synthetic used)",
    );
    let text = real
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| {
            (0..60)
                .map(|i| format!(" = T{i} = \n\n the <unk> of <unk> , </s> <s> {i} <pad> .\n\n"))
                .collect()
        });
    let articles: Vec<(Split, &str)> = text
        .split("\n = ")
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| (Split::Train, a))
        .collect();
    let docs = documents(&articles);
    let markers = ParamValue::Strings(vec!["<unk>".into()]);
    let count = |with_markers: bool| {
        let mut overrides = vec![("vocab_size", ParamValue::Int(2048))];
        if with_markers {
            overrides.push(("unknown_markers", markers.clone()));
        }
        let (tok, stats) = run_tokenizer_with(&docs, &overrides).unwrap();
        let (tokens, _) = run_tokenize(&docs, &tok).unwrap();
        let file = TokensFile::open(tokens_path(tokens.path(), Split::Train)).unwrap();
        let ids = file.ids().to_vec();
        let library = tokenizers::Tokenizer::from_file(tok.path().join(TOKENIZER_FILE)).unwrap();
        (ids, library, stats)
    };
    let markers_in_text: usize = articles
        .iter()
        .map(|(_, a)| a.matches("<unk>").count())
        .sum();
    assert!(markers_in_text > 0);
    let (before, _, _) = count(false);
    let (after, mut library, stats) = count(true);
    let unk_before = before.iter().filter(|&&i| i == 3).count();
    let unk_after = after.iter().filter(|&&i| i == 3).count();
    eprintln!(
        "<unk> markers in text: {markers_in_text}; <unk> ids without unknown_markers: \
         {unk_before} of {} tokens; with: {unk_after} of {} tokens",
        before.len(),
        after.len()
    );
    assert_eq!(unk_before, 0);
    assert_eq!(unk_after, markers_in_text);
    assert!(
        after.len() < before.len(),
        "each marker is one token, not three"
    );
    assert!(!after.iter().any(|&i| i < 2), "no <pad> <s> from text");
    let eos_count = after.iter().filter(|&&i| i == 2).count();
    assert_eq!(eos_count, articles.len(), "</s> only after each document");
    assert_eq!(stats["unknown_markers"], serde_json::json!(["<unk>"]));
    // The documented Python call, done with the Rust library: every document agrees.
    library.set_encode_special_tokens(true);
    let eos = library.token_to_id("</s>").unwrap();
    let mut want = Vec::new();
    for (_, text) in &articles {
        want.extend_from_slice(library.encode(*text, false).unwrap().get_ids());
        want.push(eos);
    }
    assert_eq!(after, want);
}

#[test]
fn unknown_markers_are_for_trained_tokenizers_only() {
    let p = params(
        &TokenizerStage,
        &[
            ("unknown_markers", ParamValue::Strings(vec!["<unk>".into()])),
            ("path", ParamValue::Paths(vec!["t.json".into()])),
        ],
    );
    let err = TokenizerStage.check(&p).unwrap_err();
    assert!(
        err.contains("unknown_markers") && err.contains("`path`"),
        "{err}"
    );
    let p = params(
        &TokenizerStage,
        &[("unknown_markers", ParamValue::Strings(vec![String::new()]))],
    );
    assert!(TokenizerStage.check(&p).unwrap_err().contains("empty"));
}
