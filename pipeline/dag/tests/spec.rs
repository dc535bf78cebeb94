//! DAG loading, validation and planning against a small fake registry.

use std::path::PathBuf;

use ausa_dag::*;

struct Source;
struct Sink;

static SOURCE_PARAMS: [ParamSpec; 4] = [
    ParamSpec::int(1, 100, 10, "count").named("n"),
    ParamSpec::choice(&["a", "b"], "a", "mode").named("mode"),
    ParamSpec::paths(&["txt"], "inputs").named("files"),
    ParamSpec::int(0, 9, 0, "only in mode b")
        .named("b_only")
        .only_if("mode", "b"),
];
static SINK_SLOTS: [InputSlot; 1] = [InputSlot {
    name: "documents",
    kinds: &["source"],
    doc: "docs",
}];

impl Stage for Source {
    fn kind(&self) -> &'static str {
        "source"
    }
    fn salt(&self) -> &'static str {
        "1"
    }
    fn doc(&self) -> &'static str {
        "test source"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &SOURCE_PARAMS
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[]
    }
    fn run(&self, _ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        Ok(Stats::new())
    }
}

impl Stage for Sink {
    fn kind(&self) -> &'static str {
        "sink"
    }
    fn salt(&self) -> &'static str {
        "1"
    }
    fn doc(&self) -> &'static str {
        "test sink"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &SINK_SLOTS
    }
    fn run(&self, _ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        Ok(Stats::new())
    }
}

/// A stage with remote inputs: known (one file per `n`) unless `mode = "b"`.
struct Remote;

ausa_dag::stage_params! {
    /// Parameters of the remote test stage.
    struct RemoteParams {
        n: u64 = int(1, 100, 1, "files"),
        mode: String = choice(&["a", "b"], "a", "b = the remote is unreachable"),
    }
}

impl TypedStage for Remote {
    type Params = RemoteParams;
    fn kind(&self) -> &'static str {
        "remote"
    }
    fn salt(&self) -> &'static str {
        "1"
    }
    fn doc(&self) -> &'static str {
        "test stage with remote inputs"
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[]
    }
    fn remote_inputs(&self, params: &RemoteParams) -> RemoteInputs {
        if params.mode == "b" {
            return RemoteInputs::Unknown(Pending {
                reason: "the test remote is unreachable".into(),
                hint: Some("try later".into()),
            });
        }
        let files = (0..params.n)
            .map(|i| RemoteFile {
                location: format!("at/{i}"),
                digest: format!("sha256:{i:064}"),
                size: i,
            })
            .collect();
        RemoteInputs::Known([("train".to_string(), files)].into())
    }
    fn run(&self, _params: &RemoteParams, _ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        Ok(Stats::new())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Box::new(Source));
    r.register(Box::new(Sink));
    r.register(Box::new(Remote));
    r
}

fn plan_of(text: &str, overrides: &[&str]) -> Plan {
    let reg = registry();
    let ovs: Vec<_> = overrides
        .iter()
        .map(|o| Override::parse(o).unwrap())
        .collect();
    let dag = DagSpec::load(&source(text), &reg, &ovs).unwrap();
    Plan::resolve(&dag, None, &reg, &PlainHasher).unwrap()
}

fn source(text: &str) -> DagSource {
    DagSource {
        name: "t".into(),
        origin: Origin::File(PathBuf::from("t.toml")),
        base_dir: std::env::current_dir().unwrap(),
        text: text.into(),
    }
}

fn load(text: &str) -> Result<DagSpec, DagError> {
    DagSpec::load(&source(text), &registry(), &[])
}

const GOOD: &str =
    "[stages.src]\nkind = \"source\"\nn = 5\n\n[stages.out]\nkind = \"sink\"\ninputs = [\"src\"]\n";

#[test]
fn defaults_are_filled_and_stages_ordered() {
    let dag = load(GOOD).unwrap();
    let names: Vec<_> = dag.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["src", "out"]);
    let src = dag.stage("src").unwrap();
    assert_eq!(src.params.field::<i64>("n").unwrap(), 5);
    assert_eq!(src.params.field::<String>("mode").unwrap(), "a");
    assert!(src.defaulted.contains("mode") && !src.defaulted.contains("n"));
    assert_eq!(
        dag.stage("out").unwrap().inputs,
        vec![("documents", "src".to_string())]
    );
}

