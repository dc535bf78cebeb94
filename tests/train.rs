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
}
