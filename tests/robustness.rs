//! Concurrency, crashes, corruption and a full disk, against the real binary.
#![allow(clippy::print_stderr)] // a skipped check says so on stderr

use std::process::Stdio;

use crate::common::{crash_at, kill_at, make_writable, partial_objects, Ctx, Run};

/// A corpus big enough that a build takes a noticeable time.
const BIG: &str = "corpus.docs=20000";
/// A corpus small enough that a whole demo build takes a second or two.
const SMALL: &str = "corpus.docs=500";

#[test]
fn concurrent_builds_build_each_artifact_once() {
    let ctx = Ctx::new();
    // Every stage execution, by any process, appends a line here (test builds only).
    let runlog = ctx.path().join("runs.log");
    let children: Vec<_> = (0..4)
        .map(|_| {
            ctx.cmd(&["build", "demo", "--json", "--set", BIG])
                .env("AUSA_TEST_RUNLOG", &runlog)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().into())
        .collect();
    let mut built = std::collections::BTreeMap::<String, usize>::new();
    let mut stages = 0;
    for run in runs {
        let report = run.ok().json()["report"]["stages"].clone();
        stages = report.as_array().unwrap().len();
        for s in report.as_array().unwrap() {
            let n = built
                .entry(s["stage"].as_str().unwrap().to_string())
                .or_default();
            *n += usize::from(s["outcome"] == "built");
        }
    }
    assert!(stages >= 3);
    assert!(
        built.values().all(|n| *n == 1),
        "each stage built by exactly one process: {built:?}"
    );
    // The outcomes alone would pass even if every process ran every stage (the atomic
    // rename makes only one "built"): count the executions themselves.
    let log = std::fs::read_to_string(&runlog).unwrap();
    let mut ran = std::collections::BTreeMap::<&str, usize>::new();
    for line in log.lines() {
        *ran.entry(line).or_default() += 1;
    }
    assert_eq!(ran.len(), stages, "every stage ran: {log}");
    assert!(
        ran.values().all(|n| *n == 1),
        "each stage ran exactly once across 4 processes: {ran:?}"
    );
    let objects = ctx.run(&["ls", "--json"]).ok().json()["objects"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(objects, stages);
    ctx.run(&["verify"]).ok();
    assert!(
        ctx.entries("tmp").is_empty(),
        "temp dirs left: {:?}",
        ctx.entries("tmp")
    );
    assert!(
        ctx.entries("locks").is_empty(),
        "locks left: {:?}",
        ctx.entries("locks")
    );
    assert!(
        ctx.entries("pins").is_empty(),
        "pins left: {:?}",
        ctx.entries("pins")
    );
}

/// The stage names of the demo DAG, in build order.
fn demo_stages(ctx: &Ctx) -> Vec<String> {
    let dry = ctx
        .run(&["build", "demo", "--dry-run", "--json"])
        .ok()
        .json();
    dry["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

/// After a crash: nothing partial is visible, everything visible verifies, and gc
/// leaves no lock, pin or temp dir behind.
#[track_caller]
fn assert_clean_after_crash(ctx: &Ctx, what: &str) {
    assert!(
        partial_objects(&ctx.store()).is_empty(),
        "{what}: partial objects visible: {:?}",
        partial_objects(&ctx.store())
    );
    if ctx.store().join("objects").is_dir() {
        ctx.run(&["verify"]).ok();
    }
}

#[track_caller]
fn assert_no_leftovers_after_gc(ctx: &Ctx) {
    ctx.run(&["gc", "--quiet"]).ok();
    for sub in ["tmp", "locks", "pins"] {
        assert!(
            ctx.entries(sub).is_empty(),
            "{sub} left after gc: {:?}",
            ctx.entries(sub)
        );
    }
}

/// kill -9 while each stage of the demo runs (the test waits until the victim is in
/// the stage, checks it is alive, then kills it), and at two steps of a publish.
#[test]
fn kill_9_in_every_stage_and_in_the_publish_never_leaves_a_partial_artifact() {
    let ctx = Ctx::new();
    let stages = demo_stages(&ctx);
    assert!(stages.len() >= 5, "{stages:?}");
    for stage in &stages {
        let point = format!("stage:{stage}");
        // One stage at a time: with two workers, the other one could build a later
        // stage while this one is held, and its kill would never land.
        let at = kill_at(
            ctx.cmd(&["build", "demo", "--jobs", "1", "--set", SMALL]),
            &point,
        );
        assert_eq!(at, point);
        assert_clean_after_crash(&ctx, &point);
    }
    ctx.run(&["build", "demo", "--quiet", "--set", SMALL]).ok();
    for (seed, point) in ["publish:synced", "publish:renamed"].iter().enumerate() {
        let seed = format!("corpus.seed={}", seed + 10);
        kill_at(
            ctx.cmd(&["build", "demo:corpus", "--set", SMALL, "--set", &seed]),
            point,
        );
        assert_clean_after_crash(&ctx, point);
        ctx.run(&[
            "build",
            "demo:corpus",
            "--quiet",
            "--set",
            SMALL,
            "--set",
            &seed,
        ])
        .ok();
    }
    ctx.run(&["verify"]).ok();
    assert_no_leftovers_after_gc(&ctx);
    // Exit 0: every stage up to date after the kills.
    ctx.run(&["status", "demo", "--set", SMALL]).ok();
}

/// A deterministic abort at every step of a publish and of a ref update: after each,
/// nothing partial is visible and the next build succeeds (and says up to date).
#[test]
fn crash_at_every_publish_and_ref_step_leaves_the_store_consistent() {
    let ctx = Ctx::new();
    let points = [
        "publish:data-written",
        "publish:synced",
        "publish:before-manifest",
        "publish:after-manifest",
        "publish:renamed",
        "ref:before",
        "ref:after",
    ];
    for (i, point) in points.iter().enumerate() {
        let seed = format!("corpus.seed={i}");
        let args = [
            "build",
            "demo:corpus",
            "--set",
            "corpus.docs=300",
            "--set",
            &seed,
        ];
        crash_at(ctx.cmd(&args), point);
        assert_clean_after_crash(&ctx, point);
        let run = ctx.run(&args).ok();
        assert!(!run.stderr.contains("corrupt"), "{point}: {}", run.stderr);
        let status = ctx.run(&[
            "status",
            "demo:corpus",
            "--set",
            "corpus.docs=300",
            "--set",
            &seed,
        ]);
        assert_eq!(status.code, 0, "{point}: {}", status.stdout);
    }
    assert_no_leftovers_after_gc(&ctx);
    let ls = ctx.run(&["ls", "--json"]).ok().json();
    assert_eq!(
        ls["objects"].as_array().unwrap().len(),
        points.len(),
        "one corpus per configuration, each still referenced: {ls}"
    );
}

fn built_demo() -> (Ctx, std::path::PathBuf) {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo", "--quiet"]).ok();
    let dir = ctx.object_dir("demo:corpus");
    (ctx, dir)
}

#[test]
fn flipped_byte_is_reported_by_verify_and_blocks_downstream_builds() {
    let (ctx, dir) = built_demo();
    let file = dir.join("documents.parquet");
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let run = ctx.run(&["verify"]).code(1);
    assert!(
        run.stderr.contains("documents.parquet") && run.stderr.contains("blake3"),
        "{}",
        run.stderr
    );
    // A stage that reads the damaged artifact refuses to, and says how to fix it.
    let run = ctx
        .run(&["build", "demo", "--set", "doc_stats.histogram_bins=9"])
        .code(1);
    assert!(run.stderr.contains("documents.parquet"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("ausa build demo:corpus --set doc_stats.histogram_bins=9 --force"),
        "{}",
        run.stderr
    );
    ctx.run(&["build", "demo:corpus", "--force", "--quiet"])
        .ok();
    ctx.run(&["verify"]).ok();
    ctx.run(&[
        "build",
        "demo",
        "--set",
        "doc_stats.histogram_bins=9",
        "--quiet",
    ])
    .ok();
}

#[test]
fn truncated_file_is_caught_even_by_a_no_op_build() {
    let (ctx, dir) = built_demo();
    let file = dir.join("documents.parquet");
    make_writable(&file);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let run = ctx.run(&["build", "demo"]).code(1);
    assert_eq!(
        run.stderr.matches("truncated").count(),
        1,
        "each failure printed once: {}",
        run.stderr
    );
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    // Quiet keeps the error.
    let quiet = ctx.run(&["build", "demo", "-q"]).code(1);
    assert!(quiet.stderr.contains("truncated"), "{}", quiet.stderr);
    let run = ctx.run(&["verify", "demo"]).code(1);
    assert!(run.stderr.contains("documents.parquet"), "{}", run.stderr);
}

#[test]
fn manifest_naming_a_path_outside_its_object_is_rejected() {
    let (ctx, dir) = built_demo();
    let manifest = dir.join("manifest.json");
    make_writable(&manifest);
    for evil in ["../../../../etc/passwd", "/etc/passwd"] {
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        m["files"][0]["name"] = serde_json::Value::from(evil);
        std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
        let run = ctx.run(&["verify"]).code(1);
        assert!(
            run.stderr.contains("leaves the object directory"),
            "{evil}: {}",
            run.stderr
        );
    }
}

#[test]
fn symlink_in_place_of_an_artifact_file_is_rejected() {
    let (ctx, dir) = built_demo();
    let file = dir.join("documents.parquet");
    make_writable(&file);
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &file).unwrap();
    let run = ctx.run(&["verify"]).code(1);
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
}

#[test]
fn tampered_manifest_key_is_detected() {
    let (ctx, dir) = built_demo();
    let manifest = dir.join("manifest.json");
    make_writable(&manifest);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["key"]["params"]["docs"] = serde_json::Value::from(1);
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let run = ctx.run(&["verify"]).code(1);
    assert!(
        run.stderr
            .contains("does not hash to the object's fingerprint"),
        "{}",
        run.stderr
    );
}

/// Runs a shell script in a private mount namespace with a 4 MiB tmpfs at `$T`.
/// Returns `None` (and says so) where mounting is not permitted.
fn with_small_disk(script: &str) -> Option<Run> {
    let probe = std::process::Command::new("unshare")
        .args(["-rm", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot create a mount namespace here (unshare -rm)");
        return None;
    }
    let full = format!(
        "set -u; T=$(mktemp -d); mount -t tmpfs -o size=4m tmpfs \"$T\" || exit 99; {script}"
    );
    let out = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", &full])
        .env("AUSA", crate::common::bin())
        .output()
        .unwrap();
    Some(out.into())
}

#[test]
fn full_disk_fails_cleanly_and_leaves_nothing() {
    let script = "\"$AUSA\" build demo --store \"$T/s\" --set corpus.docs=40000; echo \"rc=$?\"; \
                  echo \"tmp=$(ls -A \"$T/s/tmp\" | wc -l) objects=$(find \"$T/s/objects\" -mindepth 2 -maxdepth 2 | wc -l)\"";
    let Some(run) = with_small_disk(script) else {
        return;
    };
    assert!(
        run.stdout.contains("rc=1"),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("tmp=0 objects=0"), "{}", run.stdout);
    assert!(
        run.stderr.to_lowercase().contains("no space left"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: the disk is full"),
        "{}",
        run.stderr
    );
}

/// With the disk already full, the very first writes of a build (its lock and pin
/// files) fail: the same hint, nothing left behind.
#[test]
fn full_disk_at_lock_creation_gives_the_disk_full_hint() {
    let script = "\"$AUSA\" build demo:corpus --store \"$T/s\" --set corpus.docs=50 -q || exit 98; \
                  head -c 8M /dev/zero > \"$T/fill\" 2>/dev/null; \
                  \"$AUSA\" build demo:corpus --store \"$T/s\" --set corpus.docs=51; echo \"rc=$?\"; \
                  echo \"tmp=$(ls -A \"$T/s/tmp\" | wc -l) locks=$(ls -A \"$T/s/locks\" | wc -l)\"";
    let Some(run) = with_small_disk(script) else {
        return;
    };
    assert!(
        run.stdout.contains("rc=1"),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("tmp=0 locks=0"), "{}", run.stdout);
    assert!(
        run.stderr.contains("hint: the disk is full"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.to_lowercase().matches("no space left").count(),
        1,
        "printed once: {}",
        run.stderr
    );
}
