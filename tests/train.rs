//! End-to-end tests of `ausa train lm` (the CLI's `train` feature) on the demo DAG,
//! on CPU, with tiny models.

use crate::common::Ctx;

fn train_losses(run_dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn train_lm_on_demo_lowers_the_loss_and_records_the_artifacts() {
    let ctx = Ctx::new();
    let tiny = [
        "--d-model",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--batch",
        "8",
        "--eval-batches",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--lr",
        "3e-3",
        "--warmup",
        "2",
    ];
    for (attn, steps) in [("sdpa", "25"), ("ska", "12")] {
        let out = ctx.path().join(format!("run-{attn}"));
        let args = [
            &[
                "train",
                "lm",
                "--dag",
                "demo",
                "--precache",
                "--json",
                "--attn",
                attn,
                "--steps",
                steps,
            ][..],
            &tiny[..],
            &["--out", out.to_str().unwrap()][..],
        ]
        .concat();
        let run = ctx.run(&args).ok();
        let summary = run.json();
        assert_eq!(summary["steps"].as_u64().unwrap().to_string(), steps);
        let losses = train_losses(&out);
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(
            first > 5.0,
            "{attn}: the first loss {first} is not near ln(vocab)"
        );
        assert!(
            last < first - 0.3,
            "{attn}: loss {first} -> {last} did not fall"
        );
        assert!(
            summary["valid"]["word_ppl"].as_f64().unwrap() > 1.0,
            "{summary}"
        );
        assert!(
            summary["valid"]["bits_per_byte"].as_f64().unwrap() > 0.0,
            "{summary}"
        );
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run_meta.json")).unwrap())
                .unwrap();
        let artifacts = meta["run"]["artifacts"].as_array().unwrap();
        let kinds: Vec<&str> = artifacts
            .iter()
            .map(|a| a["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "corpus",
            "tokenize",
            "sequences",
            "banks",
            "minhash",
            "routing",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        let banks = artifacts.iter().find(|a| a["kind"] == "banks").unwrap();
        assert_eq!(
            banks["fingerprint"].as_str().unwrap(),
            ctx.fingerprint("demo:banks", &[])
        );
        assert!(
            out.join("summary.csv").is_file() && out.join("checkpoint/model.safetensors").is_file()
        );
    }
    // Artifacts of another shape are not built: the error names the build command (with the mapped flag).
    let missing = ctx
        .run(
            &[
                &[
                    "train", "lm", "--dag", "demo", "--window", "32", "--stride", "16",
                ],
                &tiny[..],
            ]
            .concat(),
        )
        .code(1);
    assert!(
        missing.stderr.contains("ausa build demo:minhash,routing"),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("--set banks.window=32"),
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("--precache"), "{}", missing.stderr);
}

#[test]
fn train_lm_rejects_bad_flags_with_usage_errors() {
    let ctx = Ctx::new();
    let bad_attn = ctx.run(&["train", "lm", "--attn", "flash"]).code(2);
    assert!(bad_attn.stderr.contains("flash"), "{}", bad_attn.stderr);
    let bad_dag = ctx
        .run(&[
            "train",
            "lm",
            "--dag",
            "no-such-dag",
            "--device",
            "cpu",
            "--precache",
        ])
        .code(2);
    assert!(bad_dag.stderr.contains("no-such-dag"), "{}", bad_dag.stderr);
    // GPU-only options on the CPU (the CUDA router; the fused LayerNorm forced on): each a
    // usage error naming the ways out, before any run directory exists.
    let gpu_only: [(&str, &[&str], &[&str]); 2] = [
        (
            "run-cuda-on-cpu",
            &["--attn", "ska", "--ska-backend", "cuda"],
            &[
                "--ska-backend cuda needs a CUDA device",
                "--ska-backend naive",
            ],
        ),
        (
            "run-fused-norm-on-cpu",
            &["--precision", "bf16", "--fused-layernorm", "on"],
            &[
                "--fused-layernorm on",
                "--device cuda",
                "--fused-layernorm auto or off",
            ],
        ),
    ];
    for (dir, flags, expected) in gpu_only {
        let out = ctx.path().join(dir);
        let mut args = vec![
            "train",
            "lm",
            "--dag",
            "demo",
            "--precache",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let run = ctx.run(&args).code(2);
        for text in expected {
            assert!(run.stderr.contains(text), "{dir}: {}", run.stderr);
        }
        assert!(!out.exists(), "{dir}: no run directory after a usage error");
    }
}

/// The SPEC's benchmark CSV fields, in order, then what `--benchmark` adds first.
const SPEC_FIELDS: [&str; 17] = [
    "backend",
    "dtype",
    "B",
    "L",
    "H",
    "D",
    "window",
    "stride",
    "minhash_k",
    "router_topk",
    "avg_sets_per_seq",
    "avg_atoms_per_set",
    "elapsed_ms",
    "steps_per_s",
    "max_vram_mb",
    "scores_computed",
    "throughput_per_1e6_scores",
];

#[test]
fn benchmark_mode_appends_spec_rows_with_the_scores_formula() {
    let ctx = Ctx::new();
    let csv = ctx.path().join("bench/results.csv");
    let bench = |attn: &str, batch: &str| {
        ctx.run(&[
            "train",
            "lm",
            "--dag",
            "demo",
            "--precache",
            "--json",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--attn",
            attn,
            "--d-model",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--batch",
            batch,
            "--benchmark",
            "--bench-warmup",
            "1",
            "--bench-iters",
            "3",
            "--benchmark-csv",
            csv.to_str().unwrap(),
        ])
        .ok()
    };
    let first = bench("sdpa", "3").json();
    bench("ska", "2");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one header and two rows:\n{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..SPEC_FIELDS.len()], &SPEC_FIELDS[..]);
    assert_eq!(header[SPEC_FIELDS.len()], "tokens_per_s");
    let rows: Vec<std::collections::HashMap<&str, &str>> = lines[1..]
        .iter()
        .map(|l| header.iter().copied().zip(l.split(',')).collect())
        .collect();
    let num = |row: &std::collections::HashMap<&str, &str>, k: &str| -> f64 {
        row[k]
            .parse()
            .unwrap_or_else(|_| panic!("{k} = {:?} is not a number", row[k]))
    };
    let (dot, ska) = (&rows[0], &rows[1]);
    assert_eq!((dot["backend"], ska["backend"]), ("sdpa", "ska-naive"));
    for row in &rows {
        assert_eq!(row["dtype"], "fp32");
        assert_eq!((row["L"], row["H"], row["D"]), ("256", "2", "16"));
        assert_eq!(row["max_vram_mb"], "", "no VRAM on the CPU");
        let ms = num(row, "elapsed_ms");
        assert!(ms > 0.0);
        assert!((num(row, "steps_per_s") - 1e3 / ms).abs() < 1e-2 * num(row, "steps_per_s"));
        let tokens = num(row, "B") * num(row, "L") * num(row, "steps_per_s");
        assert!((num(row, "tokens_per_s") - tokens).abs() <= 1e-3 * tokens + 0.1);
        let per_s = num(row, "scores_computed") * num(row, "steps_per_s") / 1e6;
        assert!((num(row, "throughput_per_1e6_scores") - per_s).abs() <= 1e-3 * per_s + 1e-3);
        let fraction = num(row, "input_fraction");
        assert!((0.0..1.0).contains(&fraction), "{fraction}");
        assert!(num(row, "loss").is_finite());
    }
    // dot attention: B * H * Lq * Lk; no set columns.
    assert_eq!(num(dot, "scores_computed"), 3.0 * 2.0 * 256.0 * 256.0);
    assert_eq!(dot["window"], "");
    assert_eq!(dot["avg_sets_per_seq"], "");
    // ska: H * sum over sequences |J_q| * |J_k|, every sequence with the demo bank's sets.
    let meta: Vec<serde_json::Value> =
        std::fs::read_to_string(ctx.path().join("bench/results.meta.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(meta.len(), 2, "one metadata line per row");
    assert_eq!(meta[1]["row"], 2);
    let sets = meta[1]["data"]["train"]["sets_per_seq"].as_f64().unwrap();
    assert_eq!(num(ska, "avg_sets_per_seq"), sets);
    assert_eq!(num(ska, "scores_computed"), 2.0 * 2.0 * sets * sets);
    assert_eq!(
        (ska["window"], ska["stride"], ska["minhash_k"]),
        ("64", "32", "128")
    );
    assert!(num(ska, "avg_atoms_per_set") > 1.0);
    assert!(meta[0]["run"]["artifacts"].as_array().unwrap().len() > 3);
    assert_eq!(first["backend"], "sdpa");
    assert!(
        !ctx.path().join("runs").exists(),
        "--benchmark writes no run directory"
    );

    // A CSV with other columns is never mixed into.
    let other = ctx.write("other.csv", "backend,elapsed_ms\nsdpa,1.0\n");
    let mixed = ctx
        .run(&[
            "train",
            "lm",
            "--dag",
            "demo",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--d-model",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--batch",
            "2",
            "--benchmark",
            "--bench-iters",
            "1",
            "--benchmark-csv",
            other.to_str().unwrap(),
        ])
        .code(2);
    assert!(mixed.stderr.contains("other columns"), "{}", mixed.stderr);
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "backend,elapsed_ms\nsdpa,1.0\n"
    );
}

#[test]
fn memory_safe_on_the_cpu_says_it_applies_only_on_cuda() {
    let ctx = Ctx::new();
    let run = ctx
        .run(&[
            "train",
            "lm",
            "--dag",
            "demo",
            "--precache",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--d-model",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--memory-safe",
            "--benchmark",
            "--bench-iters",
            "1",
        ])
        .ok();
    assert!(
        run.stderr.contains("--memory-safe applies only on CUDA"),
        "{}",
        run.stderr
    );
}

/// The tiny CPU model of the cache-mode tests: a few deterministic steps.
const TINY: [&str; 16] = [
    "--d-model",
    "32",
    "--layers",
    "2",
    "--heads",
    "2",
    "--batch",
    "4",
    "--eval-batches",
    "1",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--steps",
    "3",
];

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn meta(run_dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("run_meta.json")).unwrap()).unwrap()
}

/// Every metrics line without its timings (tokens/s and elapsed differ run to run).
fn metrics_without_timings(run_dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object_mut().unwrap();
            obj.remove("tokens_per_s");
            obj.remove("elapsed_s");
            obj.remove("steps_per_s");
            obj.remove("peak_vram_mib");
            v
        })
        .collect()
}

