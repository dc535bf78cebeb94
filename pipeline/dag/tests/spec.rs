//! DAG loading, validation and planning against a small fake registry.

use std::path::PathBuf;

use ausa_dag::*;

struct Source;
struct Sink;

static SOURCE_PARAMS: [ParamSpec; 3] = [
    ParamSpec {
        name: "n",
        ty: ParamType::Int { min: 1, max: 100 },
        default: ParamDefault::Int(10),
        doc: "count",
    },
    ParamSpec {
        name: "mode",
        ty: ParamType::Choice(&["a", "b"]),
        default: ParamDefault::Str("a"),
        doc: "mode",
    },
    ParamSpec {
        name: "files",
        ty: ParamType::Paths {
            extensions: &["txt"],
        },
        default: ParamDefault::NoPaths,
        doc: "inputs",
    },
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

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Box::new(Source));
    r.register(Box::new(Sink));
    r
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
    assert_eq!(src.params.int("n").unwrap(), 5);
    assert_eq!(src.params.str("mode").unwrap(), "a");
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
        Some("valid parameters: n, mode, files")
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
    assert_eq!(dag.stage("src").unwrap().params.int("n").unwrap(), 7);
    let ov = Override::parse("src.mode=b").unwrap();
    let dag = DagSpec::load(&source(GOOD), &registry(), &[ov]).unwrap();
    assert_eq!(dag.stage("src").unwrap().params.str("mode").unwrap(), "b");
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
