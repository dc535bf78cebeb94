//! End-to-end tests of the `ausa` binary on temp stores.

use crate::common::Ctx;

fn outcomes(run: &crate::common::Run) -> Vec<(String, String)> {
    run.json()["report"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn demo_builds_then_is_a_no_op() {
    let ctx = Ctx::new();
    let first = ctx.run(&["build", "demo", "--json"]).ok();
    assert_eq!(first.json()["ok"], true);
    let built = outcomes(&first);
    assert!(built.len() >= 3, "{built:?}");
    assert!(built.iter().all(|(_, o)| o == "built"), "{built:?}");
    let second = outcomes(&ctx.run(&["build", "demo", "--json"]).ok());
    assert_eq!(second.len(), built.len());
    assert!(second.iter().all(|(_, o)| o == "up-to-date"), "{second:?}");
    let status = ctx.run(&["status", "demo"]).ok();
    assert_eq!(
        status.stdout.matches("up-to-date").count(),
        built.len(),
        "{}",
        status.stdout
    );
    let corpus = ctx.object_dir("demo:corpus");
    assert!(corpus.join("manifest.json").is_file());
    assert!(corpus.join("documents.parquet").is_file());
}

#[test]
fn build_selects_a_stage_and_its_upstreams() {
    let ctx = Ctx::new();
    let run = ctx.run(&["build", "demo:corpus", "--json"]).ok();
    assert_eq!(outcomes(&run), [("corpus".into(), "built".into())]);
    // Exit 3: something is missing (documented in `ausa status --help`).
    let status = ctx.run(&["status", "demo", "--json"]).code(3).json();
    assert_eq!(status["stages"][0]["state"], "up-to-date");
    assert_eq!(status["stages"][1]["state"], "missing");
}

#[test]
fn set_override_changes_fingerprints_and_explain_names_the_field() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo", "--quiet"]).ok();
    let before = ctx.fingerprint("demo:doc_stats", &[]);
    let after = ctx.fingerprint("demo:doc_stats", &["--set", "corpus.docs=300"]);
    assert_ne!(before, after);
    let explain = ctx
        .run(&["explain", "demo", "--set", "corpus.docs=300"])
        .ok();
    assert!(
        explain.stdout.contains("params.docs changed: 2000 -> 300"),
        "{}",
        explain.stdout
    );
    assert!(
        explain
            .stdout
            .contains("upstream stage `corpus` has a new fingerprint"),
        "{}",
        explain.stdout
    );
    let status = ctx
        .run(&["status", "demo", "--set", "corpus.docs=300", "--json"])
        .code(3)
        .json();
    assert_eq!(status["stages"][0]["state"], "stale");
    // Only the downstream parameter changes: the corpus is reused.
    let run = ctx
        .run(&[
            "build",
            "demo",
            "--set",
            "doc_stats.histogram_bins=8",
            "--json",
        ])
        .ok();
    assert_eq!(
        outcomes(&run)[..2],
        [
            ("corpus".to_string(), "up-to-date".to_string()),
            ("doc_stats".to_string(), "built".to_string())
        ]
    );
}

#[test]
fn dry_run_says_why_and_writes_nothing() {
    let ctx = Ctx::new();
    let run = ctx.run(&["build", "demo", "--dry-run"]).ok();
    assert!(
        run.stdout.contains("would build demo:corpus"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("never built in this store"),
        "{}",
        run.stdout
    );
    assert!(ctx.entries("objects").is_empty());
    assert!(ctx.entries("refs").is_empty());
}

#[test]
fn show_lists_parameters_with_defaults_and_statistics() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo", "--quiet"]).ok();
    let show = ctx.run(&["show", "demo:corpus", "--json"]).ok().json();
    assert_eq!(show["params"]["docs"]["value"], 2000);
    assert_eq!(show["params"]["docs"]["default"], false);
    assert_eq!(show["params"]["vocab_size"]["default"], true);
    assert_eq!(show["state"], "up-to-date");
    assert_eq!(show["manifest"]["stats"]["documents"], 2000);
    let text = ctx.run(&["show", "demo:corpus"]).ok().stdout;
    assert!(
        text.contains("vocab_size") && text.contains("(default)"),
        "{text}"
    );
    assert!(text.contains("documents.parquet"), "{text}");
}

#[test]
fn path_of_an_unbuilt_stage_fails_with_the_fix() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo:corpus", "--quiet"]).ok();
    let run = ctx.run(&["path", "demo:doc_stats"]).code(1);
    assert!(
        run.stderr.contains("run `ausa build demo:doc_stats`"),
        "{}",
        run.stderr
    );
    let run = ctx.run(&["path", "demo"]).code(2);
    assert!(
        run.stderr.contains("stages of `demo`: corpus, doc_stats"),
        "{}",
        run.stderr
    );
}

