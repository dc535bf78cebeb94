//! End-to-end tests of `ausa report` on generated run directories (no libtorch needed):
//! the Markdown is pinned by a snapshot, the figures and report.json are checked, bad
//! inputs are clear errors.

use std::path::Path;

use crate::common::Ctx;

/// What a generated run directory holds.
struct Fake<'a> {
    attn: &'a str,
    precision: &'a str,
    minhash_k: i64,
    seed: u64,
    seq_len: i64,
    word_ppl: f64,
    tokens_per_s: f64,
    /// `None`: a killed run (no summary.json, metrics cut mid-line).
    finished: bool,
    /// A benchmark CSV with peak VRAM.
    vram_mb: Option<f64>,
    task: &'a str,
}

impl Default for Fake<'_> {
    fn default() -> Self {
        Fake {
            attn: "ska",
            precision: "fp32",
            minhash_k: 128,
            seed: 0,
            seq_len: 256,
            word_ppl: 500.0,
            tokens_per_s: 20_000.0,
            finished: true,
            vram_mb: None,
            task: "lm",
        }
    }
}

/// Atoms-per-set buckets of `sets` sets: most near 50 of a 64-token window, a tail of
/// small sets (counts over three decades, for the log scale).
fn atom_bins(sets: u64) -> Vec<serde_json::Value> {
    let mut bins = Vec::new();
    let mut left = sets;
    for le in (20..=60u64).rev() {
        let d = le.abs_diff(50);
        let c = ((sets / 10) >> d.min(20)).max(1).min(left);
        if c > 0 {
            bins.push(serde_json::json!({"le": le, "count": c}));
            left -= c;
        }
    }
    if let Some(first) = bins.iter_mut().find(|b| b["le"] == 50) {
        first["count"] = (first["count"].as_u64().unwrap() + left).into();
    }
    bins.reverse();
    bins
}

/// Writes the exact-Delta CSV as `artifacts/examples/minhash_error.rs` prints it (k
/// rows appended, as `tests/bench/minhash_error.sh` does): an error spread that
/// shrinks with k.
fn minhash_csv(path: &Path) {
    let mut csv = String::from("k,kind,lo,hi,value\n");
    for k in [32u64, 128] {
        let spread = 256.0 / k as f64;
        csv.push_str(&format!("{k},hist,-inf,-40,0\n"));
        for b in 0..40 {
            let lo = -40.0 + 2.0 * b as f64;
            let x = (lo + 1.0) / spread;
            let count = (10_000.0 * (-x * x / 2.0).exp()).round();
            csv.push_str(&format!("{k},hist,{lo},{},{count}\n", lo + 2.0));
        }
        csv.push_str(&format!("{k},hist,40,inf,3\n"));
        for (name, v) in [
            ("mean", -0.5),
            ("mean_abs", spread),
            ("rmse", spread * 1.2),
            ("p90_abs", spread * 1.6),
        ] {
            csv.push_str(&format!("{k},stat,{name},,{v}\n"));
        }
    }
    std::fs::write(path, csv).unwrap();
}

