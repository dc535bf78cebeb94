//! Puts libtorch's library directory into the RPATH of this crate's test binaries, so
//! they run without LD_LIBRARY_PATH (torch-sys does not do it for downstream crates),
//! and beside it the CUDA libraries' directory of the PyPI install (tests/libtorch.sh),
//! where the NVRTC compile test finds libnvrtc.so on machines without CUDA.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}/../../nvidia/cu13/lib");
    }
}