#[test]
fn ls_shows_refs_and_gc_removes_unreferenced_objects() {
    let ctx = Ctx::new();
    let stages = outcomes(&ctx.run(&["build", "demo", "--json"]).ok()).len();
    ctx.run(&["build", "demo", "--quiet", "--set", "corpus.docs=100"])
        .ok();
    let count = |c: &Ctx| {
        c.run(&["ls", "--json"]).ok().json()["objects"]
            .as_array()
            .unwrap()
            .len()
    };
    let ls = ctx.run(&["ls", "--json"]).ok().json();
    let objects = ls["objects"].as_array().unwrap();
    assert_eq!(
        objects.len(),
        2 * stages,
        "every stage's fingerprint changed"
    );
    let referenced = objects
        .iter()
        .filter(|o| !o["configs"].as_array().unwrap().is_empty())
        .count();
    assert_eq!(referenced, 2 * stages, "each configuration keeps its refs");
    assert!(
        objects
            .iter()
            .any(|o| o["configs"] == serde_json::json!(["demo --set corpus.docs=100"])),
        "{ls}"
    );
    ctx.run(&["gc"]).ok();
    assert_eq!(
        count(&ctx),
        2 * stages,
        "gc keeps what any configuration uses"
    );
    // A policy drops the older configuration (the default); a dry run removes nothing.
    let dry = ctx
        .run(&["gc", "--keep-last", "1", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(dry["report"]["objects"].as_array().unwrap().len(), stages);
    assert_eq!(dry["report"]["configs"], serde_json::json!(["demo"]));
    assert_eq!(count(&ctx), 2 * stages, "a dry run removes nothing");
    ctx.run(&["gc", "--keep-last", "1"]).ok();
    assert_eq!(count(&ctx), stages);
    ctx.run(&["verify"]).ok();
    let run = ctx
        .run(&["build", "demo", "--set", "corpus.docs=100", "--json"])
        .ok();
    assert!(outcomes(&run).iter().all(|(_, o)| o == "up-to-date"));
}

#[test]
fn embedded_dag_works_from_any_directory_and_file_dags_by_path() {
    let ctx = Ctx::new();
    ctx.write(
        "sub/mini.toml",
        "[stages.c]\nkind = \"corpus\"\ndocs = 50\n\n[stages.s]\nkind = \"doc_stats\"\ninputs = [\"c\"]\n",
    );
    let run = ctx.run(&["build", "sub/mini.toml", "--json"]).ok();
    assert_eq!(run.json()["report"]["dag"], "mini");
    assert!(ctx.store().join("refs/mini/default/c").is_file());
    let mut cmd = ctx.cmd(&["status", "demo"]);
    cmd.current_dir("/");
    let out: crate::common::Run = cmd.output().unwrap().into();
    assert_eq!(out.code, 3, "demo is not built: {}", out.stderr);
    assert!(out.stdout.contains("missing"), "{}", out.stdout);
}

#[test]
fn local_corpus_is_keyed_by_content_and_rebuilds_when_a_file_changes() {
    let ctx = Ctx::new();
    ctx.write("data/a.txt", "first document here\n\nsecond document\n");
    ctx.write("data/b.txt", "third document\n");
    ctx.write(
        "local.toml",
        "[stages.corpus]\nkind = \"corpus\"\nsource = \"local\"\ntrain = [\"data/*.txt\"]\n",
    );
    let run = ctx.run(&["build", "local.toml", "--json"]).ok();
    assert_eq!(outcomes(&run)[0].1, "built");
    let show = ctx
        .run(&["show", "local.toml:corpus", "--json"])
        .ok()
        .json();
    assert_eq!(show["manifest"]["stats"]["documents"], 3);
    let key = show["key"].to_string();
    assert!(
        !key.contains("a.txt") && !key.contains("data"),
        "paths must not enter keys: {key}"
    );
    ctx.write("data/b.txt", "third document, edited\n");
    let explain = ctx.run(&["explain", "local.toml"]).ok();
    assert!(
        explain.stdout.contains("external input train[1] (")
            && explain.stdout.contains("b.txt) changed content"),
        "{}",
        explain.stdout
    );
    let run = ctx.run(&["build", "local.toml", "--json"]).ok();
    assert_eq!(outcomes(&run)[0].1, "built");
    // The same content under another name and directory gives the same fingerprint.
    let fp = ctx.fingerprint("local.toml:corpus", &[]);
    std::fs::rename(ctx.path().join("data"), ctx.path().join("moved")).unwrap();
    let moved = ctx.fingerprint(
        "local.toml:corpus",
        &["--set", "corpus.train=[\"moved/*.txt\"]"],
    );
    assert_eq!(fp, moved);
}

#[test]
fn same_dag_gives_identical_bytes_whatever_the_parallelism() {
    let a = Ctx::new();
    let b = Ctx::new();
    a.cmd(&["build", "demo", "--jobs", "1", "--quiet"])
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .unwrap();
    b.cmd(&["build", "demo", "--jobs", "4", "--quiet"])
        .env("RAYON_NUM_THREADS", "3")
        .status()
        .unwrap();
    let files = |c: &Ctx| -> Vec<_> {
        c.object_files()
            .into_iter()
            .filter(|(p, _)| !p.ends_with("manifest.json") && !p.ends_with("manifest.blake3"))
            .collect()
    };
    let (fa, fb) = (files(&a), files(&b));
    for name in [
        "tokens-train.arrow",
        "banks-train.arrow",
        "minhash-train.arrow",
        "routing-train.arrow",
    ] {
        let built = fa.iter().filter(|f| f.0.ends_with(name)).count();
        assert_eq!(
            built,
            1,
            "expected one {name} among {:?}",
            fa.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((path, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{path} differs between --jobs 1 and --jobs 4");
    }
}

#[test]
fn help_and_version_work() {
    let run = crate::common::Run::from(
        std::process::Command::new(crate::common::bin())
            .arg("--help")
            .output()
            .unwrap(),
    )
    .ok();
    for cmd in [
        "build", "status", "explain", "ls", "show", "path", "verify", "gc",
    ] {
        assert!(run.stdout.contains(cmd), "--help lacks {cmd}");
    }
    let run = crate::common::Run::from(
        std::process::Command::new(crate::common::bin())
            .arg("--version")
            .output()
            .unwrap(),
    )
    .ok();
    assert!(run.stdout.starts_with("ausa "));
    let run = crate::common::Run::from(
        std::process::Command::new(crate::common::bin())
            .arg("frobnicate")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 2);
}

mod bad_input {
    use crate::common::Ctx;

    /// Builds a DAG file that must be rejected with exit 2 and nothing written.
    fn rejected(text: &str) -> String {
        let ctx = Ctx::new();
        ctx.write("bad.toml", text);
        let run = ctx.run(&["build", "bad.toml"]).code(2);
        assert!(ctx.entries("objects").is_empty() && ctx.entries("refs").is_empty());
        run.stderr
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let err = rejected("[stages.corpus]\nkind = \"corpus\"\ndocs = = 3\n");
        assert!(err.contains("bad.toml:3:"), "{err}");
        assert!(err.contains("malformed DAG file"), "{err}");
    }

    #[test]
    fn unknown_kind_lists_the_kinds() {
        let err = rejected("[stages.c]\nkind = \"corpse\"\n");
        assert!(
            err.contains("bad.toml:2:8: stage `c`: unknown stage kind `corpse`"),
            "{err}"
        );
        assert!(
            err.contains("hint: valid kinds: banks, corpus, doc_stats"),
            "{err}"
        );
    }

    #[test]
    fn unknown_parameter_lists_the_parameters() {
        let err = rejected("[stages.c]\nkind = \"corpus\"\ndoc = 3\n");
        assert!(
            err.contains("bad.toml:3:1: stage `c`: unknown parameter `doc`"),
            "{err}"
        );
        assert!(
            err.contains("valid parameters: source, docs, seed"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_expected_type() {
        let err = rejected("[stages.c]\nkind = \"corpus\"\ndocs = \"many\"\n");
        assert!(
            err.contains("bad.toml:3:8") && err.contains("parameter `docs`: expected integer"),
            "{err}"
        );
    }

    #[test]
    fn missing_upstream_and_cycles_are_rejected() {
        let err = rejected("[stages.s]\nkind = \"doc_stats\"\ninputs = [\"nothere\"]\n");
        assert!(err.contains("missing upstream stage `nothere`"), "{err}");
        let err = rejected("[stages.s]\nkind = \"doc_stats\"\ninputs = [\"t\"]\n[stages.t]\nkind = \"doc_stats\"\ninputs = [\"s\"]\n");
        assert!(err.contains("needs a stage of kind corpus"), "{err}");
    }

    #[test]
    fn unreadable_input_files_are_usage_errors() {
        let err = rejected(
            "[stages.c]\nkind = \"corpus\"\nsource = \"local\"\ntrain = [\"nope/*.txt\"]\n",
        );
        assert!(
            err.contains("parameter `train`") && err.contains("matches no input files"),
            "{err}"
        );
    }

    #[test]
    fn bad_targets_and_overrides_exit_2() {
        let ctx = Ctx::new();
        let run = ctx.run(&["build", "nodag"]).code(2);
        assert!(run.stderr.contains("embedded DAGs: demo"), "{}", run.stderr);
        let run = ctx.run(&["build", "demo:nostage"]).code(2);
        assert!(
            run.stderr.contains("stages of `demo`: corpus, doc_stats"),
            "{}",
            run.stderr
        );
        let run = ctx
            .run(&["build", "demo", "--set", "corpus.docs=-5"])
            .code(2);
        assert!(
            run.stderr.contains("--set corpus.docs=-5") && run.stderr.contains("out of range"),
            "{}",
            run.stderr
        );
        let run = ctx
            .run(&[
                "build",
                "demo",
                "--set",
                "corpus.min_words=500",
                "--set",
                "corpus.max_words=10",
            ])
            .code(2);
        assert!(run.stderr.contains("min_words"), "{}", run.stderr);
        let run = ctx.run(&["build", "demo", "--set", "nodot"]).code(2);
        assert!(run.stderr.contains("STAGE.PARAM=VALUE"), "{}", run.stderr);
        assert!(ctx.entries("objects").is_empty());
    }
}

mod subset {
    use crate::common::Ctx;

    #[test]
    fn subset_meets_the_budget_by_strata_and_passes_other_splits_through() {
        let ctx = Ctx::new();
        ctx.run(&["build", "demo", "--quiet"]).ok();
        let corpus = ctx.run(&["show", "demo:corpus", "--json"]).ok().json();
        let subset = ctx.run(&["show", "demo:subset", "--json"]).ok().json();
        let stats = &subset["manifest"]["stats"];
        let train_words = corpus["manifest"]["stats"]["splits"]["train"]["words"]
            .as_u64()
            .unwrap();
        assert_eq!(stats["train_words"].as_u64().unwrap(), train_words);
        let requested = stats["requested_words"].as_f64().unwrap();
        assert!((requested - 0.5 * train_words as f64).abs() <= 1.0);
        assert!(
            stats["relative_error"].as_f64().unwrap().abs() < 0.005,
            "{stats}"
        );
        assert_eq!(
            stats["validation_documents"],
            corpus["manifest"]["stats"]["splits"]["validation"]["documents"]
        );
        let strata = stats["strata"].as_array().unwrap();
        assert_eq!(strata.len(), 10);
        for s in strata {
            let share = s["selected_words"].as_f64().unwrap() / s["words"].as_f64().unwrap();
            assert!((share - 0.5).abs() < 0.1, "stratum off its share: {s}");
        }
    }

    #[test]
    fn swaps_bring_the_unigram_histogram_closer() {
        let ctx = Ctx::new();
        let args = [
            "--set",
            "subset.epsilon=0.00001",
            "--set",
            "subset.fraction=0.1",
        ];
        let mut build = vec!["build", "demo", "--quiet"];
        build.extend_from_slice(&args);
        ctx.run(&build).ok();
        let mut show = vec!["show", "demo:subset", "--json"];
        show.extend_from_slice(&args);
        let stats = ctx.run(&show).ok().json()["manifest"]["stats"].clone();
        assert!(stats["swaps"].as_u64().unwrap() > 0, "{stats}");
        let (before, after) = (
            stats["histogram_divergence_before_swaps"].as_f64().unwrap(),
            stats["histogram_divergence"].as_f64().unwrap(),
        );
        assert!(after < before, "{stats}");
        assert!(
            stats["relative_error"].as_f64().unwrap().abs() < 0.01,
            "{stats}"
        );
    }

    #[test]
    fn budget_larger_than_the_corpus_fails_and_publishes_nothing() {
        let ctx = Ctx::new();
        let run = ctx
            .run(&["build", "demo", "--set", "subset.words=999999999999"])
            .code(1);
        assert!(
            run.stderr.contains("larger than the train split"),
            "{}",
            run.stderr
        );
        assert!(ctx.entries("objects/subset").is_empty());
        assert!(ctx.entries("tmp").is_empty());
    }
}

mod sets {
    //! The set-artifact stages (sequences, banks, minhash, routing) in the demo DAG.

    use super::{outcomes, Ctx};

    #[test]
    fn window_override_rebuilds_only_sets_downstream() {
        let ctx = Ctx::new();
        ctx.run(&["build", "demo", "--quiet"]).ok();
        let stages = ["banks", "minhash", "routing"];
        let before: Vec<String> = stages
            .iter()
            .map(|s| ctx.fingerprint(&format!("demo:{s}"), &[]))
            .collect();
        let set = ["--set", "banks.window=32"];
        for (stage, old) in stages.iter().zip(&before) {
            assert_ne!(
                &ctx.fingerprint(&format!("demo:{stage}"), &set),
                old,
                "{stage}"
            );
        }
        let run = ctx
            .run(&["build", "demo", "--json", "--set", "banks.window=32"])
            .ok();
        for (stage, outcome) in outcomes(&run) {
            let expected = if stages.contains(&stage.as_str()) {
                "built"
            } else {
                "up-to-date"
            };
            assert_eq!(outcome, expected, "{stage}");
        }
        let banks = ctx.object_dir("demo:banks");
        assert!(banks.join("banks-train.arrow").is_file());
    }
}

/// `ausa path` with a relative `--store` printed a relative path, useless from any other
/// directory.
#[test]
fn path_is_absolute_for_a_relative_store() {
    let ctx = Ctx::new();
    let run = |args: &[&str]| -> crate::common::Run {
        std::process::Command::new(crate::common::bin())
            .args(args)
            .args(["--store", "rel-store"])
            .current_dir(ctx.path())
            .env_remove("AUSA_STORE")
            .output()
            .unwrap()
            .into()
    };
    run(&["build", "demo:corpus", "-q", "--set", "corpus.docs=50"]).ok();
    let out = run(&["path", "demo:corpus", "--set", "corpus.docs=50"]).ok();
    let path = std::path::PathBuf::from(out.stdout.trim());
    assert!(path.is_absolute(), "{}", path.display());
    assert!(path.join("manifest.json").is_file());
    assert!(path.starts_with(ctx.path().canonicalize().unwrap()) || path.starts_with(ctx.path()));
}
