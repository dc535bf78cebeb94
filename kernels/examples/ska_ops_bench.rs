//! Times the CUDA SKA ops against their tensor-op references at the SKA anchor shapes
//! (B*L = 16384 tokens, H = 16, D = 64, window 64, stride 32, k = 128; L from 512 to
//! 16384), median of ITERS synchronized runs after warm-up, fp32. Two CSV tables on
//! stdout: the per-batch set distance `Delta` (MinHash, exact bitset) and the router
//! (all visible sets, and top-8), forward alone and forward + backward. Needs a GPU.
//!
//! Usage: ska_ops_bench [ITERS]   (LD_LIBRARY_PATH must hold libtorch's lib directory)
#![allow(clippy::print_stdout, unsafe_code)]

use std::time::Instant;

use ausa_kernels::cuda::CudaKernels;
use ausa_kernels::exact::exact_delta;
use ausa_kernels::{minhash_delta, SetLayout};
use tch::{Device, Kind, Tensor};

fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    tch::Cuda::synchronize(0);
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            tch::Cuda::synchronize(0);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[iters / 2]
}

fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    // SAFETY: libtorch's CUDA library, loaded before the first CUDA tensor and kept.
    if let Ok(lib) = unsafe { libloading::Library::new("libtorch_cuda.so") } {
        std::mem::forget(lib);
    }
    assert!(tch::Cuda::is_available(), "no CUDA GPU");
    let kernels = CudaKernels::open(0).expect("kernels load");
    let device = Device::Cuda(0);
    let (window, stride, k) = (64i64, 32i64, 128i64);
    println!("L,B,M,k,reference_ms,cuda_ms,speedup,exact_reference_ms,exact_cuda_ms");
    for len in [512i64, 1024, 2048, 4096, 8192, 16384] {
        let b = 16384 / len;
        let m = (len - window) / stride + 1;
        tch::manual_seed(len);
        let sigs = Tensor::randint(64, [b, m, k], (Kind::Int, device));
        let sizes = Tensor::randint_low(20, 64, [b, m], (Kind::Float, device));
        let reference = median_ms(iters, || {
            let _ = minhash_delta(&sigs, &sizes);
        });
        let cuda = median_ms(iters, || {
            let _ = kernels.delta_minhash(&sigs, &sizes).unwrap();
        });
        // A layout with ~48 distinct atoms per set from a 4096-atom universe.
        let per_set = 48i64;
        let values = Tensor::randint(4096, [b * m * per_set], (Kind::Int64, device));
        let value_slot = Tensor::arange(b * m, (Kind::Int64, device))
            .repeat_interleave_self_int(per_set, 0, None);
        let layout = SetLayout {
            batch: b,
            seq_len: len,
            max_sets: m,
            delta: Tensor::zeros([1], (Kind::Float, device)),
            attend: Tensor::zeros([1], (Kind::Bool, device)),
            route: Tensor::zeros([1], (Kind::Bool, device)),
            max_route_sets: m,
            sizes: sizes.shallow_clone(),
            // Spans are not read by the Delta kernels.
            starts: Tensor::zeros([b, m], (Kind::Int64, device)),
            ends: Tensor::zeros([b, m], (Kind::Int64, device)),
            slot_offsets: Tensor::arange_start_step(
                0,
                b * m * per_set + 1,
                per_set,
                (Kind::Int64, device),
            ),
            atom_ids: Tensor::zeros([0], (Kind::Int, device)),
            atom_slots: Tensor::zeros([0], (Kind::Int, device)),
            values,
            value_slot,
        };
        let exact_reference = median_ms(iters, || {
            let _ = exact_delta(&layout, 4096);
        });
        let exact_cuda = median_ms(iters, || {
            let _ = kernels.delta_exact(&layout, 4096).unwrap();
        });
        println!(
            "{len},{b},{m},{k},{reference:.4},{cuda:.4},{:.1},{exact_reference:.4},{exact_cuda:.4}",
            reference / cuda
        );
    }
    println!();
    println!(
        "L,B,M,H,D,topk,reference_ms,cuda_ms,speedup,reference_fwd_bwd_ms,cuda_fwd_bwd_ms,\
         fwd_bwd_speedup,reference_peak_mb_estimate"
    );
    let (h, d) = (16i64, 64i64);
    for len in [512i64, 1024, 2048, 4096, 8192, 16384] {
        let b = 16384 / len;
        let m = (len - window) / stride + 1;
        let q = Tensor::randn([b, h, len, d], (Kind::Float, device));
        let z = Tensor::randn([b, h, m, d], (Kind::Float, device));
        let ends = Tensor::arange(m, (Kind::Int64, device)) * stride + window;
        let t = Tensor::arange(len, (Kind::Int64, device)).unsqueeze(1);
        let route = ends
            .unsqueeze(0)
            .le_tensor(&(t + 1))
            .unsqueeze(0)
            .expand([b, len, m], false)
            .contiguous();
        for topk in [0i64, 8] {
            let reference = median_ms(iters, || {
                let logits = q.matmul(&z.transpose(-1, -2));
                let mask = route.unsqueeze(1).expand_as(&logits);
                let mask = ausa_kernels::top_k_mask(&logits, &mask, topk);
                let _ = ausa_kernels::masked_softmax(&logits, &mask).matmul(&z);
            });
            let cuda = median_ms(iters, || {
                let _ = kernels
                    .router_forward(&q, &z, &route, topk, false, false)
                    .unwrap();
            });
            // Forward and backward: autograd through the tensor ops against the fused
            // forward plus the two backward kernels.
            let dout = Tensor::randn([b, h, len, d], (Kind::Float, device));
            let (qg, zg) = (
                q.detach().set_requires_grad(true),
                z.detach().set_requires_grad(true),
            );
            let reference_fb = median_ms(iters, || {
                let logits = qg.matmul(&zg.transpose(-1, -2));
                let mask = route.unsqueeze(1).expand_as(&logits);
                let mask = ausa_kernels::top_k_mask(&logits, &mask, topk);
                let out = ausa_kernels::masked_softmax(&logits, &mask).matmul(&zg);
                // A scalar loss whose gradient wrt out is dout (one extra multiply).
                let loss = (out * &dout).sum(Kind::Float);
                let _ = Tensor::run_backward(&[loss], &[&qg, &zg], false, false);
            });
            let cuda_fb = median_ms(iters, || {
                let saved = kernels
                    .router_forward(&q, &z, &route, topk, false, false)
                    .unwrap();
                let _ = kernels
                    .router_backward(&q, &z, &route, &saved, &dout)
                    .unwrap();
            });
            // logits, mask, softmax: three [B, H, L, M] fp32-sized temporaries.
            let peak = 3.0 * (b * h * len * m * 4) as f64 / 1e6;
            println!(
                "{len},{b},{m},{h},{d},{topk},{reference:.4},{cuda:.4},{:.1},\
                 {reference_fb:.4},{cuda_fb:.4},{:.1},{peak:.0}",
                reference / cuda,
                reference_fb / cuda_fb
            );
        }
    }
}
