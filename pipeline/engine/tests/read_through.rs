//! Read-through builds against a fake [`ObjectSource`]: what the source has is
//! fetched without waiting for upstream stages, what it lacks is built, and a failed
//! fetch falls back to building.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use ausa_dag::{
    DagSource, DagSpec, InputSlot, Origin, ParamSpec, Plan, Registry, Stage, StageContext,
    StageError, Stats,
};
use ausa_engine::{BuildOptions, ObjectSource, Outcome, Reporter, Silent, StoreHasher};
use ausa_store::{ObjectId, Store};

/// A stage kind that writes one file holding its kind name.
struct Toy(&'static str, &'static [InputSlot]);

const UPSTREAM: &[InputSlot] = &[InputSlot {
    name: "up",
    kinds: &["root", "chain"],
    doc: "upstream",
}];

impl Stage for Toy {
    fn kind(&self) -> &'static str {
        self.0
    }
    fn salt(&self) -> &'static str {
        "1"
    }
    fn doc(&self) -> &'static str {
        "test stage"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }
    fn inputs(&self) -> &'static [InputSlot] {
        self.1
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        std::fs::write(ctx.out_dir.join("out.txt"), self.0)?;
        Ok(Stats::new())
    }
}

/// A chain of four stages: `r -> a -> b -> c`.
const DAG: &str = r#"
[stages.r]
kind = "root"

[stages.a]
kind = "chain"
inputs = { up = "r" }

[stages.b]
kind = "chain"
inputs = { up = "a" }

[stages.c]
kind = "chain"
inputs = { up = "b" }
"#;

fn plan(store: &Store) -> (Registry, Plan) {
    let mut registry = Registry::new();
    registry.register(Box::new(Toy("root", &[])));
    registry.register(Box::new(Toy("chain", UPSTREAM)));
    let source = DagSource {
        name: "t".into(),
        origin: Origin::Embedded("t".into()),
        base_dir: PathBuf::from("."),
        text: DAG.into(),
    };
    let dag = DagSpec::load(&source, &registry, &[]).expect("dag loads");
    let plan = Plan::resolve(&dag, None, &registry, &StoreHasher::new(store)).expect("plan");
    (registry, plan)
}

/// Serves objects from a donor store, records what was asked and when.
struct FakeSource<'a> {
    donor: &'a Store,
    has: BTreeSet<String>,
    broken: BTreeSet<String>,
    events: &'a Mutex<Vec<String>>,
}

impl ObjectSource for FakeSource<'_> {
    fn fetch(
        &self,
        store: &Store,
        id: &ObjectId,
        progress: &dyn ausa_dag::Progress,
    ) -> Result<Option<u64>, String> {
        self.events
            .lock()
            .unwrap()
            .push(format!("fetch {}", id.fingerprint));
        if self.broken.contains(&id.fingerprint) {
            return Err("connection reset".into());
        }
        if !self.has.contains(&id.fingerprint) {
            return Ok(None);
        }
        let from = self.donor.object_dir(id);
        let staging = store.stage(id).map_err(|e| e.to_string())?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(&from).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name();
            if name == ausa_store::MANIFEST_NAME || name == ausa_store::MANIFEST_DIGEST_NAME {
                continue;
            }
            let copied = std::fs::copy(entry.path(), staging.path().join(&name))
                .map_err(|e| e.to_string())?;
            progress.advance(copied);
            bytes += copied;
        }
        let manifest = std::fs::read(from.join(ausa_store::MANIFEST_NAME)).unwrap();
        staging
            .publish_verbatim(store, &manifest, &from, &ausa_dag::fingerprint)
            .map_err(|e| e.to_string())?;
        Ok(Some(bytes))
    }

    fn parallel_fetches(&self) -> usize {
        2
    }
}

/// Records the order of builds next to the source's fetches.
struct Events<'a>(&'a Mutex<Vec<String>>);

impl Reporter for Events<'_> {
    fn started(&self, stage: &ausa_dag::PlannedStage) {
        self.0.lock().unwrap().push(format!("build {}", stage.name));
    }
    fn waiting(&self, _stage: &ausa_dag::PlannedStage, _holder: &str) {}
    fn finished(&self, _stage: &ausa_dag::PlannedStage, _outcome: &Outcome) {}
    fn progress<'a>(&'a self, stage: &ausa_dag::PlannedStage) -> Box<dyn ausa_dag::Progress + 'a> {
        Box::new(Advances(self.0, stage.name.clone()))
    }
    fn fetch_failed(&self, stage: &ausa_dag::PlannedStage, error: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("failed {}: {error}", stage.name));
    }
}

/// Records every `advance` as `moved STAGE N`.
struct Advances<'a>(&'a Mutex<Vec<String>>, String);

impl ausa_dag::Progress for Advances<'_> {
    fn set_total(&self, _total: u64, _unit: ausa_dag::ProgressUnit) {}
    fn advance(&self, n: u64) {
        self.0.lock().unwrap().push(format!("moved {} {n}", self.1));
    }
}

