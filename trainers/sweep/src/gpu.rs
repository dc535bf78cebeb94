//! GPU state through `nvidia-smi` (when installed): the idle gate before a run and the
//! check after it. Only the query's CSV is read; nothing here links against CUDA.

use std::path::Path;
use std::process::Command;

/// One GPU as nvidia-smi reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuState {
    /// nvidia-smi's index (what `CUDA_VISIBLE_DEVICES` names).
    pub index: u32,
    /// Utilization over the last sample period, percent.
    pub util_pct: u32,
    /// Used memory, MiB.
    pub used_mib: u64,
    /// Free memory, MiB.
    pub free_mib: u64,
}

/// The query: one line per GPU, `index, utilization, used, free` without units.
pub const QUERY: [&str; 2] = [
    "--query-gpu=index,utilization.gpu,memory.used,memory.free",
    "--format=csv,noheader,nounits",
];

/// Asks `nvidia_smi` for every GPU's state. `None` when the program is not installed
/// (a CPU machine: the gate is skipped); `Some(Err)` when it runs but fails.
pub fn query(nvidia_smi: &Path) -> Option<Result<Vec<GpuState>, String>> {
    let out = match Command::new(nvidia_smi).args(QUERY).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("{}: {e}", nvidia_smi.display()))),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Some(Err(format!(
            "{} failed ({}): {}",
            nvidia_smi.display(),
            out.status,
            stderr.trim()
        )));
    }
    Some(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses the query's output.
pub fn parse(text: &str) -> Result<Vec<GpuState>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || format!("unexpected nvidia-smi line `{line}`");
            let [index, util, used, free] = fields.as_slice() else {
                return Err(bad());
            };
            // "[N/A]" utilization (some MIG modes) reads as idle.
            let util = util.parse().unwrap_or(0);
            Ok(GpuState {
                index: index.parse().map_err(|_| bad())?,
                util_pct: util,
                used_mib: used.parse().map_err(|_| bad())?,
                free_mib: free.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// The idle gate's thresholds.
#[derive(Debug, Clone)]
pub struct GpuGate {
    /// A GPU busier than this (percent) is in use by someone else: wait.
    pub max_util_pct: u32,
    /// Wait until at least this much memory is free (MiB).
    pub min_free_mib: u64,
    /// Between two looks.
    pub poll: std::time::Duration,
    /// The nvidia-smi program.
    pub nvidia_smi: std::path::PathBuf,
}

impl GpuGate {
    /// Whether `gpu` may take a run now; otherwise why not.
    pub fn blocks(&self, gpu: &GpuState) -> Option<String> {
        if gpu.util_pct > self.max_util_pct {
            Some(format!(
                "{}% busy (gate: {}%)",
                gpu.util_pct, self.max_util_pct
            ))
        } else if gpu.free_mib < self.min_free_mib {
            Some(format!(
                "{} MiB free (gate: {} MiB)",
                gpu.free_mib, self.min_free_mib
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_query_and_gates_on_utilization_and_memory() {
        let gpus = parse("0, 3, 1024, 80000\n1, [N/A], 10, 100\n").unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].free_mib, 80000);
        assert_eq!(gpus[1].util_pct, 0);
        let gate = GpuGate {
            max_util_pct: 10,
            min_free_mib: 2048,
            poll: std::time::Duration::from_millis(1),
            nvidia_smi: "nvidia-smi".into(),
        };
        assert_eq!(gate.blocks(&gpus[0]), None);
        assert!(gate.blocks(&gpus[1]).unwrap().contains("100 MiB free"));
        let busy = GpuState {
            util_pct: 90,
            ..gpus[0]
        };
        assert!(gate.blocks(&busy).unwrap().contains("90% busy"));
        assert!(parse("0, 1, 2\n").unwrap_err().contains("unexpected"));
    }

    #[test]
    fn a_missing_nvidia_smi_is_none() {
        assert!(query(Path::new("/nonexistent/nvidia-smi")).is_none());
    }
}