/// `--cache-mode full`, `tokens` and `none` read or build the same artifacts with the
/// same stage code: the same fingerprints, and the same batches, hence bit-identical
/// losses at every step for the same seed. `none` never creates or opens a store,
/// even with `--store` (or the default store) pointing at nothing.
#[test]
fn the_three_cache_modes_train_identically_and_none_touches_no_store() {
    let ctx = Ctx::new();
    let args = |mode: &str, out: &std::path::Path| -> Vec<String> {
        let mut a: Vec<String> = ["train", "lm", "--dag", "demo", "--attn", "ska", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--cache-mode".into(), mode.into()]);
        a.extend(TINY.iter().map(|s| s.to_string()));
        a.extend(["--out".into(), out.to_str().unwrap().into()]);
        a
    };
    let full = ctx.path().join("run-full");
    let mut full_args = args("full", &full);
    full_args.push("--precache".into());
    ctx.run(&strs(&full_args)).ok();
    let objects = ctx.object_files();

    let tokens = ctx.path().join("run-tokens");
    ctx.run(&strs(&args("tokens", &tokens))).ok();
    assert_eq!(
        ctx.object_files(),
        objects,
        "--cache-mode tokens adds nothing to the store"
    );

    // `none` in a directory with no store, the store flag and the default store
    // pointing at paths that do not exist.
    let bare = tempfile::tempdir().unwrap();
    let none = ctx.path().join("run-none");
    let missing_store = bare.path().join("no/such/store");
    let cache_home = bare.path().join("xdg-cache");
    let out = std::process::Command::new(crate::common::bin())
        .args(strs(&args("none", &none)))
        .arg("--store")
        .arg(&missing_store)
        .env_remove("AUSA_STORE")
        .env("XDG_CACHE_HOME", &cache_home)
        .env("HOME", bare.path())
        // Kernel tuning variables land in run_meta as read (an invalid one as its
        // default); on the CPU they change nothing (the losses are compared below).
        .env("AUSA_ROUTER_PER_TOKEN", "1")
        .env("AUSA_SET_ATTENTION_SPLIT_BLOCKS", "-5")
        .current_dir(bare.path())
        .output()
        .unwrap();
    let run: crate::common::Run = out.into();
    let run = run.ok();
    assert!(
        !bare.path().join("no").exists(),
        "--cache-mode none created the --store path"
    );
    assert!(
        !cache_home.exists(),
        "--cache-mode none created the default store"
    );
    assert_eq!(run.json()["steps"], 3);

    let reference = metrics_without_timings(&full);
    assert_eq!(reference.iter().filter(|v| v["kind"] == "train").count(), 3);
    for (mode, dir) in [("tokens", &tokens), ("none", &none)] {
        assert_eq!(
            metrics_without_timings(dir),
            reference,
            "--cache-mode {mode}: losses differ from --cache-mode full"
        );
        let (m, f) = (meta(dir), meta(&full));
        assert_eq!(m["run"]["cache_mode"], mode);
        assert_eq!(
            m["run"]["artifacts"], f["run"]["artifacts"],
            "--cache-mode {mode}: other fingerprints"
        );
    }
    let knobs = &meta(&none)["kernel_knobs"];
    assert_eq!(knobs["AUSA_ROUTER_PER_TOKEN"], 1, "{knobs}");
    assert_eq!(knobs["AUSA_SET_ATTENTION_SPLIT_BLOCKS"], 4096, "{knobs}");
    let names = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(names(knobs), names(&meta(&full)["kernel_knobs"]));
    assert_eq!(names(knobs).len(), 5, "{knobs}");
    assert_eq!(meta(&full)["run"]["built_per_run"], serde_json::json!([]));
    assert_eq!(
        meta(&tokens)["run"]["built_per_run"],
        serde_json::json!(["banks", "minhash", "routing"])
    );
    let every = meta(&none)["run"]["built_per_run"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        every,
        meta(&full)["run"]["artifacts"].as_array().unwrap().len()
    );

    // `tokens` needs the token artifacts of its configuration in the store.
    let short = ctx
        .run(
            &[
                &[
                    "train",
                    "lm",
                    "--dag",
                    "demo",
                    "--cache-mode",
                    "tokens",
                    "--seq-len",
                    "128",
                ][..],
                &TINY[..],
            ]
            .concat(),
        )
        .code(1);
    assert!(
        short
            .stderr
            .contains("ausa build demo:sequences --set sequences.seq_len=128"),
        "{}",
        short.stderr
    );
    // And `none` has nothing to precache.
    let bad = ctx
        .run(&["train", "lm", "--cache-mode", "none", "--precache"])
        .code(2);
    assert!(bad.stderr.contains("--cache-mode none"), "{}", bad.stderr);
}

/// `--early leading` maps onto `banks.leading`: the positions of a sequence without a
/// visible set drop from window - 1 to stride - 1 (counted on the routing table the
/// trainer reads), and run_meta records the remedy.
#[test]
fn early_leading_gives_positions_from_stride_minus_one_a_set() {
    let ctx = Ctx::new();
    let mut seen = Vec::new();
    for early in [None, Some("leading")] {
        let out = ctx
            .path()
            .join(format!("run-{}", early.unwrap_or("default")));
        let mut args = vec![
            "train",
            "lm",
            "--dag",
            "demo",
            "--cache-mode",
            "none",
            "--attn",
            "ska",
            "--set-features",
            "hidden",
            "--pos",
            "rotary",
            "--ska-layers",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&TINY);
        if let Some(e) = early {
            args.extend(["--early", e]);
        }
        ctx.run(&args).ok();
        let m = meta(&out);
        let train = &m["data"]["train"];
        let (window, stride, len) = (
            train["window"].as_i64().unwrap(),
            train["stride"].as_i64().unwrap(),
            train["seq_len"].as_i64().unwrap(),
        );
        let blind = train["positions_without_set"].as_i64().unwrap();
        let want = if early.is_some() {
            stride - 1
        } else {
            window - 1
        };
        assert_eq!(
            blind, want,
            "{early:?}: {blind} of {len} positions see no set"
        );
        assert_eq!(m["early_position_remedy"], early.unwrap_or("none"));
        assert_eq!(m["set_features"], "hidden");
        assert_eq!(m["pos"], "rotary");
        let losses = train_losses(&out);
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        seen.push(blind);
    }
    assert!(
        seen[1] < seen[0],
        "the remedy must reduce blind positions: {seen:?}"
    );
}

/// `--delta exact` trains on the exact set distance (demo's 1k vocabulary fits the
/// bitsets) and run_meta records it. (The losses of a 3-step run agree with the MinHash
/// run to every f32 bit: at initialization `exp(-gamma Delta) / tau` puts nearly all of
/// a set's weight on itself, so a few atoms of `Delta` error move outputs by less than
/// an ulp. The unit test `exact_delta_replaces_the_estimate_and_bounds_the_vocabulary`
/// checks the layout itself.)
#[test]
fn delta_exact_trains_and_is_recorded() {
    let ctx = Ctx::new();
    for delta in ["minhash", "exact"] {
        let out = ctx.path().join(format!("run-{delta}"));
        let mut args = vec![
            "train",
            "lm",
            "--dag",
            "demo",
            "--cache-mode",
            "none",
            "--attn",
            "ska",
            "--delta",
            delta,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&TINY);
        ctx.run(&args).ok();
        assert_eq!(meta(&out)["delta"], delta);
        let run = train_losses(&out);
        assert!(run.iter().all(|l| l.is_finite()), "{delta}: {run:?}");
    }
}

/// `ausa bench ska` on the CPU: one row per length x precision with the SPEC's fields
/// first, consistent derived columns, appended under one header; a CSV with other columns
/// is left alone; a length below the window is a usage error.
#[test]
fn bench_ska_writes_spec_rows_per_length_and_precision() {
    let ctx = Ctx::new();
    let csv = ctx.path().join("ska.csv");
    let bench = |lens: &str, candidates: &str, scope: &[&str]| {
        let mut args = vec![
            "bench",
            "ska",
            "--router-topk",
            candidates,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--lens",
            lens,
            "--tokens",
            "512",
            "--heads",
            "2",
            "--head-dim",
            "8",
            "--minhash-k",
            "16",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--precision",
            "fp32,bf16",
            "--csv",
            csv.to_str().unwrap(),
        ];
        args.extend_from_slice(scope);
        ctx.run(&args)
    };
    bench("128,256", "0", &[]).ok();
    bench("512", "0", &[]).ok();
    bench("256", "2", &[]).ok();
    // The layer without its projections.
    bench("256", "2", &["--core"]).ok();
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 11, "one header and 5 x 2 rows:\n{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..SPEC_FIELDS.len()], &SPEC_FIELDS[..]);
    for extra in [
        "candidates",
        "fwd_ms",
        "bwd_ms",
        "layout_ms",
        "model_tflops",
        "model_gbps",
        "cuda_graph",
        "scope",
        "router_forward",
    ] {
        assert!(header.contains(&extra), "{extra} missing: {header:?}");
    }
    for line in &lines[1..] {
        let row: std::collections::HashMap<&str, &str> =
            header.iter().copied().zip(line.split(',')).collect();
        let num = |k: &str| -> f64 { row[k].parse().unwrap_or_else(|_| panic!("{k}: {}", row[k])) };
        assert_eq!(row["backend"], "ska-naive");
        let (b, l, h, m) = (num("B"), num("L"), num("H"), num("avg_sets_per_seq"));
        assert_eq!(b * l, 512.0, "B * L is --tokens");
        assert_eq!(m, (l - 64.0) / 32.0 + 1.0, "full windows of 64 by 32");
        assert_eq!(num("scores_computed"), b * h * m * m);
        let (fwd, bwd, all) = (num("fwd_ms"), num("bwd_ms"), num("elapsed_ms"));
        assert!(fwd > 0.0 && all > 0.0);
        assert!((fwd + bwd - all).abs() < 1e-3, "{fwd} + {bwd} != {all}");
        assert!((num("steps_per_s") - 1e3 / all).abs() <= 1e-3 * num("steps_per_s") + 1e-3);
        assert!(num("model_tflops") > 0.0 && num("avg_atoms_per_set") > 1.0);
        assert_eq!(row["max_vram_mb"], "", "no VRAM on the CPU");
        assert_eq!(row["cuda_graph"], "0", "eager steps");
        assert_eq!(
            row["router_forward"], "tensor-ops",
            "the naive backend's router"
        );
    }
    // One column's values, row by row.
    let column = |name: &str| -> Vec<&str> {
        let at = header.iter().position(|&c| c == name).unwrap();
        lines[1..]
            .iter()
            .map(|l| l.split(',').nth(at).unwrap())
            .collect()
    };
    assert_eq!(
        column("dtype"),
        ["fp32", "bf16", "fp32", "bf16", "fp32", "bf16", "fp32", "bf16", "fp32", "bf16"]
    );
    assert_eq!(
        column("candidates"),
        ["0", "0", "0", "0", "0", "0", "2", "2", "2", "2"]
    );
    let scopes = column("scope");
    assert_eq!(&scopes[..8], ["layer"; 8]);
    assert_eq!(&scopes[8..], ["core"; 2]);
    // Usage errors (exit 2) that name the flag at fault.
    for (flag, message) in [
        ("--router-topk=-1", "--router-topk must be 0"),
        ("--cuda-graph", "--cuda-graph needs a CUDA device"),
    ] {
        let refused = ctx
            .run(&[
                "bench", "ska", "--device", "cpu", "--lens", "128", "--tokens", "128", flag,
            ])
            .code(2);
        assert!(
            refused.stderr.contains(message),
            "{flag}: {}",
            refused.stderr
        );
    }

    let other = ctx.write("other.csv", "backend,elapsed_ms\nska,1.0\n");
    let mixed = ctx
        .run(&[
            "bench",
            "ska",
            "--device",
            "cpu",
            "--lens",
            "128",
            "--tokens",
            "128",
            "--heads",
            "2",
            "--head-dim",
            "8",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--precision",
            "fp32",
            "--csv",
            other.to_str().unwrap(),
        ])
        .code(2);
    assert!(mixed.stderr.contains("other columns"), "{}", mixed.stderr);
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "backend,elapsed_ms\nska,1.0\n"
    );
    let short = ctx
        .run(&[
            "bench", "ska", "--device", "cpu", "--lens", "32", "--tokens", "64",
        ])
        .code(2);
    assert!(short.stderr.contains("--window 64"), "{}", short.stderr);
}