#[test]
fn unknown_parameter_names_line_and_valid_choices() {
    let err = load("[stages.src]\nkind = \"source\"\nnn = 5\n").unwrap_err();
    let loc = err.location.clone().unwrap();
    assert_eq!(
        (loc.origin.as_str(), loc.line, loc.column),
        ("t.toml", 3, 1)
    );
    assert!(err.message.contains("unknown parameter `nn`"), "{err}");
    assert_eq!(
        err.hint.as_deref(),
        Some("valid parameters: n, mode, files, b_only")
    );
}

#[test]
fn unknown_kind_lists_kinds() {
    let err = load("[stages.src]\nkind = \"sorce\"\n").unwrap_err();
    assert_eq!(err.location.unwrap().line, 2);
    assert!(err.hint.unwrap().contains("sink, source"));
}

#[test]
fn wrong_type_and_range_are_reported_at_the_value() {
    let err = load("[stages.src]\nkind = \"source\"\nn = \"five\"\n").unwrap_err();
    assert_eq!(err.location.as_ref().unwrap().line, 3);
    assert!(
        err.message
            .contains("expected integer in 1..=100, found string"),
        "{err}"
    );
    let err = load("[stages.src]\nkind = \"source\"\nmode = \"c\"\n").unwrap_err();
    assert!(err.message.contains("valid choices: a, b"), "{err}");
}

#[test]
fn malformed_toml_has_a_location() {
    let err = load("[stages.src\nkind = 1\n").unwrap_err();
    assert_eq!(err.location.unwrap().line, 1);
    assert!(err.message.starts_with("malformed DAG file"));
}

#[test]
fn missing_upstream_and_wrong_kind_are_errors() {
    let err = load("[stages.out]\nkind = \"sink\"\ninputs = [\"nothere\"]\n").unwrap_err();
    assert!(
        err.message.contains("missing upstream stage `nothere`"),
        "{err}"
    );
    let err = load("[stages.a]\nkind = \"sink\"\ninputs = [\"b\"]\n[stages.b]\nkind = \"sink\"\ninputs = [\"a\"]\n")
        .unwrap_err();
    assert!(
        err.message.contains("needs a stage of kind source"),
        "{err}"
    );
    let err = load("[stages.out]\nkind = \"sink\"\n").unwrap_err();
    assert!(
        err.message
            .contains("input slot `documents` is not connected"),
        "{err}"
    );
}

#[test]
fn cycles_are_detected() {
    // A kind whose slot accepts itself, to build a cycle that passes kind checks.
    struct Loop;
    static SLOTS: [InputSlot; 1] = [InputSlot {
        name: "x",
        kinds: &["loop"],
        doc: "",
    }];
    impl Stage for Loop {
        fn kind(&self) -> &'static str {
            "loop"
        }
        fn salt(&self) -> &'static str {
            "1"
        }
        fn doc(&self) -> &'static str {
            ""
        }
        fn params(&self) -> &'static [ParamSpec] {
            &[]
        }
        fn inputs(&self) -> &'static [InputSlot] {
            &SLOTS
        }
        fn run(&self, _ctx: &StageContext<'_>) -> Result<Stats, StageError> {
            Ok(Stats::new())
        }
    }
    let mut reg = registry();
    reg.register(Box::new(Loop));
    let text = "[stages.a]\nkind = \"loop\"\ninputs = [\"b\"]\n[stages.b]\nkind = \"loop\"\ninputs = [\"a\"]\n";
    let err = DagSpec::load(&source(text), &reg, &[]).unwrap_err();
    assert!(
        err.message.contains("dependency cycle among stages: a, b"),
        "{err}"
    );
}

