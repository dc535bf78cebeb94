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

/// The files of an object directory (the stage's outputs; a store object's manifest
/// is the store's, not the stage's), name -> bytes.
fn stage_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("object dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .filter(|(name, _)| !name.starts_with("manifest"))
        .collect()
}

/// `--cache-mode none` and `tokens`: the stages run outside the store give the same
/// bytes as the store's objects, the detached path touches no store, stored objects
/// are read in place, and the scratch directory is gone once dropped.
#[test]
fn scratch_builds_match_the_store_byte_for_byte_and_vanish_when_dropped() {
    let (dir, pipeline) = pipeline();
    let target = Target::parse("demo:minhash,routing", &SMALL).expect("target parses");
    let resolved = pipeline.resolve(&target).expect("resolves");
    let stored = pipeline
        .ensure_built(&resolved, &BuildOptions::default(), &Silent)
        .expect("builds");
    let scratch_parent = dir.path().join("scratch");
    std::fs::create_dir(&scratch_parent).expect("scratch parent");

    // Everything detached: resolving and building never name a store.
    let detached = ausa_build::resolve_detached(&target, pipeline.registry()).expect("resolves");
    let fingerprints = |r: &ausa_build::Resolved| -> Vec<String> {
        r.plan
            .stages
            .iter()
            .map(|s| s.fingerprint.clone())
            .collect()
    };
    assert_eq!(fingerprints(&detached), fingerprints(&resolved));
    let objects_before = pipeline.store().list_objects().expect("list").len();
    let scratch = ausa_build::build_scratch(
        pipeline.registry(),
        &detached,
        None,
        &scratch_parent,
        &Silent,
    )
    .expect("builds in scratch");
    assert_eq!(
        pipeline.store().list_objects().expect("list").len(),
        objects_before,
        "nothing was published"
    );
    let all: Vec<&str> = resolved
        .plan
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(scratch.built(), all, "every stage ran, in plan order");
    assert!(scratch.path().starts_with(&scratch_parent));
    for object in stored.iter() {
        let built = scratch.dirs().stage(&object.stage).expect("in scratch");
        assert!(built.dir.starts_with(scratch.path()));
        assert_eq!(built.fingerprint, object.fingerprint);
        assert_eq!(
            stage_files(&built.dir),
            stage_files(&object.dir),
            "stage {}: scratch files differ from the store's",
            object.stage
        );
    }
    let paths = scratch.dirs().set_paths(Split::Train).expect("set paths");
    assert!(paths.banks.starts_with(scratch.path()));
    scratch
        .dirs()
        .set_artifacts(Split::Train)
        .expect("scratch set artifacts open");
    let path = scratch.path().to_path_buf();
    drop(scratch);
    assert!(!path.exists(), "the scratch dir is removed on drop");

    // Token artifacts from the store, the set stages in scratch.
    let tokens = pipeline
        .object_dirs(
            &pipeline
                .resolve(&target.with_stages(&["sequences"]))
                .expect("resolves"),
        )
        .expect("built");
    let scratch = ausa_build::build_scratch(
        pipeline.registry(),
        &resolved,
        Some(&tokens),
        &scratch_parent,
        &Silent,
    )
    .expect("builds the set stages");
    assert_eq!(scratch.built(), ["banks", "minhash", "routing"]);
    let sequences = scratch.dirs().stage("sequences").expect("planned");
    assert_eq!(
        sequences.dir,
        stored.stage("sequences").expect("built").dir,
        "read in place from the store"
    );
    for kind in ["banks", "minhash", "routing"] {
        let built = scratch.dirs().dir_of_kind(kind).expect("kind");
        let reference = stored.dir_of_kind(kind).expect("kind");
        assert_eq!(stage_files(built), stage_files(reference), "{kind}");
    }
}

/// The early-positions remedy on real routing: with `banks.leading` the positions of a
/// sequence that route to no set drop from `window - 1` to `stride - 1`; off (the
/// default, given or not) it leaves the banks fingerprint as it was.
#[test]
fn leading_windows_cut_the_positions_without_a_set_to_stride_minus_one() {
    let (_dir, pipeline) = pipeline();
    let fingerprint = |extra: &[&str]| {
        let overrides: Vec<&str> = SMALL.iter().copied().chain(extra.iter().copied()).collect();
        let target = Target::parse("demo:routing", &overrides).expect("parses");
        let resolved = pipeline.resolve(&target).expect("resolves");
        let banks = resolved
            .plan
            .stage("banks")
            .expect("planned")
            .fingerprint
            .clone();
        (resolved, banks)
    };
    let (_, default) = fingerprint(&[]);
    let (_, off) = fingerprint(&["banks.leading=false"]);
    assert_eq!(default, off, "leading = false stays out of the key");
    for (leading, window, stride) in [(false, 16, 4), (true, 16, 4), (true, 64, 32)] {
        // The stride first: each override is checked as it is applied.
        let extra = [
            format!("banks.leading={leading}"),
            format!("banks.stride={stride}"),
            format!("banks.window={window}"),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (resolved, banks) = fingerprint(&extra);
        if leading {
            assert_ne!(banks, default, "leading = true is a new fingerprint");
        }
        let dirs = pipeline
            .ensure_built(&resolved, &BuildOptions::default(), &Silent)
            .expect("builds");
        let routing = ausa_artifacts::RoutingFile::open(ausa_artifacts::routing_path(
            dirs.dir_of_kind("routing").expect("routing"),
            Split::Train,
        ))
        .expect("routing opens");
        let banks = ausa_artifacts::BanksFile::open(ausa_artifacts::banks_path(
            dirs.dir_of_kind("banks").expect("banks"),
            Split::Train,
        ))
        .expect("banks open");
        let spans = banks.spans();
        let sets = banks.sets_of(0).expect("sequence 0");
        let ends: Vec<u32> = sets.map(|s| spans[2 * s + 1]).collect();
        let table = routing.layout_of(&ends).expect("the layout of sequence 0");
        let len = table.num_tokens();
        let blind = (0..len).filter(|&t| table.candidates(t).is_empty()).count();
        let want = if leading { stride - 1 } else { window - 1 };
        assert_eq!(
            blind, want,
            "leading {leading}, window {window}, stride {stride}: {blind} of {len} positions see no set"
        );
    }
}