/// A store with every stage of [`DAG`] built: what the fake remote serves.
fn donor() -> (tempfile::TempDir, Store) {
    let (dir, store, registry, plan) = empty_store();
    let report = ausa_engine::build(&store, &plan, &registry, &BuildOptions::default(), &Silent);
    assert!(report.ok(), "{report:?}");
    (dir, store)
}

/// An empty store and the plan of [`DAG`] for it.
fn empty_store() -> (tempfile::TempDir, Store, Registry, Plan) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path().join("store")).unwrap();
    let (registry, plan) = plan(&store);
    (dir, store, registry, plan)
}

fn fingerprints(plan: &Plan, names: &[&str]) -> BTreeSet<String> {
    plan.stages
        .iter()
        .filter(|s| names.contains(&s.name.as_str()))
        .map(|s| s.fingerprint.clone())
        .collect()
}

#[test]
fn downstream_objects_are_fetched_before_upstream_stages_are_built() {
    let (_d, donor) = donor();
    let (_dir, store, registry, plan) = empty_store();
    let events = Mutex::new(Vec::new());
    // The remote lacks the first two stages but has the last two.
    let source = FakeSource {
        donor: &donor,
        has: fingerprints(&plan, &["b", "c"]),
        broken: BTreeSet::new(),
        events: &events,
    };
    let report = ausa_engine::build_with_source(
        &store,
        &plan,
        &registry,
        &BuildOptions {
            jobs: 1,
            ..BuildOptions::default()
        },
        &Events(&events),
        Some(&source),
    );
    assert!(report.ok(), "{report:?}");
    let outcome = |name: &str| {
        let s = report.stages.iter().find(|s| s.stage == name).unwrap();
        s.outcome.clone()
    };
    assert!(matches!(outcome("r"), Outcome::Built { .. }));
    assert!(matches!(outcome("a"), Outcome::Built { .. }));
    assert!(matches!(outcome("b"), Outcome::Fetched { bytes: 5, .. }));
    assert!(matches!(outcome("c"), Outcome::Fetched { bytes: 5, .. }));
    let events = events.lock().unwrap().clone();
    let first_build = events.iter().position(|e| e.starts_with("build")).unwrap();
    assert_eq!(
        events[..first_build]
            .iter()
            .filter(|e| e.starts_with("fetch"))
            .count(),
        4,
        "every missing object is asked for before any stage builds: {events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("fetch")).count(),
        4,
        "{events:?}"
    );
    // The copied bytes reach the stage's progress sink.
    assert!(events.contains(&"moved b 5".to_string()), "{events:?}");
    assert!(events.contains(&"moved c 5".to_string()), "{events:?}");
    // The fetched objects are the donor's, byte for byte, and the refs point at them.
    for stage in &plan.stages {
        let id = ObjectId {
            kind: stage.kind.clone(),
            fingerprint: stage.fingerprint.clone(),
        };
        let ours = std::fs::read(store.object_dir(&id).join("out.txt")).unwrap();
        let theirs = std::fs::read(donor.object_dir(&id).join("out.txt")).unwrap();
        assert_eq!(ours, theirs, "stage {}", stage.name);
    }
    // A second read-through build finds everything here and asks nothing.
    let again = Mutex::new(Vec::new());
    let source = FakeSource {
        events: &again,
        ..source
    };
    let report = ausa_engine::build_with_source(
        &store,
        &plan,
        &registry,
        &BuildOptions::default(),
        &Silent,
        Some(&source),
    );
    assert!(report.stages.iter().all(|s| s.outcome == Outcome::UpToDate));
    assert!(again.into_inner().unwrap().is_empty());
}

#[test]
fn a_failed_fetch_is_reported_and_the_stage_built_instead() {
    let (_d, donor) = donor();
    let (_dir, store, registry, plan) = empty_store();
    let events = Mutex::new(Vec::new());
    let source = FakeSource {
        donor: &donor,
        has: fingerprints(&plan, &["r", "a", "b", "c"]),
        broken: fingerprints(&plan, &["b"]),
        events: &events,
    };
    let report = ausa_engine::build_with_source(
        &store,
        &plan,
        &registry,
        &BuildOptions::default(),
        &Events(&events),
        Some(&source),
    );
    assert!(report.ok(), "{report:?}");
    let b = report.stages.iter().find(|s| s.stage == "b").unwrap();
    assert!(matches!(b.outcome, Outcome::Built { .. }), "{b:?}");
    let events = events.lock().unwrap().clone();
    assert!(
        events.contains(&"failed b: connection reset".to_string()),
        "{events:?}"
    );
    assert!(events.contains(&"build b".to_string()), "{events:?}");
    // `--force` rebuilds here and never asks the source.
    let forced = Mutex::new(Vec::new());
    let source = FakeSource {
        events: &forced,
        ..source
    };
    let report = ausa_engine::build_with_source(
        &store,
        &plan,
        &registry,
        &BuildOptions {
            jobs: 2,
            force: plan.stages.iter().map(|s| s.name.clone()).collect(),
            ..BuildOptions::default()
        },
        &Silent,
        Some(&source),
    );
    assert!(report
        .stages
        .iter()
        .all(|s| matches!(s.outcome, Outcome::Built { .. })));
    assert!(forced.into_inner().unwrap().is_empty());
}
