//! Tracking end to end: the trainer's TensorBoard event files read back by the
//! `tensorboard` package's own reader, `ausa report --wandb` offline read back with
//! wandb's own protobuf schema, and `ausa sweep --wandb-yaml` loaded as YAML. The Python
//! packages come from the repository's `.venv` (`tests/pyenv.sh` installs them; without
//! them the tests skip visibly, or fail where `AUSA_REQUIRE` names them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ausa_testkit::Requirement;

use crate::common::Ctx;

/// A few CPU steps on demo with an evaluation in the middle and at the end.
fn train(ctx: &Ctx, out: &Path, extra: &[&str]) {
    let args = [
        &[
            "train",
            "lm",
            "--dag",
            "demo",
            "--precache",
            "--attn",
            "ska",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--d-model",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ][..],
        extra,
    ]
    .concat();
    ctx.run(&args).ok();
}

/// Runs a reader script of `tests/track/` and parses what it prints.
fn read_with(python: &Path, script: &str, arg: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/track")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// metrics.jsonl as `tag -> [(step, value)]`, with the tags of ausa_track::scalars.
fn jsonl_tags(run: &Path) -> BTreeMap<String, Vec<(u64, f64)>> {
    let file = ausa_track::scalars::MetricsFile::read(&run.join("metrics.jsonl")).unwrap();
    assert!(!file.truncated);
    let mut tags: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for (step, values) in file.lines {
        for (tag, v) in values {
            tags.entry(tag).or_default().push((step, v));
        }
    }
    tags
}

/// What TensorBoard's EventAccumulator read, as `tag -> [(step, value)]`.
fn tb_tags(read: &serde_json::Value) -> BTreeMap<String, Vec<(u64, f64)>> {
    read["tags"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, points)| {
            let points = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                .collect();
            (tag.clone(), points)
        })
        .collect()
}

#[test]
fn train_lm_event_files_read_by_tensorboard_hold_the_metrics_jsonl_numbers() {
    let test = "train_lm_event_files_read_by_tensorboard_hold_the_metrics_jsonl_numbers";
    let Some(python) = ausa_testkit::venv_python("tensorboard", Requirement::Tensorboard, test)
    else {
        return;
    };
    let ctx = Ctx::new();
    let run = ctx.path().join("run");
    train(&ctx, &run, &[]);
    let expected = jsonl_tags(&run);
    let read = read_with(&python, "read_tb.py", &run.join("tb"));
    assert_eq!(read["file_version"], 2.0, "{read}");
    let got = tb_tags(&read);
    // Every tag, step and value of the JSONL file, and nothing else.
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for tag in [
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "train/steps_per_s",
        "valid/loss",
        "valid/token_ppl",
        "valid/word_ppl",
        "valid/bits_per_byte",
        "test/word_ppl",
    ] {
        assert!(got.contains_key(tag), "no {tag} in {:?}", got.keys());
    }
    for (tag, points) in &expected {
        let tb = &got[tag];
        let steps: Vec<u64> = points.iter().map(|p| p.0).collect();
        assert_eq!(tb.iter().map(|p| p.0).collect::<Vec<_>>(), steps, "{tag}");
        for ((step, v), (_, t)) in points.iter().zip(tb) {
            // TensorBoard scalars are 32-bit floats.
            assert_eq!(*t as f32, *v as f32, "{tag} at step {step}");
        }
    }
    assert_eq!(expected["train/loss"].len(), 4);
    assert_eq!(
        expected["valid/loss"]
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        [2, 4]
    );

    // A writer killed mid-record leaves a truncated tail, which TensorBoard skips.
    let files: Vec<PathBuf> = std::fs::read_dir(run.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let half = ausa_track::tfevents::frame(b"a record the writer never finished");
    bytes.extend_from_slice(&half[..half.len() / 2]);
    let killed = ctx.path().join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join(files[0].file_name().unwrap()), bytes).unwrap();
    assert_eq!(tb_tags(&read_with(&python, "read_tb.py", &killed)), got);

    // --no-tensorboard writes none.
    let quiet = ctx.path().join("quiet");
    train(&ctx, &quiet, &["--no-tensorboard"]);
    assert!(!quiet.join("tb").exists());
    assert!(quiet.join("metrics.jsonl").is_file());
}

#[test]
fn report_wandb_offline_logs_every_run_with_its_config_as_wandb_reads_it() {
    let test = "report_wandb_offline_logs_every_run_with_its_config_as_wandb_reads_it";
    let Some(python) = ausa_testkit::venv_python("wandb", Requirement::Wandb, test) else {
        return;
    };
    let ctx = Ctx::new();
    let run = ctx.path().join("runs/ska");
    train(&ctx, &run, &[]);
    let report = ctx.path().join("report");
    let mut cmd = ctx.cmd(&[
        "report",
        run.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
        "--wandb",
        "--wandb-offline",
        "--wandb-project",
        "ausa-e2e",
        "--python",
        python.to_str().unwrap(),
        "--json",
    ]);
    let home = ctx.path().join("wandb-home");
    cmd.env_remove("WANDB_DIR")
        .env_remove("WANDB_MODE")
        .env("WANDB_CONFIG_DIR", &home)
        .env("WANDB_CACHE_DIR", &home)
        .env("WANDB_DATA_DIR", &home);
    let out: crate::common::Run = cmd.output().unwrap().into();
    let json = out.ok().json();
    let logged = json["wandb"].as_array().unwrap();
    assert_eq!(logged.len(), 1, "{json}");
    assert_eq!(logged[0]["steps"], 4);
    // wandb's files go beside the report.
    let dir = PathBuf::from(logged[0]["dir"].as_str().unwrap());
    assert!(dir.starts_with(&report), "{}", dir.display());
    let id = logged[0]["id"].as_str().unwrap();
    let read = read_with(
        &python,
        "read_wandb.py",
        &dir.join(format!("run-{id}.wandb")),
    );

    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run_meta.json")).unwrap()).unwrap();
    let wb_run = &read["run"];
    assert_eq!(wb_run["project"], "ausa-e2e");
    assert_eq!(wb_run["name"], "ska");
    assert_eq!(wb_run["config"]["config"], meta["config"]);
    assert_eq!(
        wb_run["config"]["run"]["artifacts"],
        meta["run"]["artifacts"]
    );

    // One history row per step: the step's training values and its evaluations.
    let history = read["history"].as_array().unwrap();
    let mut expected: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
    for (tag, points) in jsonl_tags(&run) {
        for (step, v) in points {
            expected.entry(step).or_default().insert(tag.clone(), v);
        }
    }
    assert_eq!(history.len(), expected.len());
    for (row, (step, values)) in history.iter().zip(&expected) {
        assert_eq!(row["step"].as_u64(), Some(*step));
        let got: BTreeMap<String, f64> = row["values"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect();
        // wandb keeps the JSON numbers as they were sent: exact.
        assert_eq!(&got, values, "step {step}");
    }
    assert!(expected[&4].contains_key("test/word_ppl"));
}

#[test]
fn report_wandb_without_python_or_wandb_says_what_to_install() {
    let ctx = Ctx::new();
    let run = ctx.path().join("run");
    // A run directory as the trainer leaves it (no training needed to check the error).
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("run_meta.json"),
        r#"{"config": {"model": {"attn": "sdpa", "heads": 2, "d_model": 32, "layers": 1, "seq_len": 64}, "precision": "fp32", "seed": 0, "batch": 4},
            "data": {"train": {"window": 64, "stride": 32, "minhash_k": 128, "router_topk": 0, "sets_per_seq": 2}},
            "steps": 1, "run": {"command": ["ausa", "train", "lm"]}}"#,
    )
    .unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"kind\":\"train\",\"step\":1,\"steps\":1,\"loss\":5.0}\n",
    )
    .unwrap();
    let missing = ctx.path().join("no-python");
    let out = ctx
        .run(&[
            "report",
            "run",
            "--out",
            "rep",
            "--wandb",
            "--python",
            missing.to_str().unwrap(),
        ])
        .code(1);
    assert!(out.stderr.contains("no-python"), "{}", out.stderr);
    assert!(out.stderr.contains("pip install wandb"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let bare = ctx.write("bare-python", "#!/bin/sh\nexec python3 -S \"$@\"\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ctx
        .run(&[
            "report",
            "run",
            "--out",
            "rep",
            "--wandb",
            "--python",
            bare.to_str().unwrap(),
        ])
        .code(1);
    assert!(
        out.stderr.contains("has no `wandb` package"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("-m pip install wandb"),
        "{}",
        out.stderr
    );
}

#[test]
fn sweep_wandb_yaml_is_the_grid_as_wandb_sweep_configurations() {
    let test = "sweep_wandb_yaml_is_the_grid_as_wandb_sweep_configurations";
    // PyYAML, which wandb itself loads sweep files with, comes with wandb.
    let Some(python) = ausa_testkit::venv_python("yaml", Requirement::Wandb, test) else {
        return;
    };
    let ctx = Ctx::new();
    ctx.run(&["sweep", "demo-ablation", "--wandb-yaml", "demo.yaml"])
        .ok();
    let script = ctx.write(
        "load.py",
        "import json, sys, yaml\nprint(json.dumps([yaml.safe_load(open(p)) for p in sys.argv[1:]]))\n",
    );
    let load = |files: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .args(files)
            .current_dir(ctx.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let demo = &load(&["demo.yaml"])[0];
    assert_eq!(demo["method"], "grid");
    assert_eq!(demo["program"], "ausa");
    assert_eq!(
        demo["parameters"],
        serde_json::json!({"attn": {"values": ["dot-naive", "ska"]}, "minhash-k": {"values": [32, 64]}})
    );
    let command: Vec<&str> = demo["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command[..2], ["/bin/sh", "-c"]);
    assert_eq!(command[3..], ["${program}", "${args_no_boolean_flags}"]);
    assert!(
        command[2].starts_with("\"$0\" train lm --dag demo --batch 8 --d-model 32 --device cpu"),
        "{}",
        command[2]
    );

    // What `wandb agent` would run for one grid point (without a W&B server: offline,
    // the agent's WANDB_RUN_ID set by hand, the venv's python3 first on PATH).
    let path = format!(
        "{}:{}",
        python.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = ctx.path().join("wandb-home");
    let agent = std::process::Command::new(command[0])
        .args([command[1], command[2], crate::common::bin()])
        .args(["--attn=ska", "--minhash-k=32"])
        .current_dir(ctx.path())
        .env("PATH", path)
        .env("AUSA_STORE", ctx.store())
        .env("WANDB_RUN_ID", "agentrun1")
        .env("WANDB_MODE", "offline")
        .env_remove("WANDB_DIR")
        .env("WANDB_CONFIG_DIR", &home)
        .env("WANDB_CACHE_DIR", &home)
        .env("WANDB_DATA_DIR", &home)
        .output()
        .unwrap();
    assert!(
        agent.status.success(),
        "the agent's command failed:\n{}",
        String::from_utf8_lossy(&agent.stderr)
    );
    let run = ctx.path().join("runs/agentrun1");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run_meta.json")).unwrap()).unwrap();
    assert_eq!(meta["config"]["model"]["attn"], "ska");
    assert_eq!(meta["data"]["train"]["minhash_k"], 32);
    let offline: Vec<PathBuf> = std::fs::read_dir(ctx.path().join("reports/agentrun1/wandb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        // (wandb also links `latest-run` to it)
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("offline-run-")
        })
        .filter(|p| p.join("run-agentrun1.wandb").is_file())
        .collect();
    assert_eq!(offline.len(), 1, "the agent's run id is the W&B run's");

    // The spec's ablations: seven grids, two of them over tables of flags.
    let out = ctx
        .run(&["sweep", "wt2-ablation", "--wandb-yaml", "wt2.yaml"])
        .ok();
    let files: Vec<String> = (1..=9).map(|i| format!("wt2-{i}.yaml")).collect();
    assert!(!ctx.path().join("wt2-10.yaml").exists(), "{}", out.stderr);
    let docs = load(&files.iter().map(String::as_str).collect::<Vec<_>>());
    let shape = &docs[3]["parameters"];
    assert_eq!(shape["window"], serde_json::json!({"value": 32}), "{shape}");
    assert_eq!(
        shape["seed"],
        serde_json::json!({"values": [0, 1]}),
        "{shape}"
    );
    // On stdout: the same documents, separated by `---`.
    let stdout = ctx
        .run(&["sweep", "wt2-ablation", "--wandb-yaml", "-"])
        .ok()
        .stdout;
    assert_eq!(stdout.matches("\n---\n").count(), 8);
}