/// Writes a run directory as `ausa train lm` lays it out (the fields the report reads).
fn fake_run(dir: &Path, f: &Fake) {
    std::fs::create_dir_all(dir).unwrap();
    let steps = 20u64;
    let meta = serde_json::json!({
        "ausa_version": "0.1.0",
        "git_revision": "0123abc",
        "libtorch": {"version_expected": "2.11.0"},
        "device": if f.vram_mb.is_some() { "cuda:0" } else { "cpu" },
        "gpu_name": f.vram_mb.map(|_| "NVIDIA H200"),
        "config": {
            "model": {"vocab": 1024, "seq_len": f.seq_len, "d_model": 64, "layers": 2, "heads": 4,
                      "ffn_mult": 4, "dropout": 0.0, "attn": f.attn, "ska_layers": [0, 1],
                      "beta": 0.0, "router_topk": 0, "adapter_rank": 0},
            "batch": 8, "accum": 1, "precision": f.precision, "seed": f.seed,
        },
        "steps": steps,
        "seeds": {"seed": f.seed},
        "ska_backend": "naive",
        "data": {"train": {"sequences": 100, "seq_len": f.seq_len, "sets_per_seq": f.seq_len / 32 - 1,
                           "window": 64, "stride": 32, "minhash_k": f.minhash_k, "router_topk": 0,
                           "histograms": {
                               "sets_per_seq": {"unit": "sequences", "bin_width": 1,
                                                "bins": [{"le": f.seq_len / 32 - 1, "count": 100}]},
                               "atoms_per_set": {"unit": "sets", "bin_width": 1,
                                                 "bins": atom_bins(100 * (f.seq_len / 32 - 1) as u64)},
                           }}},
        "run": {
            "command": ["ausa", "train", f.task, "--attn", f.attn],
            "dag": "demo",
            "overrides": [format!("minhash.minhash_k={}", f.minhash_k)],
            "artifacts": [
                {"stage": "banks", "kind": "banks", "fingerprint": format!("fp-banks-L{}", f.seq_len)},
                {"stage": "minhash", "kind": "minhash", "fingerprint": format!("fp-minhash-{}", f.minhash_k)},
            ],
        },
    });
    std::fs::write(dir.join("run_meta.json"), meta.to_string()).unwrap();
    let mut metrics = String::new();
    let logged = if f.finished { steps } else { 7 };
    for step in 1..=logged {
        let loss = 7.0 - 2.0 * (step as f64 / steps as f64) - f.seed as f64 * 0.05;
        metrics.push_str(&format!(
            "{{\"kind\":\"train\",\"step\":{step},\"loss\":{loss},\"tokens_per_s\":{}}}\n",
            f.tokens_per_s
        ));
    }
    if !f.finished {
        metrics.push_str("{\"kind\":\"train\",\"step\":8,\"lo");
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    if f.finished {
        let summary = serde_json::json!({
            "steps": steps, "first_loss": 7.0, "last_loss": 5.0,
            "valid": {"loss": 5.1, "token_ppl": f.word_ppl / 3.0, "word_ppl": f.word_ppl, "bits_per_byte": 2.0},
            "tokens_per_s": f.tokens_per_s,
            "elapsed_s": (steps as f64 * 8.0 * f.seq_len as f64) / f.tokens_per_s,
        });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    }
    if let Some(vram) = f.vram_mb {
        let steps_per_s = f.tokens_per_s / (8.0 * f.seq_len as f64);
        std::fs::write(
            dir.join("benchmark.csv"),
            format!(
                "backend,dtype,B,L,H,D,window,stride,minhash_k,router_topk,avg_sets_per_seq,avg_atoms_per_set,elapsed_ms,steps_per_s,max_vram_mb,scores_computed,throughput_per_1e6_scores\n\
                 naive,{},8,{},4,16,64,32,{},0,7.0,41.5,100,{steps_per_s},{vram},1000000,{}\n",
                f.precision, f.seq_len, f.minhash_k, steps_per_s
            ),
        )
        .unwrap();
    }
}

/// A small sweep's worth of runs: Table A (dot-naive and SKA fp32, two seeds), a
/// MinHash ablation, Table B (SDPA and SKA bf16 at two lengths, with VRAM), a killed run.
fn fixture(root: &Path) {
    for seed in [0, 1] {
        let s = seed as f64;
        fake_run(
            &root.join(format!("dot-fp32-s{seed}")),
            &Fake {
                attn: "dot-naive",
                seed,
                word_ppl: 610.0 + 10.0 * s,
                tokens_per_s: 30_000.0 + 1000.0 * s,
                ..Fake::default()
            },
        );
        for (k, ppl) in [(32, 560.0), (64, 530.0), (128, 500.0)] {
            fake_run(
                &root.join(format!("ska-fp32-k{k}-s{seed}")),
                &Fake {
                    minhash_k: k,
                    seed,
                    word_ppl: ppl + 8.0 * s,
                    tokens_per_s: 18_000.0 + 500.0 * s,
                    ..Fake::default()
                },
            );
        }
    }
    for (attn, vram) in [("sdpa", 900.0), ("ska", 700.0)] {
        for l in [256, 512] {
            fake_run(
                &root.join(format!("{attn}-bf16-L{l}")),
                &Fake {
                    attn,
                    precision: "bf16",
                    seq_len: l,
                    word_ppl: 480.0,
                    tokens_per_s: 200_000.0 * 256.0 / l as f64,
                    vram_mb: Some(vram * l as f64 / 256.0),
                    ..Fake::default()
                },
            );
        }
    }
    fake_run(
        &root.join("ska-killed"),
        &Fake {
            finished: false,
            ..Fake::default()
        },
    );
}

#[test]
fn report_of_generated_runs_writes_tables_figures_and_metadata() {
    let ctx = Ctx::new();
    let runs = ctx.path().join("sweep");
    fixture(&runs);
    minhash_csv(&runs.join("minhash_error.csv"));
    let out = ctx.path().join("rep");
    let run = ctx
        .run(&[
            "report",
            runs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])
        .ok();
    let doc = run.json();
    assert_eq!(doc["written"]["rows"], serde_json::json!([4, 4]), "{doc}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("report_fixture_md", md);
    });
    for name in [
        "loss",
        "throughput_vs_len",
        "vram_vs_len",
        "ablation_method",
        "ablation_precision",
        "ablation_minhash-k",
        "bank_histograms",
        "minhash_error",
    ] {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        assert!(png.len() > 10_000, "{name}.png is only {} bytes", png.len());
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{name}.svg");
    }
    let a = std::fs::read_to_string(out.join("table_a.csv")).unwrap();
    assert_eq!(a.lines().count(), 1 + 4, "{a}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let entries = report["runs"].as_array().unwrap();
    assert_eq!(entries.len(), 13);
    let killed = entries.iter().find(|r| r["label"] == "ska-killed").unwrap();
    assert_eq!(killed["complete"], false);
    let k32 = entries
        .iter()
        .find(|r| r["label"] == "ska-fp32-k32-s1")
        .unwrap();
    assert_eq!(k32["artifacts"][1]["fingerprint"], "fp-minhash-32");
    assert_eq!(k32["versions"]["git_revision"], "0123abc");
    // Every row of a table names the runs its numbers come from.
    let row = &report["table_a"][0];
    assert_eq!(
        row["runs"],
        serde_json::json!(["dot-fp32-s0", "dot-fp32-s1"])
    );
    assert_eq!(row["valid_word_ppl"]["mean"], 615.0);
    let b = &report["table_b"];
    assert_eq!(b[0]["max_vram_mb"]["mean"], 900.0, "{b}");
    // One bank series per data configuration (banks fingerprint): L256 and L512.
    let banks = report["bank_histograms"].as_array().unwrap();
    let fps: Vec<&str> = banks
        .iter()
        .map(|b| b["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fps, ["fp-banks-L256", "fp-banks-L512"], "{banks:?}");
    assert_eq!(banks[0]["runs"].as_array().unwrap().len(), 11);
    let figures = report["figures"].as_array().unwrap();
    for f in [
        "bank_histograms.png",
        "bank_histograms.svg",
        "minhash_error.png",
        "minhash_error.svg",
    ] {
        assert!(figures.iter().any(|x| x == f), "{f} not in {figures:?}");
    }
    assert_eq!(report["minhash_error"]["k"][1]["k"], 128);
    let svg = std::fs::read_to_string(out.join("bank_histograms.svg")).unwrap();
    for text in [
        "sets per sequence",
        "atoms per set",
        "sequences",
        "(log scale)",
        "demo L256 w64/s32",
    ] {
        assert!(svg.contains(text), "bank_histograms.svg lacks {text:?}");
    }
    let svg = std::fs::read_to_string(out.join("minhash_error.svg")).unwrap();
    assert!(
        svg.contains("k = 128 (25069 pairs, 3 outside the axis)"),
        "{svg}"
    );

    // Without the CSV the report says what would draw the MinHash figure.
    std::fs::remove_file(runs.join("minhash_error.csv")).unwrap();
    let bare = ctx.path().join("rep-bare");
    ctx.run(&[
        "report",
        runs.to_str().unwrap(),
        "--out",
        bare.to_str().unwrap(),
    ])
    .ok();
    let md = std::fs::read_to_string(bare.join("report.md")).unwrap();
    assert!(
        md.contains("not drawn: no exact-Delta data (run `tests/bench/minhash_error.sh"),
        "{md}"
    );
    assert!(!bare.join("minhash_error.png").exists());
    assert!(bare.join("bank_histograms.png").exists());
}

#[test]
fn a_malformed_minhash_csv_is_an_error_naming_the_file_and_line() {
    let ctx = Ctx::new();
    fake_run(&ctx.path().join("runs/a"), &Fake::default());
    let csv = ctx.path().join("m.csv");
    std::fs::write(
        &csv,
        "k,kind,lo,hi,value\n32,hist,-40,-38,5\n32,hist,-38,-36\n",
    )
    .unwrap();
    let run = ctx
        .run(&[
            "report",
            "runs",
            "--out",
            "rep",
            "--minhash-error",
            csv.to_str().unwrap(),
        ])
        .code(1);
    assert!(
        run.stderr
            .contains("m.csv: line 3: 4 fields, expected 5 (k,kind,lo,hi,value)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let missing = ctx
        .run(&[
            "report",
            "runs",
            "--out",
            "rep",
            "--minhash-error",
            "nope.csv",
        ])
        .code(1);
    assert!(missing.stderr.contains("nope.csv"), "{}", missing.stderr);
}

#[test]
fn report_rejects_what_is_not_a_run_and_mixed_tasks() {
    let ctx = Ctx::new();
    let empty = ctx.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    let out = ctx.path().join("rep");
    let run = ctx
        .run(&[
            "report",
            empty.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .code(2);
    assert!(
        run.stderr.contains("is not a run directory"),
        "{}",
        run.stderr
    );
    let missing = ctx.run(&["report", "nope", "--out", "rep"]).code(2);
    assert!(
        missing.stderr.contains("nope: no such file"),
        "{}",
        missing.stderr
    );
    fake_run(&ctx.path().join("mixed/a"), &Fake::default());
    fake_run(
        &ctx.path().join("mixed/b"),
        &Fake {
            task: "diffusion",
            ..Fake::default()
        },
    );
    let mixed = ctx.run(&["report", "mixed", "--out", "rep"]).code(2);
    assert!(
        mixed.stderr.contains("several tasks (diffusion: 1, lm: 1)"),
        "{}",
        mixed.stderr
    );
    std::fs::write(ctx.path().join("mixed/a/run_meta.json"), "{\"config\": 1}").unwrap();
    let bad = ctx.run(&["report", "mixed/a", "--out", "rep"]).code(1);
    assert!(
        bad.stderr.contains("run_meta.json: no config.model.attn"),
        "{}",
        bad.stderr
    );
    assert!(!out.exists(), "nothing is written for bad inputs");
}
