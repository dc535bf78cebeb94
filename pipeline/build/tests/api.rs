//! The build API as a trainer uses it: a target string in, opened artifacts out,
//! with no file name written by hand.

use ausa_artifacts::Split;
use ausa_build::{BuildError, Pipeline, StateKind, Target};
use ausa_engine::{BuildOptions, Silent};
use ausa_store::Store;

/// A small configuration of the demo DAG, so the test builds in seconds.
const SMALL: [&str; 2] = ["corpus.docs=300", "tokenizer.vocab_size=300"];

fn pipeline() -> (tempfile::TempDir, Pipeline) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::create(dir.path().join("store")).expect("store");
    (dir, Pipeline::new(store))
}

#[test]
fn trainer_resolves_builds_and_opens_demo_routing_without_naming_files() {
    let (_dir, pipeline) = pipeline();
    // Routing alone does not read the signatures: the trainer names both ends.
    let target = Target::parse("demo:minhash,routing", &SMALL).expect("target parses");
    let resolved = pipeline.resolve(&target).expect("resolves");
    assert!(resolved.selected().is_err(), "two stages are not one");
    let names: Vec<&str> = resolved
        .plan
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        names.contains(&"minhash") && names.contains(&"routing"),
        "{names:?}"
    );
    for stage in &resolved.plan.stages {
        for (slot, idx) in &stage.inputs {
            let up = &resolved.plan.stages[*idx];
            let spec = resolved.dag.stage(&stage.name).expect("in the DAG");
            let wanted = spec
                .inputs
                .iter()
                .find(|(s, _)| s == slot)
                .expect("slot")
                .1
                .clone();
            assert_eq!(
                up.name, wanted,
                "input `{slot}` of `{}` renumbered",
                stage.name
            );
        }
    }
    // The same stages resolved one by one have the same fingerprints.
    let single = pipeline
        .resolve(&target.with_stages(&["routing"]))
        .expect("resolves");
    assert_eq!(
        single.plan.stage("routing").expect("planned").fingerprint,
        resolved.plan.stage("routing").expect("planned").fingerprint
    );
    assert!(
        pipeline
            .states(&resolved)
            .iter()
            .all(|s| s.state == StateKind::Missing),
        "a fresh store has nothing"
    );
    match pipeline.object_dirs(&resolved) {
        Err(BuildError::NotBuilt { dag, stage, .. }) => {
            assert_eq!(dag, "demo");
            assert_eq!(stage, "corpus", "the first missing stage, upstreams first");
        }
        other => panic!("expected NotBuilt before building, got {other:?}"),
    }

    let opts = BuildOptions {
        jobs: 2,
        ..BuildOptions::default()
    };
    let dirs = pipeline
        .ensure_built(&resolved, &opts, &Silent)
        .expect("builds");
    assert!(pipeline
        .states(&resolved)
        .iter()
        .all(|s| s.state == StateKind::UpToDate));
    // Every planned stage, the target's chain only (no stage beyond routing).
    let stages: Vec<&str> = dirs.iter().map(|o| o.stage.as_str()).collect();
    assert_eq!(stages.len(), resolved.plan.stages.len());
    for o in dirs.iter() {
        assert!(o.dir.is_dir(), "{} is a directory", o.dir.display());
        assert!(o.dir.starts_with(pipeline.store().root()));
    }

    let sets = dirs
        .set_artifacts(Split::Train)
        .expect("set artifacts open");
    assert!(sets.num_sequences() > 0);
    let batch = sets.gather(&[0, sets.num_sequences() - 1]).expect("gather");
    assert_eq!(batch.seq_tokens.len(), 3);
    assert_eq!(batch.tokens.len() as u64, batch.seq_tokens[2]);
    assert_eq!(
        batch.sizes.len() * sets.minhash_k() as usize,
        batch.signatures.len()
    );
    // The validation split is there too.
    dirs.set_artifacts(Split::Validation)
        .expect("validation sets open");

    // A second resolve of the same configuration finds the same objects.
    let again = pipeline
        .object_dirs(&pipeline.resolve(&target).expect("resolves"))
        .expect("built");
    assert_eq!(
        again.dir_of_kind("banks").expect("banks"),
        dirs.dir_of_kind("banks").expect("banks")
    );
}