#[test]
fn overrides_apply_and_are_validated() {
    let ov = Override::parse("src.n=7").unwrap();
    let dag = DagSpec::load(&source(GOOD), &registry(), &[ov]).unwrap();
    assert_eq!(
        dag.stage("src").unwrap().params.field::<i64>("n").unwrap(),
        7
    );
    let ov = Override::parse("src.mode=b").unwrap();
    let dag = DagSpec::load(&source(GOOD), &registry(), &[ov]).unwrap();
    assert_eq!(
        dag.stage("src")
            .unwrap()
            .params
            .field::<String>("mode")
            .unwrap(),
        "b"
    );
    let err = DagSpec::load(
        &source(GOOD),
        &registry(),
        &[Override::parse("src.n=1000").unwrap()],
    )
    .unwrap_err();
    assert!(
        err.message.contains("--set src.n=1000") && err.message.contains("out of range"),
        "{err}"
    );
    let err = DagSpec::load(
        &source(GOOD),
        &registry(),
        &[Override::parse("nope.n=1").unwrap()],
    )
    .unwrap_err();
    assert!(err.hint.unwrap().contains("out, src"));
    assert!(Override::parse("src.n").is_err());
}

#[test]
fn fingerprints_follow_params_and_upstreams() {
    let reg = registry();
    let plan = |ovs: &[&str]| {
        let ovs: Vec<_> = ovs.iter().map(|o| Override::parse(o).unwrap()).collect();
        let dag = DagSpec::load(&source(GOOD), &reg, &ovs).unwrap();
        Plan::resolve(&dag, None, &reg, &PlainHasher).unwrap()
    };
    let a = plan(&[]);
    let b = plan(&[]);
    let c = plan(&["src.n=6"]);
    assert_eq!(a.stages[0].fingerprint, b.stages[0].fingerprint);
    assert_eq!(a.stages[1].fingerprint, b.stages[1].fingerprint);
    assert_ne!(a.stages[0].fingerprint, c.stages[0].fingerprint);
    assert_ne!(
        a.stages[1].fingerprint, c.stages[1].fingerprint,
        "upstream change must propagate"
    );
    let changes = diff_keys(&a.stages[0].key, &c.stages[0].key);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].field, "params.n");
}

#[test]
fn external_files_enter_keys_by_content_not_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b.txt"), "hello").unwrap();
    let reg = registry();
    let fp = |path: &str| {
        let text = format!("[stages.src]\nkind = \"source\"\nfiles = [\"{path}\"]\n");
        let mut src = source(&text);
        src.base_dir = dir.path().to_path_buf();
        let dag = DagSpec::load(&src, &reg, &[]).unwrap();
        Plan::resolve(&dag, None, &reg, &PlainHasher).map(|p| p.stages[0].fingerprint.clone())
    };
    assert_eq!(fp("a.txt").unwrap(), fp("sub/b.txt").unwrap());
    assert_eq!(
        fp("a.txt").unwrap(),
        fp("sub").unwrap(),
        "a directory expands to its .txt files"
    );
    std::fs::write(dir.path().join("sub/b.txt"), "hellO").unwrap();
    assert_ne!(fp("a.txt").unwrap(), fp("sub/b.txt").unwrap());
    let err = fp("missing.txt").unwrap_err();
    assert!(err.message.contains("does not exist"), "{err}");
    let err = fp("*.nothing").unwrap_err();
    assert!(err.message.contains("matches no input files"), "{err}");
}

#[test]
fn closure_selects_target_and_ancestors() {
    let dag = load(GOOD).unwrap();
    let names: Vec<_> = dag
        .closure(Some("src"))
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["src"]);
    assert!(dag.closure(Some("zzz")).is_err());
}

#[test]
fn embedded_demo_is_found_and_unknown_names_list_choices() {
    assert_eq!(locate("demo").unwrap().name, "demo");
    let err = locate("nope").unwrap_err();
    assert!(err.hint.unwrap().contains("demo"));
}

#[test]
fn keys_hold_exactly_what_the_output_depends_on() {
    // Any other field (a thread count, a host name, a path) would fail this test.
    let plan = plan_of(GOOD, &[]);
    let expected = serde_json::json!({
        "scheme": "ausa-key/1",
        "kind": "source",
        "salt": "1",
        "params": {"n": 5, "mode": "a"},
        "inputs": {},
        "external": {"files": []},
    });
    assert_eq!(plan.stages[0].key, expected);
    assert_eq!(plan.stages[0].fingerprint, fingerprint(&expected));
    let sink = serde_json::json!({
        "scheme": "ausa-key/1",
        "kind": "sink",
        "salt": "1",
        "params": {},
        "inputs": {"documents": plan.stages[0].fingerprint},
        "external": {},
    });
    assert_eq!(plan.stages[1].key, sink);
}

