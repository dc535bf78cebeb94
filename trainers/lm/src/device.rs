//! Device choice (`--device auto|cpu|cuda`) and loading libtorch's CUDA library.
//!
//! The binary links only `libtorch_cpu.so` (the linker drops the unused
//! `libtorch_cuda.so`), so CUDA is enabled at run time by `dlopen`ing
//! `libtorch_cuda.so` from the directory of the `libtorch_cpu.so` this process loaded
//! (`../shared/docs/libtorch.md`), before the first CUDA query. On a machine without CUDA
//! libraries the load fails and `auto` falls back to the CPU.
#![allow(unsafe_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use tch::Device;

use crate::Error;

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when it loads and a GPU is present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device 0; an error without one.
    Cuda,
}

impl DeviceChoice {
    /// Parses the flag value.
    pub fn parse(s: &str) -> Option<DeviceChoice> {
        match s {
            "auto" => Some(DeviceChoice::Auto),
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" => Some(DeviceChoice::Cuda),
            _ => None,
        }
    }
}

/// The directory of the loaded `libtorch_cpu.so` (from `/proc/self/maps`).
pub fn libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| PathBuf::from(path).parent().map(PathBuf::from))
}

static CUDA: OnceLock<Result<libloading::Library, String>> = OnceLock::new();

/// Loads `libtorch_cuda.so` once (kept loaded for the life of the process).
fn load_cuda() -> Result<(), String> {
    let loaded = CUDA.get_or_init(|| {
        let dir = libtorch_dir().ok_or("libtorch_cpu.so is not loaded in this process")?;
        let path = dir.join("libtorch_cuda.so");
        // SAFETY: loading libtorch's own CUDA library runs its static initializers, which
        // register the CUDA backend with the already loaded libtorch_cpu; the handle is
        // stored in a static and never closed, so no symbol outlives the library.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(&path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        };
        lib.map(libloading::Library::from)
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    loaded.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The device for `choice`.
pub fn select(choice: DeviceChoice) -> Result<Device, Error> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(match load_cuda() {
            Ok(()) if tch::Cuda::is_available() => Device::Cuda(0),
            _ => Device::Cpu,
        }),
        DeviceChoice::Cuda => {
            load_cuda().map_err(|e| {
                Error::Usage(format!("--device cuda: libtorch's CUDA library does not load ({e}); use --device cpu, or run where libtorch with CUDA is installed"))
            })?;
            if !tch::Cuda::is_available() {
                return Err(Error::Usage(
                    "--device cuda: no CUDA GPU is visible; use --device cpu or --device auto"
                        .into(),
                ));
            }
            Ok(Device::Cuda(0))
        }
    }
}

/// The GPU's model name from the NVIDIA driver (`/proc/driver/nvidia/gpus/*/information`).
pub fn gpu_name() -> Option<String> {
    let dir = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?;
    let info = dir.flatten().next()?.path().join("information");
    let text = std::fs::read_to_string(info).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
}

/// `(free, total)` bytes of CUDA device `index` as the driver reports them (through the
/// C++ shim; an error when CUDA is not loaded).
pub fn cuda_memory_info(index: usize) -> Result<(u64, u64), Error> {
    ausa_kernels::shim::cuda_mem_info(index).map_err(|e| Error::Torch(e.0))
}
