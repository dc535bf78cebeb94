//! The sweep files compiled into the binary (`dags/sweeps/*.toml`), so
//! `ausa sweep demo-ablation` works from any directory.

/// `(name, text)` of every embedded sweep.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "demo-ablation",
        include_str!("../../../dags/sweeps/demo-ablation.toml"),
    ),
    (
        "wt2-ablation",
        include_str!("../../../dags/sweeps/wt2-ablation.toml"),
    ),
];

/// The names of the embedded sweeps.
pub fn names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(n, _)| *n).collect()
}

/// The text of the embedded sweep `name`.
pub fn text(name: &str) -> Option<&'static str> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
