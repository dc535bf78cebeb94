//! End-to-end tests of `ausa sweep` (the CLI's `train` feature) on the demo DAG, on CPU:
//! tiny models, a few steps per run.

use std::path::Path;

use crate::common::{Ctx, Run};

/// Small demo artifacts (about a second to build) and a tiny model.
const BASE: &str = r#"
[base]
steps = 3
d-model = 16
heads = 2
batch = 4
eval-batches = 1
warmup = 1
device = "cpu"
threads = 1
set = ["corpus.docs=300", "tokenizer.vocab_size=300"]
"#;

/// A 2 x 2 grid whose SKA run with one layer fails (`--ska-layers 1` needs two layers).
fn grid_file(ctx: &Ctx, steps: u32) -> String {
    let text = format!(
        "task = \"lm\"\ndag = \"demo\"\n{}\n[grid]\nlayers = [1, 2]\nmethod = [{{ label = \"dot\", attn = \"dot-naive\" }}, {{ label = \"ska\", attn = \"ska\", ska-layers = [1] }}]\n",
        BASE.replace("steps = 3", &format!("steps = {steps}"))
    );
    ctx.write("grid.toml", &text).display().to_string()
}

fn csv_rows(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("results.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// `run -> (status, exit, attempts)` from results.csv.
fn statuses(dir: &Path) -> Vec<(String, String, String, String)> {
    let rows = csv_rows(dir);
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let (s, e, a) = (col("status"), col("exit"), col("attempts"));
    rows[1..]
        .iter()
        .map(|r| (r[0].clone(), r[s].clone(), r[e].clone(), r[a].clone()))
        .collect()
}

fn train_steps(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .count()
}

#[test]
fn a_grid_gets_one_row_per_run_a_rerun_skips_finished_runs_and_the_report_reads_it() {
    let ctx = Ctx::new();
    let file = grid_file(&ctx, 3);
    let run = ctx.run(&["sweep", &file, "--out", "sw", "--json"]).code(1);
    let sw = ctx.path().join("sw");
    let expected = [
        ("layers-1_dot", "ok", "0"),
        ("layers-1_ska", "failed", "2"),
        ("layers-2_dot", "ok", "0"),
        ("layers-2_ska", "ok", "0"),
    ];
    let got = statuses(&sw);
    assert_eq!(got.len(), 4, "{got:?}\n{}", run.stderr);
    for ((name, status, exit, attempts), (want_name, want_status, want_exit)) in
        got.iter().zip(expected)
    {
        assert_eq!(
            (
                name.as_str(),
                status.as_str(),
                exit.as_str(),
                attempts.as_str()
            ),
            (want_name, want_status, want_exit, "1"),
            "{}",
            run.stderr
        );
    }
    let failed = std::fs::read_to_string(sw.join("runs/layers-1_ska/stderr.log")).unwrap();
    assert!(failed.contains("--ska-layers names layer 1"), "{failed}");
    assert!(
        run.stderr.contains("[4/4]") && run.stderr.contains("eta"),
        "{}",
        run.stderr
    );
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["runs"].as_array().unwrap().len(), 4);
    assert_eq!(train_steps(&sw.join("runs/layers-2_ska")), 3);

    // Again: the three finished runs and the failed one are skipped.
    let again = ctx.run(&["sweep", &file, "--out", "sw"]).code(1);
    assert_eq!(
        again.stderr.matches("done earlier, skipped").count(),
        3,
        "{}",
        again.stderr
    );
    assert!(
        again
            .stderr
            .contains("failed earlier, skipped (--retry-failed"),
        "{}",
        again.stderr
    );
    assert!(!again.stderr.contains("started"), "{}", again.stderr);
    // --retry-failed runs only the failed one, which fails again: attempt 2.
    let retry = ctx
        .run(&["sweep", &file, "--out", "sw", "--retry-failed"])
        .code(1);
    assert_eq!(
        retry.stderr.matches(": started").count(),
        1,
        "{}",
        retry.stderr
    );
    let got = statuses(&sw);
    assert_eq!(got[1].1, "failed");
    assert_eq!(got[1].3, "2");
    assert_eq!(got[0].3, "1");

    // A changed sweep under the same --out is refused, naming the run.
    let changed = grid_file(&ctx, 4);
    let refused = ctx.run(&["sweep", &changed, "--out", "sw"]).code(2);
    assert!(
        refused.stderr.contains("was made with other flags"),
        "{}",
        refused.stderr
    );

    // The report: both tables' files, every figure, the artifact fingerprints.
    let rep = ctx.path().join("rep");
    let report = ctx
        .run(&["report", "sw", "--out", rep.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(
        report["written"]["runs"],
        serde_json::json!([3, 0]),
        "{report}"
    );
    assert_eq!(report["written"]["unstarted"], 1, "{report}");
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(
        md.contains("## Table A") && md.contains("## Table B"),
        "{md}"
    );
    assert!(
        md.contains("| dot-naive | 256 |") && md.contains("| ska/naive | 256 |"),
        "{md}"
    );
    assert!(
        md.contains("`layers-1_ska`: failed (exit 2) before training: error: --ska-layers"),
        "{md}"
    );
    for name in [
        "loss",
        "throughput_vs_len",
        "vram_vs_len",
        "ablation_method",
    ] {
        for ext in ["png", "svg"] {
            assert!(
                rep.join(format!("{name}.{ext}")).is_file(),
                "{name}.{ext}\n{md}"
            );
        }
    }
    assert!(rep.join("table_a.csv").is_file() && rep.join("table_b.csv").is_file());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rep.join("report.json")).unwrap()).unwrap();
    let small = [
        "--set",
        "corpus.docs=300",
        "--set",
        "tokenizer.vocab_size=300",
    ];
    let banks = ctx.fingerprint("demo:banks", &small);
    let run = &json["runs"][0];
    let fingerprints: Vec<&str> = run["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["fingerprint"].as_str().unwrap())
        .collect();
    assert!(
        fingerprints.contains(&banks.as_str()),
        "{banks} not in {fingerprints:?}"
    );

    // Bank statistics: the three runs share one data configuration, so one series,
    // and its histograms count what the banks artifact holds.
    for ext in ["png", "svg"] {
        let f = rep.join(format!("bank_histograms.{ext}"));
        assert!(
            std::fs::metadata(&f).unwrap().len() > 1000,
            "{}",
            f.display()
        );
    }
    assert!(md.contains("![bank statistics"), "{md}");
    assert!(md.contains("not drawn: no exact-Delta data"), "{md}");
    let series = json["bank_histograms"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["fingerprint"], banks.as_str());
    assert_eq!(series[0]["runs"].as_array().unwrap().len(), 3);
    let mut target = vec!["demo:banks"];
    target.extend_from_slice(&small);
    let dir = std::path::PathBuf::from(
        ctx.run(&[&["path"], &target[..]].concat())
            .ok()
            .stdout
            .trim(),
    );
    let file = ausa_artifacts::BanksFile::open(dir.join("banks-train.arrow")).unwrap();
    let mut sizes = std::collections::BTreeMap::<u64, u64>::new();
    for w in file.set_offsets().windows(2) {
        *sizes.entry(w[1] - w[0]).or_default() += 1;
    }
    let bins = |h: &serde_json::Value| -> std::collections::BTreeMap<u64, u64> {
        h[1].as_array()
            .unwrap()
            .iter()
            .map(|b| (b[0].as_u64().unwrap(), b[1].as_u64().unwrap()))
            .collect()
    };
    let sets = bins(&series[0]["sets_per_seq"]);
    assert_eq!(sets.values().sum::<u64>(), file.num_sequences() as u64);
    assert_eq!(
        sets.keys().collect::<Vec<_>>(),
        vec![&(file.num_sets() as u64 / file.num_sequences() as u64)]
    );
    assert_eq!(series[0]["atoms_per_set"][0], 1, "integer bins");
    assert_eq!(bins(&series[0]["atoms_per_set"]), sizes);
}

fn spawn(ctx: &Ctx, args: &[&str]) -> std::process::Child {
    ctx.cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_sweeps_on_one_directory_run_each_run_once() {
    let ctx = Ctx::new();
    let text = format!("task = \"lm\"\ndag = \"demo\"\n{BASE}\n[grid]\nattn = [\"dot-naive\", \"sdpa\"]\nseed = [0, 1]\n");
    let file = ctx.write("two.toml", &text).display().to_string();
    // The artifacts first, so both sweeps start their runs at once.
    ctx.run(&["sweep", &file, "--out", "sw", "--cache-only"])
        .ok();
    let a = spawn(&ctx, &["sweep", &file, "--out", "sw"]);
    let b = spawn(&ctx, &["sweep", &file, "--out", "sw"]);
    let (a, b): (Run, Run) = (
        a.wait_with_output().unwrap().into(),
        b.wait_with_output().unwrap().into(),
    );
    let (a, b) = (a.ok(), b.ok());
    let started = a.stderr.matches(": started").count() + b.stderr.matches(": started").count();
    assert_eq!(
        started, 4,
        "each run once:\n{}\n---\n{}",
        a.stderr, b.stderr
    );
    let sw = ctx.path().join("sw");
    for (name, status, exit, attempts) in statuses(&sw) {
        assert_eq!(
            (status.as_str(), exit.as_str(), attempts.as_str()),
            ("ok", "0", "1"),
            "{name}"
        );
        assert_eq!(train_steps(&sw.join("runs").join(&name)), 3, "{name}");
    }
    assert!(
        a.stderr.contains("running in another process")
            || b.stderr.contains("running in another process")
            || a.stderr.contains("done earlier")
            || b.stderr.contains("done earlier"),
        "the sweeps did not meet:\n{}\n---\n{}",
        a.stderr,
        b.stderr
    );
}

#[test]
fn sweep_dry_run_lists_runs_and_artifacts_and_writes_nothing() {
    let ctx = Ctx::new();
    let run = ctx
        .run(&["sweep", "demo-ablation", "--dry-run", "--json"])
        .ok();
    let doc = run.json();
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[0]["name"], "attn-dot-naive_minhash-k-32");
    assert!(runs.iter().all(|r| r["state"] == "pending"));
    // minhash-k 32 and 64: two artifact configurations, two runs each.
    let sets = doc["artifacts"].as_array().unwrap();
    assert_eq!(sets.len(), 2, "{doc}");
    assert!(sets
        .iter()
        .all(|s| s["runs"].as_array().unwrap().len() == 2));
    assert!(!ctx.path().join("sweeps").exists() && !ctx.store().exists());
    let human = ctx.run(&["sweep", "demo-ablation", "--dry-run"]).ok();
    assert!(human.stdout.contains("would build"), "{}", human.stdout);
    // The SPEC's grid on WikiText-2: 26 runs, offline.
    let wt2 = ctx
        .cmd(&["sweep", "wt2-ablation", "--dry-run", "--json"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let wt2: Run = wt2.into();
    let wt2 = wt2.ok().json();
    assert_eq!(wt2["runs"].as_array().unwrap().len(), 26, "{wt2}");
}

#[test]
fn bad_sweep_files_are_usage_errors() {
    let ctx = Ctx::new();
    for (body, expected) in [
        (
            "[grid]\nminhash = [32]\n",
            "`minhash` is not a flag of `ausa train lm`",
        ),
        ("[grid]\nattn = []\n", "`attn` is empty"),
        (
            "[grid]\nattn = [\"flash\"]\n",
            "run `attn-flash`: invalid value 'flash' for '--attn",
        ),
        ("[grid]\nout = [\"x\"]\n", "sets --out itself"),
    ] {
        let file = ctx.write(
            "bad.toml",
            &format!("task = \"lm\"\ndag = \"demo\"\n{body}"),
        );
        let run = ctx
            .run(&["sweep", file.to_str().unwrap(), "--dry-run"])
            .code(2);
        assert!(run.stderr.contains(expected), "{body}: {}", run.stderr);
        assert!(run.stderr.contains("bad.toml"), "{}", run.stderr);
    }
    let unknown = ctx.run(&["sweep", "no-such-sweep"]).code(2);
    assert!(
        unknown.stderr.contains("demo-ablation, wt2-ablation"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn the_gpu_gate_waits_for_an_idle_gpu_and_pins_the_run() {
    let ctx = Ctx::new();
    // A stand-in nvidia-smi: busy for its first two answers, then idle.
    let calls = ctx.path().join("calls");
    let script = ctx.write(
        "nvidia-smi",
        &format!(
            "#!/bin/sh\necho x >> {calls}\nn=$(wc -l < {calls})\nif [ \"$n\" -le 2 ]; then echo '0, 95, 70000, 10000'; else echo '0, 0, 100, 80000'; fi\n",
            calls = calls.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = ctx.write(
        "one.toml",
        &format!("task = \"lm\"\ndag = \"demo\"\n{BASE}\n[[run]]\nattn = \"dot-naive\"\n"),
    );
    let run: Run = ctx
        .cmd(&["sweep", file.to_str().unwrap(), "--out", "sw"])
        .env("AUSA_NVIDIA_SMI", &script)
        .env("AUSA_GPU_POLL_MS", "50")
        .output()
        .unwrap()
        .into();
    let run = run.ok();
    assert!(
        run.stderr.contains("waiting for GPU 0: 95% busy"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("started on GPU 0"), "{}", run.stderr);
    let rows = csv_rows(&ctx.path().join("sw"));
    let gpu = rows[0].iter().position(|c| c == "gpu").unwrap();
    assert_eq!(rows[1][gpu], "0");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ctx.path().join("sw/runs/attn-dot-naive/sweep_status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["gpu_used_after_mib"], 100);
    // Without nvidia-smi the gate is skipped, with a note.
    let cpu: Run = ctx
        .cmd(&["sweep", file.to_str().unwrap(), "--out", "sw2"])
        .env("AUSA_NVIDIA_SMI", ctx.path().join("absent"))
        .output()
        .unwrap()
        .into();
    assert!(cpu
        .ok()
        .stderr
        .contains("GPU idle gate and memory checks skipped"));
}
