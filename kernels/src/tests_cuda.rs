//! The CUDA Delta kernels against their references, and the exact reference against a
//! plain sorted-merge count. CPU tests always run; GPU tests run where libtorch's CUDA
//! library loads and a GPU is present, and are reported as skipped, by name, elsewhere.

use ausa_testkit::{skip, Requirement};
use tch::{Device, Kind, Tensor};

use crate::cuda::{compile_all, CudaKernels};
use crate::exact::exact_delta;
use crate::toy::{sets, ToyShape};
use crate::{minhash_delta, SetLayout};

/// Seeded pseudo-random token ids (a fresh seed per call site keeps inputs varied).
fn tokens(seed: u64, batch: usize, len: usize, vocab: u32) -> Vec<Vec<u32>> {
    crate::toy::random_tokens(seed, batch, len, vocab)
}

/// A run-dependent seed: the kernels must agree on any input, not one fixed draw.
pub(crate) fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

fn layout(tokens: &[Vec<u32>], shape: ToyShape, device: Device) -> SetLayout {
    let len = tokens[0].len() as i64;
    SetLayout::new(&sets(tokens, shape, device), len)
}

/// `|A| + |B| - 2 |A n B|` by merging the sorted distinct atoms of two windows.
fn symmetric_difference(a: &[u32], b: &[u32]) -> usize {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    for v in [&mut a, &mut b] {
        v.sort_unstable();
        v.dedup();
    }
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    a.len() + b.len() - 2 * common
}

#[test]
fn exact_delta_counts_the_symmetric_difference() {
    let shape = ToyShape {
        window: 8,
        stride: 3,
        k: 16,
        seed: 3,
        leading: false,
    };
    let seqs = tokens(fresh_seed(), 3, 40, 30);
    let layout = layout(&seqs, shape, Device::Cpu);
    let delta = exact_delta(&layout, 30);
    let m = layout.max_sets as usize;
    for (b, seq) in seqs.iter().enumerate() {
        for i in 0..m {
            for j in 0..m {
                let window = |s: usize| &seq[s * shape.stride..s * shape.stride + shape.window];
                let want = symmetric_difference(window(i), window(j)) as f64;
                let got = delta.double_value(&[b as i64, i as i64, j as i64]);
                assert_eq!(got, want, "sequence {b}, sets {i} and {j}");
            }
        }
    }
}

#[test]
fn minhash_delta_is_near_the_exact_one_for_large_k() {
    // The estimate converges: at k = 512 the mean error over all pairs is small.
    let shape = ToyShape {
        window: 16,
        stride: 4,
        k: 512,
        seed: 11,
        leading: false,
    };
    let seqs = tokens(fresh_seed(), 2, 64, 40);
    let layout = layout(&seqs, shape, Device::Cpu);
    let exact = exact_delta(&layout, 40);
    let error = (&layout.delta - &exact)
        .abs()
        .mean(Kind::Float)
        .double_value(&[]);
    let scale = exact.mean(Kind::Float).double_value(&[]);
    assert!(
        scale > 1.0,
        "sets must differ for the test to mean anything"
    );
    assert!(
        error < 0.1 * scale,
        "mean |error| {error} against mean Delta {scale}"
    );
}

#[test]
fn kernel_sources_compile_with_nvrtc() {
    let test = "kernel_sources_compile_with_nvrtc";
    match compile_all("sm_90") {
        Ok(()) => {}
        Err(crate::cuda::CudaError::Unavailable(why)) => skip(Requirement::Nvrtc, test, &why),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn row_lane_groups_are_powers_of_two_of_about_eight_dims_that_divide_the_row() {
    use crate::cuda::row_lanes as lanes;
    for (d, want) in [
        (1, 1),
        (15, 1),
        (16, 2),
        (32, 4),
        (48, 4),
        (64, 8),
        (100, 4),
        (20, 2),
        (24, 2),
        (128, 16),
        (256, 32),
        (1024, 32),
    ] {
        assert_eq!(lanes(d), want, "head dimension {d}");
    }
}

/// libtorch's CUDA library loaded and a GPU present, else a visible skip.
fn gpu(test: &str) -> Option<CudaKernels> {
    if !crate::cuda::load_libtorch_cuda_for_tests() || !tch::Cuda::is_available() {
        skip(
            Requirement::Gpu,
            test,
            "no CUDA GPU (libtorch_cuda.so and a device)",
        );
        return None;
    }
    match CudaKernels::open(0) {
        Ok(k) => Some(k),
        Err(e) => panic!("{test}: a GPU is present but the kernels do not load: {e}"),
    }
}

/// Relative error `|a - b| / |b|` over whole tensors (in f64). A reference that is zero
/// up to rounding (one visible set: the softmax is constant, so the gradients of its
/// logits vanish) is compared against an RMS floor of 0.01 per element instead, far
/// below the O(1) values these tests draw.
fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "compared tensors differ in shape");
    if want.numel() == 0 {
        // Nothing to compare (e.g. no token kept a set: a random route of one entry).
        return 0.0;
    }
    let (got, want) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let floor = 1e-2 * (want.numel() as f64).sqrt();
    let den = want.norm().double_value(&[]).max(floor);
    (got - want).norm().double_value(&[]) / den
}

/// Odd shapes: one set, set counts not a multiple of the 16-wide tile, k not a multiple
/// of the 64-column chunk, batches of one and of several sequences, leading partial
/// windows (`--early leading`).
const SHAPES: [(usize, usize, ToyShape); 5] = [
    (
        1,
        8,
        ToyShape {
            window: 8,
            stride: 4,
            k: 32,
            seed: 1,
            leading: false,
        },
    ),
    (
        3,
        70,
        ToyShape {
            window: 8,
            stride: 4,
            k: 100,
            seed: 2,
            leading: false,
        },
    ),
    (
        2,
        256,
        ToyShape {
            window: 64,
            stride: 32,
            k: 128,
            seed: 3,
            leading: true,
        },
    ),
    (
        1,
        1000,
        ToyShape {
            window: 32,
            stride: 16,
            k: 256,
            seed: 4,
            leading: false,
        },
    ),
    (
        4,
        300,
        ToyShape {
            window: 16,
            stride: 8,
            k: 64,
            seed: 5,
            leading: false,
        },
    ),
];

#[test]
fn cuda_minhash_delta_matches_the_reference_and_overwrites_its_output() {
    let Some(kernels) = gpu("cuda_minhash_delta_matches_the_reference_and_overwrites_its_output")
    else {
        return;
    };
    let device = Device::Cuda(0);
    for (n, &(batch, len, shape)) in SHAPES.iter().enumerate() {
        let seqs = tokens(fresh_seed() + n as u64, batch, len, 500);
        let inputs = sets(&seqs, shape, device);
        let layout = SetLayout::new(&inputs, len as i64);
        let (b, m) = (layout.batch, layout.max_sets);
        // Padded signatures as SetLayout builds them (one row per slot).
        let sigs = inputs
            .signatures
            .to_kind(Kind::Int)
            .view([b, m, shape.k as i64]);
        let want = minhash_delta(&sigs, &layout.sizes);
        let mut out = Tensor::full([b, m, m], f64::NAN, (Kind::Float, device));
        kernels
            .delta_minhash_into(&sigs, &layout.sizes, &mut out)
            .unwrap();
        kernels.synchronize().unwrap();
        assert_eq!(
            out.isnan().sum(Kind::Int64).int64_value(&[]),
            0,
            "shape {n}: unwritten elements"
        );
        let err = relative_error(&out, &want);
        assert!(
            err <= 1e-6,
            "shape {n} (B {b}, M {m}, k {}): relative error {err}",
            shape.k
        );
    }
}

#[test]
fn cuda_exact_delta_matches_the_reference() {
    let Some(kernels) = gpu("cuda_exact_delta_matches_the_reference") else {
        return;
    };
    let device = Device::Cuda(0);
    for (n, &(batch, len, shape)) in SHAPES.iter().enumerate() {
        for universe in [37u32, 4096] {
            let seqs = tokens(fresh_seed() + n as u64, batch, len, universe);
            let layout = layout(&seqs, shape, device);
            let want = exact_delta(&layout, i64::from(universe));
            let got = kernels.delta_exact(&layout, i64::from(universe)).unwrap();
            kernels.synchronize().unwrap();
            assert_eq!(
                (got - want).abs().max().double_value(&[]),
                0.0,
                "shape {n}, universe {universe}: exact Delta must match to the bit"
            );
        }
    }
}

