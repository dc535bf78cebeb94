//! The wandb sidecar against the real `wandb` package (offline), and its errors when
//! Python or the package is missing.

use std::path::{Path, PathBuf};

use ausa_testkit::Requirement;
use ausa_track::wandb::{log_runs, offline_file, Options, RunToLog};
use ausa_track::TrackError;

fn run_dir(root: &Path) -> PathBuf {
    let dir = root.join("run-a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("run_meta.json"),
        r#"{"config": {"model": {"attn": "ska", "d_model": 32}, "lr": 0.003, "seed": 1}, "steps": 2}"#,
    )
    .unwrap();
    // Two steps, an evaluation at the last one, and a line cut off by a kill.
    std::fs::write(
        dir.join("metrics.jsonl"),
        concat!(
            r#"{"kind":"train","step":1,"steps":2,"epoch":0,"loss":6.5,"lr":0.0015,"grad_norm":2.0,"tokens_per_s":100.0,"steps_per_s":3.0,"elapsed_s":0.3}"#,
            "\n",
            r#"{"kind":"train","step":2,"steps":2,"epoch":0,"loss":0.0,"lr":0.003,"grad_norm":1.5,"tokens_per_s":110.0,"steps_per_s":3.5,"elapsed_s":0.6}"#,
            "\n",
            r#"{"kind":"eval","step":2,"split":"valid","loss":6.1,"positions":10,"token_ppl":445.85777,"word_ppl":null,"bits_per_byte":null}"#,
            "\n",
            r#"{"kind":"eval","step":2,"split":"te"#,
        ),
    )
    .unwrap();
    dir
}

fn options(python: PathBuf, dir: &Path) -> Options {
    Options {
        python,
        project: Some("ausa-test".into()),
        group: Some("g".into()),
        offline: true,
        dir: Some(dir.to_path_buf()),
    }
}

#[test]
fn offline_runs_read_back_with_wandbs_own_schema_hold_the_metrics() {
    let test = "offline_runs_read_back_with_wandbs_own_schema_hold_the_metrics";
    let Some(python) = ausa_testkit::venv_python("wandb", Requirement::Wandb, test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_dir(tmp.path());
    let runs = [RunToLog {
        dir: dir.clone(),
        name: "run-a".into(),
    }];
    let logged = log_runs(&runs, &options(python.clone(), tmp.path())).unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!((logged[0].steps, logged[0].truncated), (2, true));
    assert_eq!(logged[0].url, None);
    let file = offline_file(&logged[0]).expect("an offline .wandb file");
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/track/read_wandb.py");
    let out = std::process::Command::new(&python)
        .arg(reader)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &read["run"];
    assert_eq!(run["id"], logged[0].id.as_str());
    assert_eq!(run["name"], "run-a");
    assert_eq!(run["project"], "ausa-test");
    assert_eq!(run["group"], "g");
    assert_eq!(run["config"]["config"]["model"]["attn"], "ska");
    assert_eq!(run["config"]["steps"], 2);
    let history = read["history"].as_array().unwrap();
    let steps: Vec<u64> = history
        .iter()
        .map(|h| h["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2]);
    let first = &history[0]["values"];
    assert_eq!(first["train/loss"], 6.5);
    assert_eq!(first["train/steps_per_s"], 3.0);
    assert_eq!(first.as_object().unwrap().len(), 6, "{first}");
    let last = &history[1]["values"];
    // A zero is logged, evaluations at a step join that step, nulls stay out.
    assert_eq!(last["train/loss"], 0.0);
    assert_eq!(last["valid/token_ppl"], 445.85777);
    assert!(last.get("valid/word_ppl").is_none(), "{last}");
    assert!(last.get("test/loss").is_none(), "{last}");
}

#[test]
fn a_missing_python_is_an_error_naming_it_with_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_dir(tmp.path());
    let runs = [RunToLog {
        dir,
        name: "r".into(),
    }];
    let missing = tmp.path().join("no-such-python");
    let err = log_runs(&runs, &options(missing.clone(), tmp.path())).unwrap_err();
    assert!(matches!(err, TrackError::Python { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-python"), "{err}");
    assert!(err.hint().unwrap().contains("pip install wandb"));
}

#[test]
fn a_python_without_wandb_is_an_error_saying_to_install_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_dir(tmp.path());
    // A Python without site-packages cannot import wandb, wherever wandb is installed.
    let python = tmp.path().join("bare-python");
    std::fs::write(&python, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runs = [RunToLog {
        dir,
        name: "r".into(),
    }];
    let err = log_runs(&runs, &options(python.clone(), tmp.path())).unwrap_err();
    assert!(matches!(err, TrackError::NoWandb { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{} has no `wandb` package", python.display())
    );
    assert!(err.hint().unwrap().contains("-m pip install wandb"));
}
