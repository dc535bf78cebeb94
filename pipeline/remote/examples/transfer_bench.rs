//! Push and pull throughput of one synthetic object (`FILES` files of `MIB` MiB each)
//! to a remote: `cargo run --release -p ausa-remote --example transfer_bench -- URL MIB FILES`.
//! Leaves the source store in `$BENCH_DIR/src` so `aws s3 sync` can copy the same bytes.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use ausa_remote::{NoProgress, Remote};
use ausa_store::{ObjectId, Store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let mib: usize = args[2].parse().expect("MIB");
    let files: usize = args[3].parse().expect("FILES");
    let dir = std::path::PathBuf::from(std::env::var("BENCH_DIR").expect("BENCH_DIR"));
    let fp = |k: &serde_json::Value| blake3::hash(k.to_string().as_bytes()).to_hex().to_string();
    let key = serde_json::json!({"bench": mib, "files": files});
    let id = ObjectId {
        kind: "bench".into(),
        fingerprint: fp(&key),
    };
    let src = Store::open(dir.join("src")).unwrap();
    if !src.has_object(&id) {
        let staging = src.stage(&id).unwrap();
        for i in 0..files {
            let data: Vec<u8> = (0..mib << 20)
                .map(|j| (j as u64 * 2654435761 + i as u64) as u8)
                .collect();
            std::fs::write(staging.path().join(format!("part-{i:03}.bin")), data).unwrap();
        }
        staging
            .publish(&src, key, serde_json::json!({}), 0.0)
            .unwrap();
    }
    let remote = Remote::open(url).unwrap();
    let bytes = (mib * files) as f64 * 1048576.0;
    let t = Instant::now();
    remote
        .push_objects(&src, std::slice::from_ref(&id), &NoProgress)
        .unwrap();
    let push = t.elapsed().as_secs_f64();
    let dst = Store::open(dir.join("dst")).unwrap();
    let t = Instant::now();
    remote.pull_objects(&dst, &[id], &fp, &NoProgress).unwrap();
    let pull = t.elapsed().as_secs_f64();
    println!(
        "bytes {bytes} push {push:.2}s {:.0} MiB/s pull {pull:.2}s {:.0} MiB/s",
        bytes / push / 1048576.0,
        bytes / pull / 1048576.0
    );
}
