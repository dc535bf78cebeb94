//! Every DAG compiled into the binary validates against the real stage registry.

#[test]
fn every_embedded_dag_loads() {
    let registry = ausa_stages::registry();
    let names = ausa_dag::embedded_names();
    for name in ["demo", "wt2", "wt103-10pct", "wt103-25pct", "wt103-50pct"] {
        assert!(names.contains(&name), "{name} is not embedded");
    }
    for name in names {
        let source = ausa_dag::locate(name).unwrap();
        let dag = ausa_dag::DagSpec::load(&source, &registry, &[])
            .unwrap_or_else(|e| panic!("{name}: {e} ({:?})", e.hint));
        assert!(
            dag.stage("tokens").is_some(),
            "{name} should end in token ids"
        );
    }
}
