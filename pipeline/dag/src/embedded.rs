//! The DAG files compiled into the binary (`dags/*.toml`), so `ausa build demo` works
//! from any directory, and the lookup from a command-line argument to a [`DagSource`].

use std::path::{Path, PathBuf};

use crate::spec::{DagError, DagSource, Origin};

/// `(name, text)` of every embedded DAG.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("demo", include_str!("../../../dags/demo.toml")),
    ("wt2", include_str!("../../../dags/wt2.toml")),
    (
        "wt103-10pct",
        include_str!("../../../dags/wt103-10pct.toml"),
    ),
    (
        "wt103-25pct",
        include_str!("../../../dags/wt103-25pct.toml"),
    ),
    (
        "wt103-50pct",
        include_str!("../../../dags/wt103-50pct.toml"),
    ),
];

/// The names of the embedded DAGs.
pub fn embedded_names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(n, _)| *n).collect()
}

/// Finds the DAG an argument names: a path to a `.toml` file (its stem is the DAG
/// name), or the name of an embedded DAG.
pub fn locate(arg: &str) -> Result<DagSource, DagError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    if arg.ends_with(".toml") || arg.contains(std::path::MAIN_SEPARATOR) {
        return from_file(Path::new(arg), &cwd);
    }
    let (name, text) = EMBEDDED
        .iter()
        .find(|(n, _)| *n == arg)
        .ok_or_else(|| DagError {
            location: None,
            message: format!("no DAG named `{arg}`"),
            hint: Some(format!(
                "embedded DAGs: {}; or give a path to a .toml file",
                embedded_names().join(", ")
            )),
        })?;
    Ok(DagSource {
        name: name.to_string(),
        origin: Origin::Embedded(name.to_string()),
        base_dir: cwd,
        text: text.to_string(),
    })
}

fn from_file(path: &Path, cwd: &Path) -> Result<DagSource, DagError> {
    let text = std::fs::read_to_string(path).map_err(|e| DagError {
        location: None,
        message: format!("cannot read DAG file {}: {e}", path.display()),
        hint: Some(format!("embedded DAGs: {}", embedded_names().join(", "))),
    })?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        })
        .ok_or_else(|| DagError {
            location: None,
            message: format!("DAG file name {} is not a valid DAG name", path.display()),
            hint: Some("name the file with letters, digits, `_`, `-` and `.`".into()),
        })?;
    let base_dir: PathBuf = cwd.join(path.parent().unwrap_or(Path::new("")));
    Ok(DagSource {
        name: name.to_string(),
        origin: Origin::File(path.to_path_buf()),
        base_dir,
        text,
    })
}