#[test]
fn cuda_delta_rejects_atoms_outside_the_universe() {
    let Some(kernels) = gpu("cuda_delta_rejects_atoms_outside_the_universe") else {
        return;
    };
    let shape = ToyShape {
        window: 8,
        stride: 4,
        k: 32,
        seed: 1,
        leading: false,
    };
    let layout = layout(&tokens(5, 1, 32, 100), shape, Device::Cuda(0));
    let err = kernels.delta_exact(&layout, 50).unwrap_err().to_string();
    assert!(err.contains("universe of 50"), "{err}");
    assert!(kernels.delta_exact(&layout, 5000).is_err());
}

/// The router half of `SetAttention::forward`, in tensor ops: gates over the visible
/// (and top-k) sets, mixed set outputs, and the log-sum-exp of the kept logits.
fn router_reference(q: &Tensor, z: &Tensor, route: &Tensor, topk: i64) -> (Tensor, Tensor) {
    let logits = q.matmul(&z.transpose(-1, -2));
    let mask = route.unsqueeze(1).expand_as(&logits);
    let mask = crate::top_k_mask(&logits, &mask, topk);
    let gates = crate::masked_softmax(&logits, &mask);
    let lse = logits
        .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
        .logsumexp(&[-1i64][..], false);
    (gates.matmul(z), lse)
}

/// Where two `[B, H, N, D]` tensors differ most along dimension `dim` (2: rows, 3:
/// columns): the 8 indices of the largest absolute differences, for failure messages.
fn worst(got: &Tensor, want: &Tensor, dim: i64) -> Vec<(i64, f64)> {
    let diff = (got - want).abs().to_kind(Kind::Double);
    let others: Vec<i64> = (0..4).filter(|&d| d != dim).collect();
    let per = diff.amax(others.as_slice(), false);
    let k = per.size()[0].min(8);
    let (values, indices) = per.topk(k, 0, true, true);
    (0..k)
        .map(|i| (indices.int64_value(&[i]), values.double_value(&[i])))
        .collect()
}

/// Router test shapes `(B, H, L, M, D, top-k)`: one set; L and M not multiples of the
/// tiles; top-k above some tokens' visible count; a head dimension below the tile width;
/// the largest head dimension.
const ROUTER_SHAPES: [(i64, i64, i64, i64, i64, i64); 9] = [
    (1, 1, 8, 1, 16, 0),
    (2, 3, 70, 15, 64, 0),
    (2, 4, 256, 7, 64, 4),
    (1, 2, 1000, 61, 32, 8),
    (3, 2, 300, 37, 64, 3),
    (1, 2, 130, 20, 128, 2),
    // More sets than the dense top-k dz takes: the bucketed sparse dz (L not a multiple
    // of its 32-token chunks; with top-k below 8, slots past it are empty).
    (2, 2, 600, 140, 32, 8),
    // A head dimension that 16-byte bf16 loads do not divide.
    (1, 3, 777, 100, 20, 3),
    // A head dimension whose nearest lane group of 8 dims does not divide it (the top-k
    // dq takes 4 lanes of 25 dims), and the dense dz's tiles split unevenly over threads.
    (2, 2, 200, 30, 100, 8),
];

/// `[L, M]` the causal route of windows of 8 by 4: set j ends at 8 + 4 j, token t may use
/// the sets ending at or before t + 1.
fn causal_route(l: i64, m: i64, device: Device) -> Tensor {
    let ends = Tensor::arange(m, (Kind::Int64, device)) * 4 + 8;
    let t = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(1);
    ends.unsqueeze(0).le_tensor(&(t + 1))
}

/// Random queries and set outputs for one router shape, and the causal route of
/// [`causal_route`] with one in ten entries dropped, so the mask is not a plain prefix
/// and the earliest tokens see no set.
fn router_case(shape: (i64, i64, i64, i64, i64, i64), device: Device) -> (Tensor, Tensor, Tensor) {
    let (b, h, l, m, d, _) = shape;
    let opts = (Kind::Float, device);
    let q = Tensor::randn([b, h, l, d], opts) * 0.5;
    let z = Tensor::randn([b, h, m, d], opts) * 0.5;
    let causal = causal_route(l, m, device);
    let keep = Tensor::rand([b, l, m], opts).ge(0.1);
    (q, z, causal.unsqueeze(0).logical_and(&keep))
}

#[test]
fn cuda_router_matches_the_reference() {
    let Some(kernels) = gpu("cuda_router_matches_the_reference") else {
        return;
    };
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    // Every shape on the CUDA cores, and again with bf16 values (rounded once, the
    // reference computing on the rounded values): with top-k and a head dimension of a
    // multiple of 16 that is the tensor-core kernel.
    let cases = ROUTER_SHAPES
        .iter()
        .enumerate()
        .flat_map(|(n, &shape)| [(n, shape, false), (n, shape, true)]);
    for (n, shape, bf16_values) in cases {
        let topk = shape.5;
        let (q, z, route) = router_case(shape, device);
        let (q, z) = if bf16_values {
            let round = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
            (round(&q), round(&z))
        } else {
            (q, z)
        };
        let (want, want_lse) = router_reference(&q, &z, &route, topk);
        let saved = kernels
            .router_forward(&q, &z, &route, topk, bf16_values, false)
            .unwrap();
        kernels.synchronize().unwrap();
        let n = format!("{n} (bf16 values: {bf16_values})");
        let (got, lse) = (&saved.out, &saved.lse);
        assert_eq!(
            got.isnan().sum(Kind::Int64).int64_value(&[]),
            0,
            "shape {n}: NaN"
        );
        let err = relative_error(got, &want);
        assert!(err <= 1e-5, "shape {n}: relative error {err}");
        // Tokens with no visible set: zero output, lse -inf, in both.
        let empty = route
            .any_dim(-1, false)
            .logical_not()
            .unsqueeze(1)
            .expand_as(lse);
        let empties = empty.sum(Kind::Int64).int64_value(&[]);
        assert!(
            shape.3 == 1 || empties > 0,
            "shape {n}: the early tokens must have no set"
        );
        let finite = empty.logical_not();
        let lse_err = relative_error(
            &lse.masked_select(&finite),
            &want_lse.masked_select(&finite),
        );
        assert!(lse_err <= 1e-5, "shape {n}: lse relative error {lse_err}");
        assert!(
            bool::try_from(lse.masked_select(&empty).isinf().all()).unwrap(),
            "shape {n}: lse of an empty row must be -inf"
        );
    }
}

#[test]
fn cuda_router_backward_matches_autograd_and_repeats_bit_for_bit() {
    let Some(kernels) = gpu("cuda_router_backward_matches_autograd_and_repeats_bit_for_bit") else {
        return;
    };
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    for (n, &shape) in ROUTER_SHAPES.iter().enumerate() {
        let topk = shape.5;
        let (q, z, route) = router_case(shape, device);
        let dout = Tensor::randn(q.size(), (Kind::Float, device));
        let (qg, zg) = (
            q.detach().set_requires_grad(true),
            z.detach().set_requires_grad(true),
        );
        let (want, _) = router_reference(&qg, &zg, &route, topk);
        (want * &dout).sum(Kind::Float).backward();
        let (want_dq, want_dz) = (qg.grad(), zg.grad());

        let saved = kernels
            .router_forward(&q, &z, &route, topk, false, false)
            .unwrap();
        let (dq, dz) = kernels
            .router_backward(&q, &z, &route, &saved, &dout)
            .unwrap();
        let (dq2, dz2) = kernels
            .router_backward(&q, &z, &route, &saved, &dout)
            .unwrap();
        kernels.synchronize().unwrap();
        let dq_err = relative_error(&dq, &want_dq);
        let dz_err = relative_error(&dz, &want_dz);
        assert!(
            dq_err <= 1e-4 && dz_err <= 1e-4,
            "shape {n}: relative errors dq {dq_err}, dz {dz_err}; worst dims of dq {:?}, \
             of dz {:?}; worst tokens of dq {:?}",
            worst(&dq, &want_dq, 3),
            worst(&dz, &want_dz, 3),
            worst(&dq, &want_dq, 2)
        );
        assert!(
            dq.equal(&dq2) && dz.equal(&dz2),
            "shape {n}: backward must repeat bit for bit"
        );
    }
}

