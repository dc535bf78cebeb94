//! Concurrency, crashes, corruption and a full disk, against the real binary.
#![allow(clippy::print_stderr)] // a skipped check says so on stderr

use std::process::Stdio;
use std::time::Duration;

use crate::common::{make_writable, Ctx, Run};

/// A corpus big enough that a build takes a noticeable time.
const BIG: &str = "corpus.docs=60000";
/// A corpus whose build takes about two seconds.
const MEDIUM: &str = "corpus.docs=20000";

#[test]
fn concurrent_builds_build_each_artifact_once() {
    let ctx = Ctx::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            ctx.cmd(&["build", "demo", "--json", "--set", BIG])
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
}

#[test]
fn kill_9_at_random_points_never_leaves_a_visible_partial_artifact() {
    let ctx = Ctx::new();
    // Deterministic "random" kill points spread over the whole build (about 2 s long:
    // generation, statistics, hashing and publishing).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(20 + x % 2000);
        let seed = format!("corpus.seed={}", round % 3);
        let mut child = ctx
            .cmd(&["build", "demo", "--quiet", "--set", MEDIUM, "--set", &seed])
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever is visible must be complete and correct.
        ctx.run(&["verify"]).ok();
    }
    for seed in 0..3 {
        let seed = format!("corpus.seed={seed}");
        ctx.run(&["build", "demo", "--quiet", "--set", MEDIUM, "--set", &seed])
            .ok();
    }
    ctx.run(&["verify"]).ok();
    assert!(
        ctx.entries("tmp").is_empty(),
        "leftover temp dirs: {:?}",
        ctx.entries("tmp")
    );
    let gc = ctx.run(&["gc", "--json"]).ok().json();
    assert!(gc["report"]["temp_dirs"].as_array().unwrap().is_empty());
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
    // The hint repeats the user's configuration, so it rebuilds the right object.
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
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
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
