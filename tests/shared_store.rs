//! A store a whole lab shares (issue 10): gc and `--force` beside running builds, refs
//! per configuration and sweep policies, read-only and group-shared stores, crashes on
//! other hosts, what `verify` and `status` see, and store-path mistakes.
#![allow(clippy::print_stderr)] // the stress test reports its counts on stderr

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::common::{kill_at, make_writable, partial_objects, pause_at, Ctx, Run};

/// Small configurations: a whole demo build takes about a second.
const SMALL: &str = "corpus.docs=300";

/// `kind/fingerprint` -> the configurations `ls` says reference it.
fn objects(ctx: &Ctx) -> BTreeMap<String, Vec<String>> {
    let ls = ctx.run(&["ls", "--json"]).ok().json();
    ls["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let id = format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["fingerprint"].as_str().unwrap()
            );
            let configs = o["configs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            (id, configs)
        })
        .collect()
}

fn outcomes(run: &Run) -> BTreeMap<String, String> {
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

#[track_caller]
fn assert_no_leftovers(ctx: &Ctx) {
    for sub in ["tmp", "locks", "pins"] {
        assert!(
            ctx.entries(sub).is_empty(),
            "{sub} left: {:?}",
            ctx.entries(sub)
        );
    }
}

/// 4 builders with different `--set`, a gc loop (with a sweep policy that drops
/// configurations while they build) and `--force` rebuilds, for about 20 s on one
/// store: every command exits 0, nothing is ever called corrupted, the store verifies,
/// and a final gc leaves no lock, pin or temp dir.
#[test]
fn stress_builds_beside_gc_and_force_all_succeed() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo", "--quiet", "--set", SMALL]).ok();
    let deadline = Instant::now() + Duration::from_secs(14);
    let runs: Vec<(String, Run)> = std::thread::scope(|scope| {
        let ctx = &ctx;
        let mut workers = Vec::new();
        for builder in 0..4u32 {
            workers.push(scope.spawn(move || {
                let mut runs = Vec::new();
                let mut round = 0;
                while Instant::now() < deadline {
                    let seed = format!("corpus.seed={}", builder * 100 + round % 3);
                    let args = ["build", "demo", "--quiet", "--set", SMALL, "--set", &seed];
                    runs.push((args.join(" "), ctx.run(&args)));
                    round += 1;
                }
                runs
            }));
        }
        workers.push(scope.spawn(move || {
            let mut runs = Vec::new();
            let mut round = 0;
            while Instant::now() < deadline {
                let args: &[&str] = if round % 2 == 0 {
                    &["gc", "--quiet"]
                } else {
                    &["gc", "--quiet", "--keep-last", "3"]
                };
                runs.push((args.join(" "), ctx.run(args)));
                round += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            runs
        }));
        workers.push(scope.spawn(move || {
            let mut runs = Vec::new();
            while Instant::now() < deadline {
                let args = [
                    "build",
                    "demo:doc_stats",
                    "--force",
                    "--quiet",
                    "--set",
                    SMALL,
                    "--set",
                    "corpus.seed=0",
                ];
                runs.push((args.join(" "), ctx.run(&args)));
            }
            runs
        }));
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let failed: Vec<_> = runs
        .iter()
        .filter(|(_, r)| r.code != 0 || r.stderr.contains("corrupt"))
        .map(|(cmd, r)| format!("`{cmd}` exited {}: {}", r.code, r.stderr))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed:\n{}",
        failed.len(),
        runs.len(),
        failed.join("\n")
    );
    let count = |prefix: &str| runs.iter().filter(|(c, _)| c.starts_with(prefix)).count();
    assert!(count("build demo --") >= 4, "builders ran: {}", runs.len());
    assert!(count("gc") >= 4 && count("build demo:doc_stats") >= 2);
    eprintln!(
        "stress: {} builds, {} gc runs, {} forced rebuilds, 0 failures",
        count("build demo --"),
        count("gc"),
        count("build demo:doc_stats")
    );
    ctx.run(&["verify"]).ok();
    ctx.run(&["gc", "--quiet"]).ok();
    assert_no_leftovers(&ctx);
    assert!(partial_objects(&ctx.store()).is_empty());
}

/// gc keeps what any configuration references; a policy drops one configuration and
/// gc then removes exactly the objects only it used.
#[test]
fn gc_keeps_every_configuration_and_a_policy_drops_exactly_one() {
    let ctx = Ctx::new();
    let a = ["--set", "corpus.docs=300"];
    let b = [
        "--set",
        "corpus.docs=400",
        "--set",
        "doc_stats.histogram_bins=7",
    ];
    ctx.run(&["build", "demo", "--quiet"]).ok();
    for set in [&a[..], &b[..]] {
        std::thread::sleep(Duration::from_millis(50)); // distinct build times
        let mut args = vec!["build", "demo", "--quiet"];
        args.extend_from_slice(set);
        ctx.run(&args).ok();
    }
    let before = objects(&ctx);
    ctx.run(&["gc", "--quiet"]).ok();
    assert_eq!(
        objects(&ctx),
        before,
        "gc removes nothing any configuration uses"
    );
    for set in [&[][..], &a[..], &b[..]] {
        let mut args = vec!["status", "demo"];
        args.extend_from_slice(set);
        ctx.run(&args).ok(); // exit 0: every stage up to date
    }
    let labels: BTreeSet<String> = before.values().flatten().cloned().collect();
    assert_eq!(
        labels,
        BTreeSet::from([
            "demo".to_string(),
            "demo --set corpus.docs=300".to_string(),
            "demo --set corpus.docs=400 --set doc_stats.histogram_bins=7".to_string(),
        ])
    );
    // Keep the last two: the default configuration (built first) goes, and with it
    // exactly the objects no other configuration shares.
    let only_default: BTreeSet<String> = before
        .iter()
        .filter(|(_, c)| c.as_slice() == ["demo"])
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!only_default.is_empty());
    let dry = ctx
        .run(&["gc", "--keep-last", "2", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(dry["report"]["configs"], serde_json::json!(["demo"]));
    assert_eq!(objects(&ctx), before, "a dry run removes nothing");
    let gc = ctx.run(&["gc", "--keep-last", "2", "--json"]).ok().json();
    let removed: BTreeSet<String> = gc["report"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["fingerprint"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(removed, only_default);
    let after: BTreeSet<String> = objects(&ctx).into_keys().collect();
    let expected: BTreeSet<String> = before
        .keys()
        .filter(|k| !only_default.contains(*k))
        .cloned()
        .collect();
    assert_eq!(after, expected);
    let mut args = vec!["status", "demo"];
    args.extend_from_slice(&a);
    ctx.run(&args).ok();
    ctx.run(&["status", "demo"]).code(3);
    // --older-than: backdate one configuration's record by two days.
    let refs = ctx.store().join("refs/demo");
    let old = std::fs::read_dir(&refs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p.join(".config")).is_ok_and(|t| t.contains("docs=400")))
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(old.join(".config"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 86400))
        .unwrap();
    let gc = ctx.run(&["gc", "--older-than", "1d", "--json"]).ok().json();
    assert_eq!(
        gc["report"]["configs"],
        serde_json::json!(["demo --set corpus.docs=400 --set doc_stats.histogram_bins=7"])
    );
    let mut args = vec!["status", "demo"];
    args.extend_from_slice(&a);
    ctx.run(&args).ok();
    let bad = ctx.run(&["gc", "--older-than", "soon"]).code(2);
    assert!(bad.stderr.contains("30d"), "{}", bad.stderr);
}

/// gc beside a build that is inside a stage: the inputs the stage reads are pinned,
/// even after a policy dropped every configuration, and the build finishes fine.
#[test]
fn gc_never_removes_what_a_running_build_reads() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo:corpus", "--quiet", "--set", SMALL])
        .ok();
    let paused = pause_at(
        ctx.cmd(&["build", "demo:doc_stats", "--set", SMALL]),
        "stage:doc_stats",
    );
    let gc = ctx.run(&["gc", "--keep-last", "0", "--json"]).ok().json();
    let in_use = gc["report"]["in_use"].as_array().unwrap();
    assert!(
        in_use.iter().any(|o| o["kind"] == "corpus"),
        "the corpus being read is kept: {gc}"
    );
    assert!(
        gc["report"]["objects"].as_array().unwrap().is_empty(),
        "{gc}"
    );
    let run = paused.resume().ok();
    assert!(!run.stderr.contains("corrupt"), "{}", run.stderr);
    ctx.run(&["verify"]).ok();
    ctx.run(&["status", "demo:doc_stats", "--set", SMALL]).ok();
}

/// `--force` builds the replacement first: while it runs, the old object is still
/// there and up to date; a killed `--force` leaves it intact. It rebuilds only the
/// stage named unless --force-upstream says otherwise.
#[test]
fn force_rebuilds_the_named_stage_and_never_deletes_first() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo", "--quiet", "--set", SMALL]).ok();
    let paused = pause_at(
        ctx.cmd(&["build", "demo:tokens", "--force", "--set", SMALL]),
        "stage:tokens",
    );
    ctx.run(&["status", "demo:tokens", "--set", SMALL]).ok();
    ctx.run(&["build", "demo", "--quiet", "--set", SMALL]).ok();
    paused.kill();
    ctx.run(&["verify"]).ok();
    let victim = kill_at(
        ctx.cmd(&["build", "demo:tokens", "--force", "--set", SMALL]),
        "publish:synced",
    );
    assert_eq!(victim, "publish:synced");
    ctx.run(&["verify"]).ok();
    ctx.run(&["status", "demo", "--set", SMALL]).ok();
    let run = ctx
        .run(&["build", "demo:tokens", "--force", "--json", "--set", SMALL])
        .ok();
    let out = outcomes(&run);
    assert_eq!(out["tokens"], "built", "{out:?}");
    assert!(
        out.iter()
            .filter(|(s, _)| *s != "tokens")
            .all(|(_, o)| o == "up-to-date"),
        "--force rebuilds the stage named only: {out:?}"
    );
    let run = ctx
        .run(&[
            "build",
            "demo:tokens",
            "--force-upstream",
            "--json",
            "--set",
            SMALL,
        ])
        .ok();
    let out = outcomes(&run);
    assert!(out.values().all(|o| o == "built"), "{out:?}");
    ctx.run(&["verify"]).ok();
    ctx.run(&["gc", "--quiet"]).ok();
    assert_no_leftovers(&ctx);
}

/// A lock, a pin and a temp dir of a crashed build on another host (lease long
/// expired) are removed by gc; the same from a live build elsewhere are not.
#[test]
fn gc_removes_expired_locks_of_dead_hosts_and_keeps_live_ones() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo:corpus", "--quiet"]).ok();
    let store = ctx.store();
    let fp = "ab".repeat(32);
    let write = |rel: &str, owner: &str, age: Duration| -> PathBuf {
        let p = store.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!(r#"{{"owner":"{owner}","purpose":"build"}}"#)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        p
    };
    let hours = Duration::from_secs(3 * 3600);
    let dead_lock = write(
        &format!("locks/corpus.{fp}.lock"),
        "deadhost.4242.aaaa",
        hours,
    );
    let dead_pin = write(
        &format!("pins/corpus.{fp}.deadhost.4242.aaaa.0"),
        "deadhost.4242.aaaa",
        hours,
    );
    let dead_tmp = store.join(format!("tmp/deadhost.4242.aaaa.corpus.{}", &fp[..16]));
    std::fs::create_dir_all(&dead_tmp).unwrap();
    std::fs::write(dead_tmp.join("part.bin"), b"partial").unwrap();
    let live_fp = "cd".repeat(32);
    let live_lock = write(
        &format!("locks/corpus.{live_fp}.lock"),
        "livehost.77.bbbb",
        Duration::ZERO,
    );
    let live_tmp = store.join(format!("tmp/livehost.77.bbbb.corpus.{}", &live_fp[..16]));
    std::fs::create_dir_all(&live_tmp).unwrap();
    // And a real live build of this host, held inside a stage.
    let paused = pause_at(ctx.cmd(&["build", "demo:doc_stats"]), "stage:doc_stats");
    let held_before: BTreeSet<String> = ["locks", "pins", "tmp"]
        .iter()
        .flat_map(|s| ctx.entries(s).into_iter().map(move |e| format!("{s}/{e}")))
        .collect();
    let gc = ctx.run(&["gc", "--json"]).ok().json();
    assert!(
        !dead_lock.exists() && !dead_pin.exists() && !dead_tmp.exists(),
        "{gc}"
    );
    assert!(
        live_lock.exists() && live_tmp.exists(),
        "a live lock and its temp dir stay: {gc}"
    );
    let dead_files = [&dead_lock, &dead_pin, &dead_tmp];
    for entry in &held_before {
        let gone = !store.join(entry).exists();
        let dead = dead_files.contains(&&store.join(entry));
        assert_eq!(gone, dead, "{entry}: only the dead host's files go: {gc}");
    }
    assert_eq!(
        gc["report"]["stale_locks"].as_array().unwrap().len(),
        2,
        "{gc}"
    );
    paused.resume().ok();
    std::fs::remove_file(&live_lock).unwrap();
    std::fs::remove_dir(&live_tmp).unwrap();
    ctx.run(&["gc", "--quiet"]).ok();
    assert_no_leftovers(&ctx);
}

/// An object directory that is a symlink to a copy outside the store, and a manifest
/// whose statistics were edited: verify, ls, status, show and build all see them.
#[test]
fn symlinked_object_dirs_and_edited_statistics_are_detected() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo", "--quiet"]).ok();
    let corpus = ctx.object_dir("demo:corpus");
    let outside = ctx.path().join("outside-copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&corpus)
        .arg(&outside)
        .status()
        .unwrap()
        .success());
    make_writable(&corpus);
    Command::new("rm").arg("-rf").arg(&corpus).status().unwrap();
    std::os::unix::fs::symlink(&outside, &corpus).unwrap();
    let verify = ctx.run(&["verify"]).code(1);
    assert!(verify.stderr.contains("symlink"), "{}", verify.stderr);
    let ls = ctx.run(&["ls", "--json"]).ok().json();
    assert!(
        ls["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "corpus" && o["bytes"].is_null()),
        "ls lists it, as invalid: {ls}"
    );
    let status = ctx.run(&["status", "demo", "--json"]).code(4).json();
    assert_eq!(status["stages"][0]["state"], "damaged", "{status}");
    let build = ctx.run(&["build", "demo"]).code(1);
    assert!(
        build.stderr.contains("symlink") && build.stderr.contains("--force"),
        "{}",
        build.stderr
    );
    ctx.run(&["build", "demo:corpus", "--force", "--quiet"])
        .ok();
    assert!(!std::fs::symlink_metadata(&corpus)
        .unwrap()
        .file_type()
        .is_symlink());
    ctx.run(&["verify"]).ok();
    ctx.run(&["status", "demo"]).ok();

    // Edited statistics: the manifest no longer matches its digest.
    let manifest = corpus.join("manifest.json");
    make_writable(&manifest);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["stats"]["documents"] = 999_999.into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let verify = ctx.run(&["verify"]).code(1);
    assert!(
        verify.stderr.contains("manifest was edited"),
        "{}",
        verify.stderr
    );
    ctx.run(&["status", "demo"]).code(4);
    let show = ctx.run(&["show", "demo:corpus", "--json"]).ok().json();
    assert_eq!(show["state"], "damaged", "{show}");
    ctx.run(&["build", "demo:corpus", "--force", "--quiet"])
        .ok();
    ctx.run(&["status", "demo"]).ok();

    // A flipped byte keeps the size: status sees it with --verify, show too.
    let data = ctx.object_dir("demo:doc_stats");
    let file = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.to_string_lossy().contains("manifest"))
        .unwrap();
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    ctx.run(&["status", "demo"]).ok();
    let status = ctx
        .run(&["status", "demo", "--verify", "--json"])
        .code(4)
        .json();
    assert_eq!(status["stages"][1]["state"], "damaged", "{status}");
    let show = ctx
        .run(&["show", "demo:doc_stats", "--verify", "--json"])
        .ok()
        .json();
    assert_eq!(show["state"], "damaged");
    // Truncated: plain status and show already see it.
    std::fs::write(&file, &bytes[..mid]).unwrap();
    let status = ctx.run(&["status", "demo", "-q"]).code(4);
    assert!(
        status.stdout.contains("damaged"),
        "-q keeps the answer: {}",
        status.stdout
    );
    let show = ctx.run(&["show", "demo:doc_stats", "-q"]).ok();
    assert!(show.stdout.contains("damaged"), "{}", show.stdout);
}

/// Only build and pull create a store; a typo in --store is an error (exit 2) that
/// creates nothing; --store naming a file says what to pass instead.
#[test]
fn commands_that_only_read_never_create_a_store() {
    let ctx = Ctx::new();
    for args in [
        &["status", "demo"][..],
        &["ls"],
        &["verify"],
        &["gc"],
        &["show", "demo:corpus"],
        &["explain", "demo"],
        &["path", "demo:corpus"],
    ] {
        let run = ctx.run(args).code(2);
        assert!(
            run.stderr.contains("no store at"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.matches("no store at").count(), 1, "printed once");
        assert!(!ctx.store().exists(), "{args:?} created the store");
    }
    let dry = ctx.run(&["build", "demo", "--dry-run"]).ok();
    assert!(dry.stdout.contains("would build"), "{}", dry.stdout);
    assert!(!ctx.store().exists(), "a dry run writes nothing");
    let file = ctx.write("not-a-store", "x");
    let run: Run = Command::new(crate::common::bin())
        .args(["status", "demo", "--store"])
        .arg(&file)
        .output()
        .unwrap()
        .into();
    let run = run.code(2);
    assert!(
        run.stderr.contains("not a directory") && run.stderr.contains("hint"),
        "{}",
        run.stderr
    );
    ctx.run(&["build", "demo:corpus", "--quiet"]).ok();
    ctx.run(&["status", "demo:corpus"]).ok();
}

/// Runs the `ausa` binary `bin` as another user (`uid`, `gid`, umask 002) through
/// setpriv (see [`switchable`] for when that is possible).
fn as_user(bin: &Path, uid: u32, gid: u32, store: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .args(["sh", "-c", "umask 002; exec \"$0\" \"$@\""])
        .arg(bin)
        .args(args)
        .arg("--store")
        .arg(store)
        .env_remove("AUSA_STORE")
        .env("HOME", "/nonexistent")
        .env("AUSA_LOCK_LEASE_MS", "3000")
        .current_dir("/");
    cmd.output().expect("setpriv runs").into()
}

/// A copy of the binary every user can run, or `None` (the test is skipped, by name)
/// when this process cannot switch users.
fn switchable(test: &str, dir: &Path) -> Option<PathBuf> {
    // Only root can switch users (CI runs as root); elsewhere the test says it skipped.
    let me = Command::new("id").arg("-u").output().ok()?;
    let root = String::from_utf8_lossy(&me.stdout).trim() == "0";
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status();
    if !root || !probe.is_ok_and(|s| s.success()) {
        ausa_testkit::skip(
            ausa_testkit::Requirement::Namespaces,
            test,
            "cannot switch to another user here (needs root and setpriv)",
        );
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("ausa");
    std::fs::copy(crate::common::bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(bin)
}

/// The paths whose size or mtime differ between two snapshots (or exist in one only).
fn changed(
    a: &BTreeMap<PathBuf, (u64, SystemTime)>,
    b: &BTreeMap<PathBuf, (u64, SystemTime)>,
) -> Vec<PathBuf> {
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Every file under `dir` with its size and mtime: "nothing was written".
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).unwrap();
        out.insert(d.clone(), (meta.len(), meta.modified().unwrap()));
        if meta.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// A no-op build of an up-to-date store writes nothing at all (not even a ref), even
/// for its owner, so it works where the store cannot be written.
#[test]
fn no_op_build_writes_nothing() {
    let ctx = Ctx::new();
    ctx.run(&["build", "demo", "--quiet"]).ok();
    ctx.run(&["build", "demo", "--quiet", "--set", SMALL]).ok();
    let before = snapshot(&ctx.store());
    std::thread::sleep(Duration::from_millis(20)); // a write would change an mtime
    for set in [&[][..], &["--set", SMALL][..]] {
        let mut args = vec!["build", "demo", "--json"];
        args.extend_from_slice(set);
        let run = ctx.run(&args).ok();
        assert!(outcomes(&run).values().all(|o| o == "up-to-date"));
    }
    let after = snapshot(&ctx.store());
    assert!(
        changed(&before, &after).is_empty(),
        "a no-op build wrote to the store: {:?}",
        changed(&before, &after)
    );
}

/// A store the user cannot write: read commands and a no-op build work and write
/// nothing; a build that must write fails with the directory and the remedy (exit 1).
#[test]
fn read_only_store_serves_reads_and_no_op_builds() {
    let test = "read_only_store_serves_reads_and_no_op_builds";
    let ctx = Ctx::new();
    let Some(bin) = switchable(test, ctx.path()) else {
        return;
    };
    ctx.run(&["build", "demo", "--quiet"]).ok();
    let store = ctx.store();
    let before = snapshot(&store);
    let nobody = |args: &[&str]| as_user(&bin, 65534, 65534, &store, args);
    nobody(&["build", "demo"]).ok();
    nobody(&["status", "demo"]).ok();
    nobody(&["ls"]).ok();
    nobody(&["verify"]).ok();
    nobody(&["show", "demo:corpus"]).ok();
    nobody(&["explain", "demo"]).ok();
    nobody(&["path", "demo:corpus"]).ok();
    nobody(&["gc", "--dry-run"]).ok();
    assert_eq!(
        snapshot(&store),
        before,
        "reads and a no-op build wrote nothing"
    );
    let run = nobody(&["build", "demo", "--set", "corpus.docs=300"]).code(1);
    assert!(
        run.stderr.contains(&store.display().to_string())
            && run.stderr.contains("group write access"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("Permission denied").count(),
        1,
        "printed once: {}",
        run.stderr
    );
}

/// A store shared by a Unix group (top dir setgid and group-writable, umask 002):
/// each member builds, reuses the other's objects, and gc removes objects another
/// member built.
#[test]
fn group_shared_store_works_for_every_member() {
    let test = "group_shared_store_works_for_every_member";
    let ctx = Ctx::new();
    let Some(bin) = switchable(test, ctx.path()) else {
        return;
    };
    let store = ctx.store();
    std::fs::create_dir(&store).unwrap();
    let gid = 23456;
    std::os::unix::fs::chown(&store, None, Some(gid)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let alice = |args: &[&str]| as_user(&bin, 23001, gid, &store, args);
    let bob = |args: &[&str]| as_user(&bin, 23002, gid, &store, args);
    alice(&["build", "demo", "--quiet", "--set", SMALL]).ok();
    let run = bob(&["build", "demo", "--json", "--set", SMALL]).ok();
    assert!(
        outcomes(&run).values().all(|o| o == "up-to-date"),
        "{}",
        run.stdout
    );
    std::thread::sleep(Duration::from_millis(50));
    bob(&["build", "demo", "--quiet", "--set", "corpus.docs=350"]).ok();
    bob(&["build", "demo:tokens", "--force", "--quiet", "--set", SMALL]).ok();
    // Alice's configuration is the older one: bob's gc removes objects alice made.
    let gc = bob(&["gc", "--keep-last", "1", "--json"]).ok().json();
    assert!(
        !gc["report"]["objects"].as_array().unwrap().is_empty(),
        "{gc}"
    );
    alice(&["verify"]).ok();
    alice(&["status", "demo", "--set", "corpus.docs=350"]).ok();
    alice(&["gc"]).ok();
    assert_no_leftovers(&ctx);
}
