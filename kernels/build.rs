//! Compiles the C++ shim (`shim/ausa_shim.cpp`) against libtorch's headers, and puts
//! libtorch's library directory into the RPATH of this crate's test binaries, so they run
//! without LD_LIBRARY_PATH (torch-sys does not do it for downstream crates), and beside
//! it the CUDA libraries' directory of the PyPI install (tests/libtorch.sh), where the
//! NVRTC compile test finds libnvrtc.so on machines without CUDA.
//!
//! The headers come from the libtorch torch-sys found (`DEP_TCH_LIBTORCH_LIB` is its `lib`
//! directory, `../include` beside it), with torch-sys' own flags (C++17, the CXX11 ABI that
//! PyPI's torch uses). The shim links against nothing but what torch-sys already links
//! (libtorch_cpu, libc10): see the file's header for why that matters.
use std::path::PathBuf;

fn main() {
    for file in [
        "shim/ausa_shim.cpp",
        "shim/ausa_shim_graph.cpp",
        "shim/guarded.h",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys in doc-only mode: nothing to compile against.
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}/../../nvidia/cu13/lib");
    let include = PathBuf::from(&lib)
        .parent()
        .map(|torch| torch.join("include"))
        .expect("libtorch's lib directory has a parent");
    // The CUDA runtime headers of the PyPI install (tests/libtorch.sh), for the CUDA
    // graph pool's types only (the shim still links nothing of CUDA); a libtorch without
    // them builds a shim whose graph functions return an error.
    let cuda_include = PathBuf::from(&lib).join("../../nvidia/cu13/include");
    let mut build = cc::Build::new();
    if ["cuda_runtime_api.h", "crt/host_config.h"]
        .iter()
        .all(|h| cuda_include.join(h).is_file())
    {
        build
            .include(&cuda_include)
            .define("AUSA_SHIM_CUDA_HEADERS", None);
    }
    build
        .cpp(true)
        .pic(true)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // libtorch's headers are not warning-clean; our file is checked by review.
        .flag("-Wno-unused-parameter")
        .file("shim/ausa_shim.cpp")
        .file("shim/ausa_shim_graph.cpp")
        .compile("ausa_shim");
}
