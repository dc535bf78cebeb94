//! With the `train` feature: puts libtorch's library directory into the binary's RPATH,
//! so `ausa train` runs without LD_LIBRARY_PATH (torch-sys does not do it for
//! downstream binaries). Without the feature torch-sys is not a dependency and this
//! does nothing.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
