//! Snapshots of what the binary prints: `--help` of every command, DAG and `--set`
//! errors, `status`, `explain`, `show`, `ls` and their `--json` forms. A change to
//! any of them shows up as a reviewed diff (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test --test e2e snapshots::` and read `git diff`).
//!
//! Filters mask what differs between runs and machines: temp paths, sizes, timings,
//! hosts and build times. Fingerprints stay: they are deterministic, and a snapshot
//! diff in one is a fingerprint change that someone has to mean.

use crate::common::{Ctx, Run};

/// A small demo configuration, so a test builds it in about a second.
const SMALL: [&str; 4] = [
    "--set",
    "corpus.docs=300",
    "--set",
    "tokenizer.vocab_size=300",
];

/// Exit code, stdout and stderr of one run, with run-specific parts masked.
fn render(ctx: &Ctx, run: &Run) -> String {
    let text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    // The temp dir, as given and canonicalized (macOS /private, symlinked /tmp).
    let mut text = text.replace(&ctx.path().display().to_string(), "[TMP]");
    if let Ok(canonical) = ctx.path().canonicalize() {
        text = text.replace(&canonical.display().to_string(), "[TMP]");
    }
    text
}

fn filters() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    for (pattern, replacement) in [
        (r"\b\d+(\.\d+)? (B|KiB|MiB|GiB)\b", "[SIZE]"),
        (r#""(bytes|size)": \d+"#, r#""$1": [N]"#),
        (r"\b\d+\.\d+s\b", "[SECS]"),
        (
            r#""(seconds|time|host)": ("[^"]*"|[0-9.e-]+)"#,
            r#""$1": [X]"#,
        ),
        (r"built by \S+ at \S+", "built by [HOST] at [TIME]"),
        (r"ausa \d+\.\d+\.\d+", "ausa [VERSION]"),
    ] {
        settings.add_filter(pattern, replacement);
    }
    settings
}

/// Runs `ausa ARGS` in `ctx` with a fixed help width.
fn run(ctx: &Ctx, args: &[&str]) -> Run {
    ctx.cmd(args)
        .env("COLUMNS", "100")
        .env_remove("AUSA_REMOTE")
        .output()
        .expect("ausa runs")
        .into()
}

macro_rules! snap {
    ($name:expr, $ctx:expr, $run:expr) => {{
        let text = render($ctx, &$run);
        filters().bind(|| insta::assert_snapshot!($name, text));
    }};
}

#[test]
fn help_of_every_command() {
    let ctx = Ctx::new();
    // The `train` command exists only with the CLI's `train` feature (libtorch).
    let top = if cfg!(feature = "train") {
        "help_with_train"
    } else {
        "help"
    };
    snap!(top, &ctx, run(&ctx, &["--help"]));
    let mut commands = vec![
        "build", "push", "pull", "status", "explain", "show", "path", "ls", "verify", "gc",
        "report",
    ];
    if cfg!(feature = "train") {
        commands.push("train");
        commands.push("sweep");
        commands.push("bench");
    }
    for command in commands {
        snap!(
            format!("help_{command}"),
            &ctx,
            run(&ctx, &[command, "--help"])
        );
    }
    if cfg!(feature = "train") {
        snap!("help_train_lm", &ctx, run(&ctx, &["train", "lm", "--help"]));
        snap!(
            "help_bench_ska",
            &ctx,
            run(&ctx, &["bench", "ska", "--help"])
        );
    }
}

#[test]
fn dag_and_set_errors() {
    let ctx = Ctx::new();
    // Read commands need a store (only build and pull create one): an empty one.
    std::fs::create_dir_all(ctx.store().join("objects")).unwrap();
    let cases: [(&str, &[&str]); 7] = [
        ("error_unknown_dag", &["status", "no-such-dag"]),
        ("error_unknown_stage", &["status", "demo:nope"]),
        (
            "error_set_unknown_param",
            &["status", "demo", "--set", "corpus.nope=1"],
        ),
        (
            "error_set_wrong_type",
            &["status", "demo", "--set", "corpus.docs=many"],
        ),
        (
            "error_set_out_of_range",
            &["status", "demo", "--set", "corpus.docs=0"],
        ),
        ("error_set_syntax", &["status", "demo", "--set", "docs"]),
        ("error_show_needs_a_stage", &["show", "demo"]),
    ];
    for (name, args) in cases {
        snap!(name, &ctx, run(&ctx, args));
    }
    // Flags a command does not use are rejected, not ignored.
    snap!(
        "error_ls_remote",
        &ctx,
        run(&ctx, &["ls", "--remote", "file:///tmp/x"])
    );
    snap!(
        "error_gc_remote",
        &ctx,
        run(&ctx, &["gc", "--remote", "file:///tmp/x"])
    );
    snap!(
        "error_jobs_zero",
        &ctx,
        run(&ctx, &["build", "demo", "--jobs", "0"])
    );
    ctx.write(
        "bad.toml",
        "[stages.corpus]\nkind = \"corpus\"\ndocs = 10\nseed = \"x\"\n",
    );
    snap!(
        "error_dag_file_type",
        &ctx,
        run(&ctx, &["status", "bad.toml"])
    );
    ctx.write(
        "cycle.toml",
        "[stages.a]\nkind = \"doc_stats\"\ninputs = { documents = \"a\" }\n",
    );
    snap!(
        "error_dag_file_cycle",
        &ctx,
        run(&ctx, &["status", "cycle.toml"])
    );
}

/// Runs `ausa ARGS` with the small demo overrides appended.
fn small(ctx: &Ctx, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend_from_slice(&SMALL);
    run(ctx, &all)
}

#[test]
fn read_commands_before_and_after_a_build() {
    let ctx = Ctx::new();
    // Read commands need a store (only build and pull create one): an empty one.
    std::fs::create_dir_all(ctx.store().join("objects")).unwrap();
    snap!("status_missing", &ctx, small(&ctx, &["status", "demo"]));
    snap!(
        "explain_missing",
        &ctx,
        small(&ctx, &["explain", "demo:tokens"])
    );
    snap!(
        "build_dry_run",
        &ctx,
        small(&ctx, &["build", "demo", "--dry-run"])
    );
    small(&ctx, &["build", "demo", "-q"]).ok();
    snap!("status_built", &ctx, small(&ctx, &["status", "demo"]));
    snap!(
        "status_built_json",
        &ctx,
        small(&ctx, &["status", "demo", "--json"])
    );
    // `-q` silences chatter, not the answer.
    snap!(
        "status_built_quiet",
        &ctx,
        small(&ctx, &["status", "demo", "-q"])
    );
    snap!(
        "explain_built",
        &ctx,
        small(&ctx, &["explain", "demo:tokens"])
    );
    snap!("show_tokens", &ctx, small(&ctx, &["show", "demo:tokens"]));
    snap!(
        "show_tokens_json",
        &ctx,
        small(&ctx, &["show", "demo:tokens", "--json"])
    );
    snap!("ls", &ctx, run(&ctx, &["ls"]));
    snap!("ls_json", &ctx, run(&ctx, &["ls", "--json"]));
    // One parameter changed: what is stale and why, field by field.
    let mut changed = SMALL.to_vec();
    changed[1] = "corpus.docs=301";
    let mut args = vec!["explain", "demo:doc_stats"];
    args.extend_from_slice(&changed);
    snap!("explain_changed_param", &ctx, run(&ctx, &args));
    let mut args = vec!["status", "demo"];
    args.extend_from_slice(&changed);
    snap!("status_changed_param", &ctx, run(&ctx, &args));
}