/// bf16 token rows (`q`, out, dout, dq read and written as bf16: a bf16 step's path)
/// against the fp32-row kernels on the same bf16 values: the same kept sets and lse
/// (the same logits), the output its bf16 rounding, dq and dz within bf16 rounding (the
/// backward's `dout . out` sees the rounded output), and repeatable bit for bit.
#[test]
fn cuda_router_bf16_rows_match_fp32_rows_on_bf16_values() {
    let Some(kernels) = gpu("cuda_router_bf16_rows_match_fp32_rows_on_bf16_values") else {
        return;
    };
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    for (n, &shape) in ROUTER_SHAPES.iter().enumerate() {
        let topk = shape.5;
        let (q, z, route) = router_case(shape, device);
        let round = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let (q, z) = (round(&q), round(&z));
        let dout = round(&Tensor::randn(q.size(), (Kind::Float, device)));
        let (qh, douth) = (q.to_kind(Kind::BFloat16), dout.to_kind(Kind::BFloat16));
        let full = kernels
            .router_forward(&q, &z, &route, topk, true, false)
            .unwrap();
        let half = kernels
            .router_forward(&qh, &z, &route, topk, false, false)
            .unwrap();
        kernels.synchronize().unwrap();
        assert_eq!(half.out.kind(), Kind::BFloat16, "shape {n}: output kind");
        assert!(
            half.out.equal(&full.out.to_kind(Kind::BFloat16)),
            "shape {n}: the bf16 output must be the rounded fp32 one"
        );
        assert!(half.lse.equal(&full.lse), "shape {n}: lse");
        // Without top-k the kept lists are an unwritten placeholder.
        assert!(
            topk == 0 || half.kept.equal(&full.kept),
            "shape {n}: kept sets"
        );
        let (dq, dz) = kernels
            .router_backward(&q, &z, &route, &full, &dout)
            .unwrap();
        let (hdq, hdz) = kernels
            .router_backward(&qh, &z, &route, &half, &douth)
            .unwrap();
        let (hdq2, hdz2) = kernels
            .router_backward(&qh, &z, &route, &half, &douth)
            .unwrap();
        kernels.synchronize().unwrap();
        assert_eq!(hdq.kind(), Kind::BFloat16, "shape {n}: dq kind");
        assert_eq!(hdz.kind(), Kind::Float, "shape {n}: dz kind");
        let dq_err = relative_error(&hdq.to_kind(Kind::Float), &dq);
        let dz_err = relative_error(&hdz, &dz);
        assert!(dq_err <= 1e-2, "shape {n}: dq relative error {dq_err}");
        assert!(dz_err <= 1e-2, "shape {n}: dz relative error {dz_err}");
        assert!(
            hdq.equal(&hdq2) && hdz.equal(&hdz2),
            "shape {n}: backward must repeat bit for bit"
        );
        // The same rows token-major ([B, L, H, D] storage viewed as [B, H, L, D], how the
        // trainer's projections hand them over): the same bits, outputs in that layout.
        let token_major = |t: &Tensor| t.transpose(1, 2).contiguous().transpose(1, 2);
        let (qt, doutt) = (token_major(&qh), token_major(&douth));
        let tm = kernels
            .router_forward(&qt, &z, &route, topk, false, false)
            .unwrap();
        let (tdq, tdz) = kernels
            .router_backward(&qt, &z, &route, &tm, &doutt)
            .unwrap();
        kernels.synchronize().unwrap();
        if shape.1 > 1 {
            assert!(
                tm.out.transpose(1, 2).is_contiguous() && tdq.transpose(1, 2).is_contiguous(),
                "shape {n}: token-major in, token-major out"
            );
        }
        assert!(tm.out.equal(&half.out), "shape {n}: token-major output");
        assert!(tm.lse.equal(&half.lse), "shape {n}: token-major lse");
        assert!(
            tdq.equal(&hdq) && tdz.equal(&hdz),
            "shape {n}: token-major gradients"
        );
    }
}

/// Random bf16-valued router inputs (`q`, `z`, `dout`, fp32 tensors holding bf16 values)
/// for a route, with the reference's output, log-sum-exp and gradients.
struct BandCase {
    q: Tensor,
    z: Tensor,
    dout: Tensor,
    out: Tensor,
    lse: Tensor,
    dq: Tensor,
    dz: Tensor,
}

impl BandCase {
    fn new([b, h, l, m, d]: [i64; 5], route: &Tensor, topk: i64, device: Device) -> BandCase {
        let round = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let opts = (Kind::Float, device);
        let q = round(&(Tensor::randn([b, h, l, d], opts) * 0.5));
        let z = round(&(Tensor::randn([b, h, m, d], opts) * 0.5));
        let dout = round(&Tensor::randn([b, h, l, d], opts));
        let (qg, zg) = (
            q.detach().set_requires_grad(true),
            z.detach().set_requires_grad(true),
        );
        let (out, lse) = router_reference(&qg, &zg, route, topk);
        (&out * &dout).sum(Kind::Float).backward();
        BandCase {
            q,
            z,
            dout,
            out: out.detach(),
            lse: lse.detach(),
            dq: qg.grad(),
            dz: zg.grad(),
        }
    }
}

/// [`causal_route`] limited to the last `recent` visible sets of each token
/// (`--router-topk`): whole 32-set tiles before and after a block's band carry no route
/// bit, so the top-k forward skips tiles at both ends and restages after a skip.
/// Also returns each token's visible count (`[L]`): its band is `[visible - recent,
/// visible)`.
fn recent_route(l: i64, m: i64, recent: i64, device: Device) -> (Tensor, Tensor) {
    let causal = causal_route(l, m, device);
    let visible = causal.sum_dim_intlist(&[-1i64][..], true, Kind::Int64);
    let j = Tensor::arange(m, (Kind::Int64, device)).unsqueeze(0);
    let route = causal.logical_and(&j.ge_tensor(&(&visible - recent)));
    (route, visible.squeeze_dim(1))
}

#[test]
fn cuda_router_with_a_recent_route_matches_the_reference() {
    let Some(kernels) = gpu("cuda_router_with_a_recent_route_matches_the_reference") else {
        return;
    };
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    // (B, H, L, M, D, top-k, recent): the dense top-k dz (M <= 64) and the sparse one,
    // top-k equal to and below the candidates.
    let shapes = [
        (2, 2, 260, 62, 64, 8, 8),
        (1, 2, 1300, 320, 64, 8, 8),
        (2, 3, 900, 200, 64, 4, 6),
    ];
    for (n, &(b, h, l, m, d, topk, recent)) in shapes.iter().enumerate() {
        let (route, visible) = recent_route(l, m, recent, device);
        let route = route.unsqueeze(0).expand([b, l, m], false).contiguous();
        let kept_most = route
            .sum_dim_intlist(&[-1i64][..], false, Kind::Int64)
            .max()
            .int64_value(&[]);
        assert_eq!(kept_most, recent, "shape {n}: the band's width");
        let inputs = BandCase::new([b, h, l, m, d], &route, topk, device);
        let (q, z, dout, want) = (&inputs.q, &inputs.z, &inputs.dout, &inputs.out);
        // fp32 rows on the CUDA cores, and bf16 rows (the tensor-core forward and dz).
        for bf16_rows in [false, true] {
            let (qk, doutk) = if bf16_rows {
                (q.to_kind(Kind::BFloat16), dout.to_kind(Kind::BFloat16))
            } else {
                (q.shallow_clone(), dout.shallow_clone())
            };
            let saved = kernels
                .router_forward(&qk, z, &route, topk, true, false)
                .unwrap();
            let (dq, dz) = kernels
                .router_backward(&qk, z, &route, &saved, &doutk)
                .unwrap();
            kernels.synchronize().unwrap();
            let tol = if bf16_rows { 1e-2 } else { 1e-4 };
            let case = format!("shape {n} (bf16 rows: {bf16_rows})");
            let out_err = relative_error(&saved.out.to_kind(Kind::Float), &want.detach());
            let dq_err = relative_error(&dq.to_kind(Kind::Float), &inputs.dq);
            let dz_err = relative_error(&dz, &inputs.dz);
            assert!(out_err <= tol, "{case}: output relative error {out_err}");
            assert!(dq_err <= tol, "{case}: dq relative error {dq_err}");
            assert!(dz_err <= tol, "{case}: dz relative error {dz_err}");
            // Kept sets lie inside each token's band.
            let kept = saved.kept.view([b, h, l, 8]).narrow(-1, 0, topk);
            // [1, 1, L, 1]: each token's visible count, and its band's first set.
            let visible = visible.view([1, 1, l, 1]);
            let lowest = (&visible - recent).clamp_min(0);
            let outside = kept
                .ge(0)
                .logical_and(
                    &kept
                        .lt_tensor(&lowest)
                        .logical_or(&kept.ge_tensor(&visible)),
                )
                .sum(Kind::Int64)
                .int64_value(&[]);
            assert_eq!(outside, 0, "{case}: a kept set outside the band");
        }
    }
}