#[test]
fn kinds_outside_the_target_chain_are_reported_by_kind() {
    let (_dir, pipeline) = pipeline();
    let target = Target::parse("demo:routing", &SMALL).expect("target parses");
    let resolved = pipeline.resolve(&target).expect("resolves");
    let dirs = pipeline
        .ensure_built(&resolved, &BuildOptions::default(), &Silent)
        .expect("builds");
    assert!(dirs.dir_of_kind("corpus").is_ok());
    match dirs.set_paths(Split::Train) {
        Err(e @ BuildError::NoStageOfKind { .. }) => {
            assert!(e.is_usage());
            assert!(e.to_string().contains("demo:routing"), "{e}");
            assert!(e.to_string().contains("`minhash`"), "{e}");
        }
        other => panic!("expected NoStageOfKind, got {other:?}"),
    }
}

#[test]
fn target_parsing_names_what_is_wrong() {
    assert!(matches!(
        Target::parse(":banks", &[] as &[&str]),
        Err(BuildError::EmptyTarget)
    ));
    assert!(matches!(
        Target::parse("demo:", &[] as &[&str]),
        Err(BuildError::EmptyStage { .. })
    ));
    assert!(matches!(
        Target::parse("demo:a,,b", &[] as &[&str]),
        Err(BuildError::EmptyStage { .. })
    ));
    let t = Target::parse("dags/my.toml:banks", &["banks.window=32"]).expect("parses");
    assert_eq!(t.dag, "dags/my.toml");
    assert_eq!(t.stages, ["banks"]);
    assert_eq!(t.overrides.len(), 1);
    // A `:` inside a path is not a stage separator.
    let t = Target::parse("C:/dags/my.toml", &[] as &[&str]).expect("parses");
    assert_eq!(t.dag, "C:/dags/my.toml");
    assert!(t.stages.is_empty());
    assert!(matches!(
        Target::parse("demo", &["no-equals-sign"]),
        Err(BuildError::Dag(_))
    ));

    let (_dir, pipeline) = pipeline();
    let resolved = pipeline
        .resolve(&Target::parse("demo", &[] as &[&str]).expect("parses"))
        .expect("resolves");
    match resolved.selected() {
        Err(BuildError::NeedsStage { dag, stages }) => {
            assert_eq!(dag, "demo");
            assert!(stages.contains(&"routing".to_string()));
        }
        other => panic!("expected NeedsStage, got {other:?}"),
    }
    let unknown = pipeline.resolve(&Target::parse("demo:nope", &[] as &[&str]).expect("parses"));
    assert!(matches!(unknown, Err(BuildError::Dag(_))));
}

#[test]
fn a_failed_build_is_a_typed_error_with_the_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bad.txt"), b"caf\xe9 au lait\n").expect("write text");
    let dag = dir.path().join("broken.toml");
    std::fs::write(
        &dag,
        "[stages.corpus]\nkind = \"corpus\"\nsource = \"local\"\ntrain = [\"bad.txt\"]\n",
    )
    .expect("write dag");
    let pipeline = Pipeline::new(Store::create(dir.path().join("store")).expect("store"));
    let target = Target::parse(dag.to_str().expect("utf-8"), &[] as &[&str]).expect("parses");
    let resolved = pipeline.resolve(&target).expect("plans: the file exists");
    match pipeline.ensure_built(&resolved, &BuildOptions::default(), &Silent) {
        Err(e @ BuildError::BuildFailed(_)) => {
            assert!(!e.is_usage());
            let BuildError::BuildFailed(report) = &e else {
                unreachable!()
            };
            let corpus = &report.stages[0];
            match &corpus.outcome {
                ausa_build::Outcome::Failed { error, cause } => {
                    assert!(
                        error.contains("bad.txt"),
                        "the error names the file: {error}"
                    );
                    assert!(error.contains("UTF-8"), "{error}");
                    assert_eq!(*cause, ausa_engine::FailureCause::Stage);
                }
                other => panic!("expected a failed corpus stage, got {other:?}"),
            }
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
    assert!(
        pipeline.store().list_objects().expect("list").is_empty(),
        "nothing published after a failure"
    );
}