#[test]
fn parameters_that_do_not_apply_stay_out_of_the_key() {
    let base = plan_of(GOOD, &[]);
    let ignored = plan_of(GOOD, &["src.b_only=3"]);
    assert_eq!(
        base.stages[0].fingerprint, ignored.stages[0].fingerprint,
        "b_only does not apply in mode a"
    );
    assert!(base.stages[0].key["params"].get("b_only").is_none());
    let b = plan_of(GOOD, &["src.mode=b"]);
    let b3 = plan_of(GOOD, &["src.mode=b", "src.b_only=3"]);
    assert_eq!(b.stages[0].key["params"]["b_only"], 0);
    assert_ne!(b.stages[0].fingerprint, b3.stages[0].fingerprint);
}

#[test]
fn unsupported_input_files_fail_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "x").unwrap();
    std::fs::write(dir.path().join("b.TXT"), "x").unwrap();
    let reg = registry();
    let plan = |path: &str| {
        let text = format!("[stages.src]\nkind = \"source\"\nfiles = [\"{path}\"]\n");
        let mut src = source(&text);
        src.base_dir = dir.path().to_path_buf();
        let dag = DagSpec::load(&src, &reg, &[]).unwrap();
        Plan::resolve(&dag, None, &reg, &PlainHasher)
    };
    let err = plan("a.csv").unwrap_err();
    assert!(
        err.message.contains("unsupported input file") && err.message.contains("a.csv"),
        "{err}"
    );
    assert!(
        err.message.contains(".txt"),
        "names the accepted ones: {err}"
    );
    let err = plan("*").unwrap_err();
    assert!(err.message.contains("a.csv"), "globs too: {err}");
    assert!(plan("b.TXT").is_ok(), "extensions ignore ASCII case");
}

#[test]
fn remote_inputs_enter_keys_by_digest_and_unknown_ones_leave_stages_pending() {
    let text =
        "[stages.r]\nkind = \"remote\"\nn = 2\n\n[stages.out]\nkind = \"sink\"\ninputs = [\"r\"]\n";
    let mut reg = registry();
    // The sink reads `remote` artifacts in this test.
    struct Sink2;
    impl Stage for Sink2 {
        fn kind(&self) -> &'static str {
            "sink"
        }
        fn salt(&self) -> &'static str {
            "1"
        }
        fn doc(&self) -> &'static str {
            "sink of remote"
        }
        fn params(&self) -> &'static [ParamSpec] {
            &[]
        }
        fn inputs(&self) -> &'static [InputSlot] {
            static SLOTS: [InputSlot; 1] = [InputSlot {
                name: "documents",
                kinds: &["remote"],
                doc: "docs",
            }];
            &SLOTS
        }
        fn run(&self, _ctx: &StageContext<'_>) -> Result<Stats, StageError> {
            Ok(Stats::new())
        }
    }
    reg.register(Box::new(Sink2));
    let plan = |ovs: &[&str]| {
        let ovs: Vec<_> = ovs.iter().map(|o| Override::parse(o).unwrap()).collect();
        let dag = DagSpec::load(&source(text), &reg, &ovs).unwrap();
        Plan::resolve(&dag, None, &reg, &PlainHasher).unwrap()
    };
    let known = plan(&[]);
    let r = &known.stages[0];
    assert!(r.pending.is_none());
    assert_eq!(r.remote["train"].len(), 2);
    assert_eq!(
        r.key["external"]["train"][1],
        serde_json::json!({"digest": format!("sha256:{:064}", 1), "size": 1})
    );
    assert_ne!(plan(&["r.n=3"]).stages[0].fingerprint, r.fingerprint);

    let offline = plan(&["r.mode=b"]);
    let (r, out) = (&offline.stages[0], &offline.stages[1]);
    assert_eq!(r.fingerprint, UNKNOWN_FINGERPRINT);
    assert_eq!(
        r.pending.as_ref().unwrap().reason,
        "the test remote is unreachable"
    );
    let why = out
        .pending
        .as_ref()
        .expect("downstream of a pending stage is pending");
    assert!(why.reason.contains("upstream stage `r`"), "{}", why.reason);
    assert_eq!(why.hint.as_deref(), Some("try later"));
    assert_eq!(out.fingerprint, UNKNOWN_FINGERPRINT);
}