/// The per-token forward (`narrow`: `router_fwd_cand_*`) against the reference and the
/// tile kernels, on recent routes (every token's candidates in its list) with every
/// seventh token seeing all its visible sets (more than a list holds: the kernel's
/// general path): output, lse and the backward from what it saved within tolerance, the
/// kept sets those of the tile kernels (up to near-ties of the top-k's last logit),
/// repeatable bit for bit; head dimensions 8 to 128, fp32 and bf16 rows, both layouts,
/// fp32 and bf16 set rows.
#[test]
fn cuda_per_token_router_matches_the_reference_and_the_tile_kernels() {
    let test = "cuda_per_token_router_matches_the_reference_and_the_tile_kernels";
    let Some(kernels) = gpu(test) else {
        return;
    };
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    // (B, H, L, M, D, top-k, recent)
    let shapes = [
        (2, 4, 700, 180, 64, 8, 8),
        (1, 2, 333, 90, 32, 3, 8),
        (2, 2, 260, 70, 128, 8, 4),
        (1, 3, 200, 40, 16, 2, 6),
        (1, 1, 50, 9, 8, 8, 8),
        (3, 2, 100, 1, 64, 8, 8),
    ];
    for (n, &(b, h, l, m, d, topk, recent)) in shapes.iter().enumerate() {
        let (band, _) = recent_route(l, m, recent, device);
        let every = Tensor::arange(l, (Kind::Int64, device))
            .remainder(7)
            .eq(3)
            .unsqueeze(1);
        let route = band.logical_or(&causal_route(l, m, device).logical_and(&every));
        let route = route.unsqueeze(0).expand([b, l, m], false).contiguous();
        let most = route
            .sum_dim_intlist(&[-1i64][..], false, Kind::Int64)
            .max()
            .int64_value(&[]);
        assert!(
            m <= 8 || most > 8,
            "shape {n}: some tokens must see more sets than a list holds"
        );
        let inputs = BandCase::new([b, h, l, m, d], &route, topk, device);
        let (q, z, dout, want, want_lse) =
            (&inputs.q, &inputs.z, &inputs.dout, &inputs.out, &inputs.lse);
        let finite = want_lse.isfinite();
        for (bf16_rows, token_major, bf16_values) in [
            (false, false, false),
            (false, true, true),
            (true, false, true),
            (true, true, true),
        ] {
            let case = format!(
                "shape {n} (bf16 rows {bf16_rows}, token-major {token_major}, bf16 z {bf16_values})"
            );
            let layout = |t: &Tensor| {
                let t = if bf16_rows {
                    t.to_kind(Kind::BFloat16)
                } else {
                    t.shallow_clone()
                };
                if token_major {
                    t.transpose(1, 2).contiguous().transpose(1, 2)
                } else {
                    t
                }
            };
            let (qk, doutk) = (layout(q), layout(dout));
            let per = kernels
                .router_forward(&qk, z, &route, topk, bf16_values, true)
                .unwrap();
            let again = kernels
                .router_forward(&qk, z, &route, topk, bf16_values, true)
                .unwrap();
            let tiles = kernels
                .router_forward(&qk, z, &route, topk, bf16_values, false)
                .unwrap();
            let (dq, dz) = kernels
                .router_backward(&qk, z, &route, &per, &doutk)
                .unwrap();
            kernels.synchronize().unwrap();
            assert!(
                per.out.equal(&again.out)
                    && per.lse.equal(&again.lse)
                    && per.kept.equal(&again.kept),
                "{case}: the forward must repeat bit for bit"
            );
            let tol = if bf16_rows { 1e-2 } else { 1e-5 };
            let out_err = relative_error(&per.out.to_kind(Kind::Float), &want.detach());
            assert!(out_err <= tol, "{case}: output relative error {out_err}");
            let lse_err = relative_error(
                &per.lse.masked_select(&finite),
                &want_lse.masked_select(&finite),
            );
            assert!(lse_err <= 1e-5, "{case}: lse relative error {lse_err}");
            assert!(
                bool::try_from(per.lse.masked_select(&finite.logical_not()).isinf().all()).unwrap(),
                "{case}: a token with no set has lse -inf"
            );
            let tol = if bf16_rows { 1e-2 } else { 1e-4 };
            let dq_err = relative_error(&dq.to_kind(Kind::Float), &inputs.dq);
            let dz_err = relative_error(&dz, &inputs.dz);
            assert!(dq_err <= tol, "{case}: dq relative error {dq_err}");
            assert!(dz_err <= tol, "{case}: dz relative error {dz_err}");
            // The same kept sets as the tile kernels (as sets; -1 past them).
            let sorted = |k: &Tensor| k.sort(-1, false).0;
            let differ = sorted(&per.kept)
                .ne_tensor(&sorted(&tiles.kept))
                .any_dim(-1, false)
                .sum(Kind::Int64)
                .int64_value(&[]);
            let rows = b * h * l;
            assert!(
                differ * 10_000 <= rows,
                "{case}: {differ} of {rows} tokens kept other sets than the tile kernels"
            );
            let counts = per
                .kept
                .ge(0)
                .sum_dim_intlist(&[-1i64][..], false, Kind::Int64);
            let visible = route
                .sum_dim_intlist(&[-1i64][..], false, Kind::Int64)
                .unsqueeze(1)
                .expand([b, h, l], false)
                .reshape([rows])
                .clamp_max(topk);
            assert!(
                counts.equal(&visible),
                "{case}: min(top-k, visible) sets kept per token"
            );
        }
    }
}

#[test]
fn cuda_router_rejects_bad_shapes() {
    let Some(kernels) = gpu("cuda_router_rejects_bad_shapes") else {
        return;
    };
    let device = Device::Cuda(0);
    let (q, z, route) = router_case((1, 1, 16, 3, 16, 0), device);
    let err = kernels
        .router_forward(&q, &z, &route, 9, false, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 8"), "{err}");
    let wide = Tensor::zeros([1, 1, 16, 200], (Kind::Float, device));
    let wide_z = Tensor::zeros([1, 1, 3, 200], (Kind::Float, device));
    let err = kernels
        .router_forward(&wide, &wide_z, &route, 0, false, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head dimensions"), "{err}");
    let short = route.narrow(1, 0, 8);
    assert!(kernels
        .router_forward(&q, &z, &short, 0, false, false)
        .is_err());
}

/// The CUDA router under autograd (`--ska-backend cuda`'s router) against the manual
/// tensor-op router on the same GPU: outputs and the gradients of `q` and `z`, in fp32 and
/// bf16 (bf16 token rows read as they are, `z` cast to fp32 inside), with `q` head-major
/// and token-major.
#[test]
fn cuda_router_op_matches_the_manual_op_under_autograd() {
    let Some(_kernels) = gpu("cuda_router_op_matches_the_manual_op_under_autograd") else {
        return;
    };
    use crate::router::Router;
    use crate::OpImpl;
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    for (n, &shape) in ROUTER_SHAPES.iter().enumerate() {
        let topk = shape.5;
        let (q, z, route) = router_case(shape, device);
        let route = route.unsqueeze(1);
        let dout = Tensor::randn(q.size(), (Kind::Float, device));
        for kind in [Kind::Float, Kind::BFloat16] {
            // Inputs rounded to `kind` once; the reference computes on them in fp64, so
            // the comparison measures the kernels' error, not the rounding of the inputs.
            // token_major: q as a [B, L, H, D] tensor viewed per head (the trainer's case).
            let run = |imp: OpImpl, compute: Kind, token_major: bool, narrow: bool| {
                let router = Router::new(imp, topk).unwrap().unwrap();
                let input = |t: &Tensor| t.to_kind(kind).to_kind(compute);
                let qi = input(&q);
                let qi = if token_major {
                    qi.transpose(1, 2).contiguous().transpose(1, 2)
                } else {
                    qi
                };
                let qg = qi.detach().set_requires_grad(true);
                let zg = input(&z).detach().set_requires_grad(true);
                let out = router.forward(&qg, &zg, &route, narrow).unwrap();
                assert_eq!(out.kind(), compute);
                (&out.to_kind(Kind::Double) * &dout.to_kind(Kind::Double))
                    .sum(Kind::Double)
                    .backward();
                assert_eq!(qg.grad().kind(), compute, "gradients keep the input kind");
                (
                    out.to_kind(Kind::Double),
                    qg.grad().to_kind(Kind::Double),
                    zg.grad().to_kind(Kind::Double),
                )
            };
            let want = run(OpImpl::Manual, Kind::Double, false, false);
            // fp32 kernels; bf16 outputs and gradients are rounded to bf16 at the end.
            let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
            // narrow: the per-token forward (these routes are wide: most tokens take its
            // general path, the early ones its lists).
            let cases = [(false, false), (true, false), (true, true)];
            for (token_major, narrow) in cases {
                let got = run(OpImpl::Cuda { ordinal: 0 }, kind, token_major, narrow);
                for (what, g, w) in [
                    ("out", &got.0, &want.0),
                    ("dq", &got.1, &want.1),
                    ("dz", &got.2, &want.2),
                ] {
                    let err = relative_error(g, w);
                    assert!(
                        err <= tol,
                        "shape {n}, {kind:?}, token-major {token_major}, narrow {narrow}, {what}: \
                         relative error {err}"
                    );
                }
            }
        }
    }
}

/// Shapes of the set-attention tests: one set (a batch of one short sequence), set
/// counts below, across and not a multiple of the 64-row block and the 32-set tile,
/// leading partial windows, and head dimensions 16 to 128.
const SET_SHAPES: [(usize, usize, ToyShape, i64); 4] = [
    (
        1,
        8,
        ToyShape {
            window: 8,
            stride: 4,
            k: 32,
            seed: 1,
            leading: false,
        },
        16,
    ),
    (
        2,
        600,
        ToyShape {
            window: 8,
            stride: 4,
            k: 32,
            seed: 2,
            leading: false,
        },
        64,
    ),
    (
        3,
        256,
        ToyShape {
            window: 64,
            stride: 32,
            k: 128,
            seed: 3,
            leading: true,
        },
        128,
    ),
    (
        2,
        300,
        ToyShape {
            window: 16,
            stride: 8,
            k: 64,
            seed: 5,
            leading: false,
        },
        32,
    ),
];

/// One set-attention case on `device`: the layout's `Delta` and mask (with the last set
/// of the first sequence masked off entirely, a row with nothing to attend) and random
/// per-head constants and rows.
struct SetCase {
    delta: Tensor,
    attend: Tensor,
    gamma: Tensor,
    tau: Tensor,
    v: Tensor,
    qa: Tensor,
    kb: Tensor,
    dout: Tensor,
}

impl SetCase {
    /// The case with its rows (`v`, `qa`, `kb`) and the output gradient rounded to
    /// `kind` and back to fp32 (the gradient of a `kind` output arrives in `kind`).
    fn rounded(&self, kind: Kind) -> SetCase {
        let round = |t: &Tensor| t.to_kind(kind).to_kind(Kind::Float);
        SetCase {
            delta: self.delta.shallow_clone(),
            attend: self.attend.shallow_clone(),
            gamma: self.gamma.shallow_clone(),
            tau: self.tau.shallow_clone(),
            v: round(&self.v),
            qa: round(&self.qa),
            kb: round(&self.kb),
            dout: round(&self.dout),
        }
    }
}

fn set_case(n: usize, heads: i64, device: Device) -> SetCase {
    let (batch, len, shape, d) = SET_SHAPES[n];
    let seqs = tokens(fresh_seed() + n as u64, batch, len, 50);
    let layout = layout(&seqs, shape, device);
    let m = layout.max_sets;
    let attend = layout.attend.copy();
    if m > 1 {
        let _ = attend.get(0).get(0).get(m - 1).fill_(0);
    }
    let rows = || Tensor::randn([batch as i64, heads, m, d], (Kind::Float, device));
    SetCase {
        delta: layout.delta.shallow_clone(),
        attend,
        gamma: Tensor::rand([heads], (Kind::Float, device)) * 0.2 + 0.02,
        tau: Tensor::rand([heads], (Kind::Float, device)) * 0.9 + 0.1,
        v: rows(),
        qa: rows() * 0.3,
        kb: rows() * 0.3,
        dout: rows(),
    }
}

/// The set-attention op of `imp` on `case` with rows in `kind` (gamma and tau stay fp32,
/// or fp64 with fp64 rows, as the model's master parameters): the output and the
/// gradients of gamma, tau, v, qa, kb, all as fp64.
fn run_set_attention(
    case: &SetCase,
    imp: crate::OpImpl,
    kind: Kind,
    beta: f64,
) -> Vec<(&'static str, Tensor)> {
    use crate::set_attention::{FusedSetAttention, SetAttentionArgs};
    let op = FusedSetAttention::new(imp, beta).unwrap().unwrap();
    let head_kind = if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let leaf = |t: &Tensor, k: Kind| t.to_kind(k).detach().set_requires_grad(true);
    let (gamma, tau) = (leaf(&case.gamma, head_kind), leaf(&case.tau, head_kind));
    let (v, qa, kb) = (
        leaf(&case.v, kind),
        leaf(&case.qa, kind),
        leaf(&case.kb, kind),
    );
    let content = beta != 0.0;
    let args = SetAttentionArgs {
        delta: &case.delta,
        attend: &case.attend,
        gamma: &gamma,
        tau: &tau,
        v: &v,
        content: content.then_some((&qa, &kb)),
    };
    let out = op.forward(&args).unwrap();
    assert_eq!(out.kind(), kind, "the output keeps the rows' kind");
    (out.to_kind(Kind::Double) * case.dout.to_kind(Kind::Double))
        .sum(Kind::Double)
        .backward();
    assert_eq!(v.grad().kind(), kind, "gradients keep the input kind");
    let mut all = vec![
        ("out", out.detach()),
        ("dgamma", gamma.grad()),
        ("dtau", tau.grad()),
        ("dv", v.grad()),
    ];
    if content {
        all.extend([("dqa", qa.grad()), ("dkb", kb.grad())]);
    }
    all.into_iter()
        .map(|(name, t)| (name, t.to_kind(Kind::Double)))
        .collect()
}

/// The fused set attention (forward and every gradient, under autograd) against the
/// manual tensor-op op in fp64 on the same inputs: fp32 within 1e-5 relative, bf16 rows
/// within 1e-2; with and without the content term; a masked-off row gives zeros and
/// finite gradients; two backward passes give the same bits.
#[test]
fn cuda_set_attention_matches_the_reference_in_fp32_and_bf16_and_repeats_bit_for_bit() {
    let test = "cuda_set_attention_matches_the_reference_in_fp32_and_bf16_and_repeats_bit_for_bit";
    let Some(_kernels) = gpu(test) else {
        return;
    };
    use crate::OpImpl;
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    let cuda = OpImpl::Cuda { ordinal: 0 };
    let mut failures = Vec::new();
    for n in 0..SET_SHAPES.len() {
        let case = set_case(n, 3, device);
        let rounded = case.rounded(Kind::BFloat16);
        for beta in [0.0, 0.8] {
            let want = run_set_attention(&case, OpImpl::Manual, Kind::Double, beta);
            // bf16 rows: against the fp64 reference on the same bf16-rounded rows, so the
            // comparison measures the kernels' error, not the rounding of the inputs.
            let want_bf16 = run_set_attention(&rounded, OpImpl::Manual, Kind::Double, beta);
            for (kind, tol, want) in [
                (Kind::Float, 1e-5, &want),
                (Kind::BFloat16, 1e-2, &want_bf16),
            ] {
                let got = run_set_attention(&case, cuda, kind, beta);
                assert_eq!(got.len(), want.len());
                for ((name, g), (_, w)) in got.iter().zip(want) {
                    let finite = bool::try_from(g.isfinite().all()).unwrap();
                    let err = relative_error(g, w);
                    let line = format!("shape {n}, beta {beta}, {kind:?}, {name}: {err:.2e}");
                    if !finite || err > tol {
                        failures.push(format!("{line} (finite: {finite}, tolerance {tol})"));
                    }
                }
            }
            let again = run_set_attention(&case, cuda, Kind::Float, beta);
            let first = run_set_attention(&case, cuda, Kind::Float, beta);
            for ((name, a), (_, b)) in again.iter().zip(&first) {
                assert!(
                    a.equal(b),
                    "shape {n}, beta {beta}: {name} differs between runs"
                );
            }
            let m = case.delta.size()[1];
            if m > 1 {
                let masked = want[0].1.get(0).select(1, m - 1);
                assert_eq!(masked.abs().max().double_value(&[]), 0.0);
                let row = first[0].1.get(0).select(1, m - 1);
                assert_eq!(row.abs().max().double_value(&[]), 0.0, "masked-off row");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The forward overwrites every element of poisoned (NaN) output buffers: the output,
/// and the log-sum-exp, which is `-inf` exactly for the masked-off row.
#[test]
fn cuda_set_attention_forward_overwrites_poisoned_outputs() {
    let test = "cuda_set_attention_forward_overwrites_poisoned_outputs";
    let Some(kernels) = gpu(test) else {
        return;
    };
    let device = Device::Cuda(0);
    for n in 0..SET_SHAPES.len() {
        let case = set_case(n, 2, device);
        let inputs = crate::cuda::SetAttentionInputs {
            delta: &case.delta,
            attend: &case.attend,
            gamma: &case.gamma,
            tau: &case.tau,
            v: &case.v,
            content: Some((&case.qa, &case.kb, 0.5)),
        };
        let mut out = Tensor::full(case.v.size(), f64::NAN, (Kind::Float, device));
        let mut lse = Tensor::full(&case.v.size()[..3], f64::NAN, (Kind::Float, device));
        kernels
            .set_attention_forward_into(&inputs, &mut out, &mut lse)
            .unwrap();
        assert!(
            bool::try_from(out.isfinite().all()).unwrap(),
            "shape {n}: out"
        );
        let m = case.delta.size()[1];
        let infinite = lse.isinf().sum(Kind::Int64).int64_value(&[]);
        let want = if m > 1 { 2 } else { 0 }; // the masked row, in both heads
        assert!(
            bool::try_from(lse.isnan().any().logical_not()).unwrap(),
            "shape {n}: lse NaN"
        );
        assert_eq!(infinite, want, "shape {n}: -inf rows of lse");
    }
}

/// Split inner ranges (grid z: partial sums merged in range order) against one range:
/// the forward and every gradient within fp32 rounding, poisoned outputs overwritten,
/// each split the same bits run to run, and a split of one tile per range on shapes of
/// several tiles (so the merge really runs).
#[test]
fn cuda_set_attention_split_ranges_match_one_range_and_repeat_bit_for_bit() {
    use crate::cuda::SetSplit;
    let test = "cuda_set_attention_split_ranges_match_one_range_and_repeat_bit_for_bit";
    let Some(kernels) = gpu(test) else {
        return;
    };
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    let mut split_shapes = 0;
    for n in 0..SET_SHAPES.len() {
        let case = set_case(n, 2, device);
        let m = case.delta.size()[1];
        split_shapes += usize::from(m > 32);
        for content in [None, Some((&case.qa, &case.kb, 0.7))] {
            let inputs = crate::cuda::SetAttentionInputs {
                delta: &case.delta,
                attend: &case.attend,
                gamma: &case.gamma,
                tau: &case.tau,
                v: &case.v,
                content,
            };
            let run = |split: SetSplit| {
                let mut out = Tensor::full(case.v.size(), f64::NAN, (Kind::Float, device));
                let mut lse = Tensor::full(&case.v.size()[..3], f64::NAN, (Kind::Float, device));
                kernels
                    .set_attention_forward_split(&inputs, &mut out, &mut lse, split)
                    .unwrap();
                let grads = kernels
                    .set_attention_backward_split(&inputs, &out, &lse, &case.dout, split)
                    .unwrap();
                let mut all = vec![out, lse, grads.dv, grads.dgamma, grads.dtau];
                all.extend(grads.dqa);
                all.extend(grads.dkb);
                all
            };
            let one = run(SetSplit::Ranges(1));
            for split in [SetSplit::Ranges(3), SetSplit::Ranges(1000), SetSplit::Auto] {
                let got = run(split);
                let again = run(split);
                let case_name = format!(
                    "shape {n} (m {m}), content {}, {split:?}",
                    content.is_some()
                );
                assert_eq!(got.len(), one.len());
                for (k, (g, w)) in got.iter().zip(&one).enumerate() {
                    assert!(
                        bool::try_from(g.isnan().any().logical_not()).unwrap(),
                        "{case_name}: output {k} has NaN (a poisoned element left)"
                    );
                    let finite = g.isfinite();
                    assert!(
                        finite.equal(&w.isfinite()),
                        "{case_name}: output {k}: -inf rows"
                    );
                    let err = relative_error(&g.masked_select(&finite), &w.masked_select(&finite));
                    assert!(
                        err <= 1e-5,
                        "{case_name}: output {k}: relative error {err:.2e}"
                    );
                    assert!(
                        g.equal(&again[k]),
                        "{case_name}: output {k} must repeat bit for bit"
                    );
                }
            }
        }
    }
    assert!(
        split_shapes >= 2,
        "the shapes must have several tiles of sets"
    );
}

/// Bad inputs are errors naming the tensor, never a launch.
#[test]
fn cuda_set_attention_rejects_bad_shapes() {
    let test = "cuda_set_attention_rejects_bad_shapes";
    let Some(kernels) = gpu(test) else {
        return;
    };
    let device = Device::Cuda(0);
    let case = set_case(3, 2, device);
    let wide = Tensor::zeros([2, 2, case.v.size()[2], 200], (Kind::Float, device));
    let short_gamma = case.gamma.narrow(0, 0, 1);
    let cpu_v = case.v.to_device(Device::Cpu);
    for (what, v, gamma) in [
        ("head dimension", &wide, &case.gamma),
        ("gamma", &case.v, &short_gamma),
        ("cuda:0", &cpu_v, &case.gamma),
    ] {
        let inputs = crate::cuda::SetAttentionInputs {
            delta: &case.delta,
            attend: &case.attend,
            gamma,
            tau: &case.tau,
            v,
            content: None,
        };
        let err = kernels
            .set_attention_forward(&inputs)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
}

#[test]
fn cuda_layer_norm_to_half_matches_the_manual_op_and_repeats_bit_for_bit() {
    let test = "cuda_layer_norm_to_half_matches_the_manual_op_and_repeats_bit_for_bit";
    let Some(_kernels) = gpu(test) else {
        return;
    };
    use crate::tests::{layer_norm_run, norm_error};
    use crate::OpImpl;
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    let f32s = (Kind::Float, device);
    // One row; rows not a multiple of the block's 8 or of the backward's 32; sizes below,
    // across and at the 32-lane width and the 1024 limit.
    for (rows, cols) in [(1, 1), (37, 100), (300, 768), (5, 1024), (64, 33)] {
        let x = Tensor::randn([rows, cols], f32s) * 3.0 + 5.0;
        let (w, b) = (Tensor::randn([cols], f32s), Tensor::randn([cols], f32s));
        let weights = Tensor::randn([rows, cols], f32s);
        for out in [Kind::BFloat16, Kind::Half] {
            let want = layer_norm_run(OpImpl::Manual, [&x, &w, &b], &weights, out);
            let cuda = OpImpl::Cuda { ordinal: 0 };
            let got = layer_norm_run(cuda, [&x, &w, &b], &weights, out);
            let again = layer_norm_run(cuda, [&x, &w, &b], &weights, out);
            // A row of one column normalizes to 0: y = b exactly, dx = 0.
            let err = norm_error(&got[0], &want[0]);
            assert!(err < 4e-3, "{rows}x{cols} {out:?} y: relative error {err}");
            for (i, name) in [(1, "dx"), (2, "dw"), (3, "db")] {
                let err = if cols == 1 && name == "dx" {
                    got[i].abs().max().double_value(&[])
                } else {
                    norm_error(&got[i], &want[i])
                };
                assert!(err < 1e-5, "{rows}x{cols} {out:?} {name}: error {err}");
                assert!(
                    got[i].equal(&again[i]),
                    "{rows}x{cols} {out:?} {name}: two runs differ"
                );
            }
        }
    }
}

/// The kernels follow libtorch's current stream: the set attention and the router,
/// forward and backward under autograd, on a pool stream (which neither waits for the
/// legacy default stream nor is waited for by it) give the same bits as on the default
/// stream, although every input is written on the pool stream just before, behind a few
/// milliseconds of matmuls: kernels launched on any other stream would read the inputs
/// unwritten.
#[test]
fn cuda_ops_follow_libtorchs_current_stream() {
    let Some(_kernels) = gpu("cuda_ops_follow_libtorchs_current_stream") else {
        return;
    };
    use crate::router::Router;
    use crate::set_attention::{FusedSetAttention, SetAttentionArgs};
    use crate::shim::PoolStream;
    use crate::OpImpl;
    let device = Device::Cuda(0);
    let cuda = OpImpl::Cuda { ordinal: 0 };
    tch::manual_seed(fresh_seed() as i64);
    let case = set_case(2, 4, device);
    let shape = ROUTER_SHAPES[3];
    let (q, z, route) = router_case(shape, device);
    let route = route.unsqueeze(1);
    let router_dout = Tensor::randn(q.size(), (Kind::Float, device));
    let attention = FusedSetAttention::new(cuda, 0.5).unwrap().unwrap();
    let router = Router::new(cuda, shape.5).unwrap().unwrap();
    tch::Cuda::synchronize(0);
    let run = |on_pool_stream: bool| -> Vec<Tensor> {
        let stream = on_pool_stream.then(|| PoolStream::enter(0).expect("a pool stream"));
        if let Some(stream) = &stream {
            let current = crate::shim::cuda_current_stream(0).unwrap();
            assert_eq!(current, stream.handle(), "the pool stream is current");
        }
        let busy = Tensor::randn([2048, 2048], (Kind::Float, device));
        for _ in 0..24 {
            let _ = busy.matmul(&busy);
        }
        let leaf = |t: &Tensor| t.copy().detach().set_requires_grad(true);
        let (gamma, tau, v, qa, kb) = (
            leaf(&case.gamma),
            leaf(&case.tau),
            leaf(&case.v),
            leaf(&case.qa),
            leaf(&case.kb),
        );
        let (qg, zg) = (leaf(&q), leaf(&z));
        let args = SetAttentionArgs {
            delta: &case.delta.copy(),
            attend: &case.attend.copy(),
            gamma: &gamma,
            tau: &tau,
            v: &v,
            content: Some((&qa, &kb)),
        };
        let set_out = attention.forward(&args).unwrap();
        let routed = router.forward(&qg, &zg, &route.copy(), false).unwrap();
        let loss =
            (&set_out * &case.dout).sum(Kind::Float) + (&routed * &router_dout).sum(Kind::Float);
        loss.backward();
        let all = vec![
            set_out.detach(),
            routed.detach(),
            gamma.grad(),
            tau.grad(),
            v.grad(),
            qa.grad(),
            kb.grad(),
            qg.grad(),
            zg.grad(),
        ];
        tch::Cuda::synchronize(0);
        all
    };
    let on_default = run(false);
    let on_pool = run(true);
    let names = [
        "set out",
        "router out",
        "dgamma",
        "dtau",
        "dv",
        "dqa",
        "dkb",
        "dq",
        "dz",
    ];
    for ((name, a), b) in names.iter().zip(&on_default).zip(&on_pool) {
        assert!(
            a.equal(b),
            "{name}: the pool-stream run differs from the default-stream run"
        );
    }
}

/// The pooling kernels against the manual op (in fp64): the pooled rows and the table's
/// gradient within 1e-5, both the same bits on a second run, and every output row
/// written (the forward's output block is the one a freed NaN tensor of the same size
/// left in libtorch's caching allocator). Row widths: a multiple of 4 (16-byte loads),
/// one that is not (element loads), one over two column chunks, the trainer's 768. A
/// 40-id vocabulary over 300-token sequences makes long runs of one atom (more than the
/// four partial sums of a thread) and repeats within a sequence.
#[test]
fn cuda_pooling_matches_the_manual_op_and_repeats_bit_for_bit() {
    let test = "cuda_pooling_matches_the_manual_op_and_repeats_bit_for_bit";
    let Some(_kernels) = gpu(test) else {
        return;
    };
    use crate::pool::AtomPool;
    use crate::pool_atoms_with;
    use crate::OpImpl;
    let device = Device::Cuda(0);
    let seed = fresh_seed();
    tch::manual_seed(seed as i64);
    let manual = AtomPool::new(OpImpl::Manual).unwrap().expect("a manual op");
    let cuda = AtomPool::new(OpImpl::Cuda { ordinal: 0 })
        .unwrap()
        .expect("a CUDA op");
    let vocab = 40;
    let shape = ToyShape {
        window: 16,
        stride: 8,
        k: 8,
        seed: 3,
        leading: false,
    };
    let layout = layout(&tokens(seed, 3, 300, vocab as u32), shape, device);
    let run = |op: &AtomPool, table: &Tensor, weights: &Tensor| -> (Tensor, Tensor) {
        let table = table.detach().set_requires_grad(true);
        let pooled = pool_atoms_with(Some(op), &table, &layout);
        let loss = (&pooled * weights.to_kind(pooled.kind())).sum(pooled.kind());
        let grad = Tensor::run_backward(&[loss], &[&table], false, false);
        (pooled.detach(), grad[0].shallow_clone())
    };
    for dim in [64, 6, 130, 768] {
        let table = Tensor::randn([vocab, dim], (Kind::Float, device));
        let weights = Tensor::randn([layout.batch, layout.max_sets, dim], (Kind::Float, device));
        let (want, want_grad) = run(&manual, &table.to_kind(Kind::Double), &weights);
        drop(Tensor::full(
            [layout.batch * layout.max_sets, dim],
            f64::NAN,
            (Kind::Float, device),
        ));
        let (got, got_grad) = run(&cuda, &table, &weights);
        assert!(
            !bool::try_from(got.isnan().any()).unwrap(),
            "dim {dim}: an output row was left unwritten (seed {seed})"
        );
        let err = relative_error(&got, &want);
        assert!(
            err < 1e-5,
            "dim {dim}: pooled rows off by {err} (seed {seed})"
        );
        let err = relative_error(&got_grad, &want_grad);
        assert!(
            err < 1e-5,
            "dim {dim}: table gradient off by {err} (seed {seed})"
        );
        let (again, again_grad) = run(&cuda, &table, &weights);
        assert!(got.equal(&again), "dim {dim}: two forwards differ");
        assert!(
            got_grad.equal(&again_grad),
            "dim {dim}: two backwards differ"
        );
    }
}

/// A CUDA graph of a whole step (the fused set attention and router, forward and backward
/// under autograd, with libtorch's ops around them) replayed on new inputs gives the
/// eager step's outputs and gradients bit for bit; tensors allocated after the capture
/// keep their values through replays (the capture's temporaries live in the graph's
/// private pool); a step that waits for the GPU fails to capture with an error and
/// leaves the stream usable; the legacy default stream is refused.
#[test]
fn cuda_graph_replays_a_step_on_new_inputs() {
    let Some(_kernels) = gpu("cuda_graph_replays_a_step_on_new_inputs") else {
        return;
    };
    use crate::graph::StepGraph;
    use crate::router::Router;
    use crate::set_attention::{FusedSetAttention, SetAttentionArgs};
    use crate::shim::PoolStream;
    use crate::OpImpl;
    let device = Device::Cuda(0);
    let cuda = OpImpl::Cuda { ordinal: 0 };
    tch::manual_seed(fresh_seed() as i64);
    let refused = StepGraph::capture(0, &[], || Tensor::ones([4], (Kind::Float, device)));
    assert!(
        refused.is_err(),
        "a capture on the legacy default stream must be refused"
    );
    let _side = PoolStream::enter(0).expect("a pool stream");
    let case = set_case(2, 4, device);
    let shape = ROUTER_SHAPES[3];
    let (q, z, route) = router_case(shape, device);
    let route = route.unsqueeze(1);
    let router_dout = Tensor::randn(q.size(), (Kind::Float, device));
    let attention = FusedSetAttention::new(cuda, 0.5).unwrap().unwrap();
    let router = Router::new(cuda, shape.5).unwrap().unwrap();
    let leaf = |t: &Tensor| t.copy().detach().set_requires_grad(true);
    let leaves = [
        leaf(&case.v),
        leaf(&case.qa),
        leaf(&case.kb),
        leaf(&q),
        leaf(&z),
    ];
    let step = || {
        let [v, qa, kb, qg, zg] = &leaves;
        let args = SetAttentionArgs {
            delta: &case.delta,
            attend: &case.attend,
            gamma: &case.gamma,
            tau: &case.tau,
            v,
            content: Some((qa, kb)),
        };
        let set_out = attention.forward(&args).unwrap();
        // The per-token forward (a hint only: its results do not depend on the route).
        let routed = router.forward(qg, zg, &route, true).unwrap();
        let loss =
            (&set_out * &case.dout).sum(Kind::Float) + (&routed * &router_dout).sum(Kind::Float);
        loss.backward();
        (set_out.detach(), routed.detach())
    };
    let zero_grads = || {
        for l in &leaves {
            let _ = l.grad().zero_();
        }
    };
    let results = |(set_out, routed): &(Tensor, Tensor)| -> Vec<Tensor> {
        let mut all = vec![set_out.copy(), routed.copy()];
        all.extend(leaves.iter().map(|l| l.grad().copy()));
        all
    };
    let draw = |scale: f64| -> Vec<Tensor> {
        leaves
            .iter()
            .map(|l| Tensor::randn(l.size(), (Kind::Float, device)) * scale)
            .collect()
    };
    let load = |values: &[Tensor]| {
        tch::no_grad(|| {
            for (l, v) in leaves.iter().zip(values) {
                l.detach().copy_(v);
            }
        })
    };
    // Eager: the reference on a second draw of inputs (gradients from zero).
    let _ = step(); // warm-up: the gradients exist from here on
    let second = draw(0.5);
    load(&second);
    zero_grads();
    let eager = results(&step());
    // Capture on the first inputs, then feed the second draw and replay.
    zero_grads();
    let (graph, outputs) =
        StepGraph::capture(0, &leaves.iter().collect::<Vec<_>>(), step).expect("the step captures");
    let fillers: Vec<Tensor> = (0..8)
        .map(|i| Tensor::full([1 << 18], f64::from(i) + 7.0, (Kind::Float, device)))
        .collect();
    load(&second);
    zero_grads();
    graph.replay().expect("a replay");
    graph.replay().expect("a replay");
    zero_grads();
    graph.replay().expect("a replay");
    tch::Cuda::synchronize(0);
    let replayed = results(&outputs);
    let names = ["set out", "router out", "dv", "dqa", "dkb", "dq", "dz"];
    for ((name, a), b) in names.iter().zip(&eager).zip(&replayed) {
        assert!(
            a.equal(b),
            "{name}: the graph replay differs from the eager step on the same inputs"
        );
    }
    for (i, f) in fillers.iter().enumerate() {
        let want = i as f64 + 7.0;
        assert_eq!(
            f.min().double_value(&[]),
            want,
            "a tensor allocated after the capture was overwritten by a replay"
        );
        assert_eq!(f.max().double_value(&[]), want);
    }
    drop(graph);
    // A step that reads a value back to the host cannot be captured: an error, not a
    // panic, and the stream works afterwards.
    let x = Tensor::randn([64, 64], (Kind::Float, device));
    let failed = StepGraph::capture(0, &[], || (x.matmul(&x).sum(Kind::Float)).double_value(&[]));
    let message = failed
        .expect_err("a synchronizing step must not capture")
        .to_string();
    assert!(message.contains("CUDA graph"), "{message}");
    let after = x.matmul(&x);
    let on_cpu = x.to_device(Device::Cpu).matmul(&x.to_device(Device::Cpu));
    assert!(
        (after.to_device(Device::Cpu) - on_cpu)
            .abs()
            .max()
            .double_value(&[])
            < 1e-3,
        "the stream computes correctly after a failed capture"
    );
}

/// `linear_kind` on the GPU (the op with the one-row-GEMM bias gradient) against
/// libtorch's linear under autograd at a projection's shape with fp32 master weights, for
/// every compute kind the trainer has (bf16, fp16: gradients written in fp32 from the
/// GEMMs' accumulators, libtorch's rounded to the half kind first; fp32: the same GEMMs):
/// outputs equal, gradients of the input, weight and bias within the kind's rounding
/// (relative 1e-2 in half kinds, 1e-5 in fp32), in the master kind, and the same bits on a
/// second run.
#[test]
fn cuda_linear_matches_libtorchs_linear_and_repeats_bit_for_bit() {
    let Some(_kernels) = gpu("cuda_linear_matches_libtorchs_linear_and_repeats_bit_for_bit") else {
        return;
    };
    let device = Device::Cuda(0);
    tch::manual_seed(fresh_seed() as i64);
    for (kind, tolerance) in [
        (Kind::BFloat16, 1e-2),
        (Kind::Half, 1e-2),
        (Kind::Float, 1e-5),
    ] {
        let vs = tch::nn::VarStore::new(device);
        let linear = tch::nn::linear(vs.root() / "proj", 96, 160, Default::default());
        let x = Tensor::randn([4, 300, 96], (Kind::Float, device))
            .to_kind(kind)
            .set_requires_grad(true);
        let dy = Tensor::randn([4, 300, 160], (kind, device));
        let run = |ours: bool| {
            for p in [&x, &linear.ws, linear.bs.as_ref().unwrap()] {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let y = if ours {
                crate::linear_kind(&linear, &x)
            } else {
                let bias = linear.bs.as_ref().map(|b| b.to_kind(kind));
                x.linear(&linear.ws.to_kind(kind), bias.as_ref())
            };
            crate::shim::backward_with_grad(&y, &dy).unwrap();
            vec![
                y.detach().to_kind(Kind::Float),
                x.grad().to_kind(Kind::Float),
                linear.ws.grad().copy(),
                linear.bs.as_ref().unwrap().grad().copy(),
            ]
        };
        let reference = run(false);
        let ours = run(true);
        let again = run(true);
        let names = ["y", "dx", "dw", "db"];
        for (name, (a, r)) in names.iter().zip(ours.iter().zip(&reference)) {
            let err = relative_error(a, r);
            assert!(err <= tolerance, "{kind:?} {name}: relative error {err}");
        }
        for (name, (a, r)) in names.iter().zip(ours.iter().zip(&again)) {
            assert!(a.equal(r), "{kind:?} {name} differs between two runs");
        }
        assert_eq!(
            ours[2].kind(),
            Kind::Float,
            "{kind:?}: the weight gradient in the master kind"
        );
        assert_eq!(
            ours[3].kind(),
            Kind::Float,
            "{kind:?}: the bias gradient in the master kind"
        );
    }
}
