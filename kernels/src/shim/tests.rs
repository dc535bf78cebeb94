//! The shim: its CUDA calls fail cleanly without CUDA and answer with it, and the fused
//! AdamW step matches AdamW written out in f64.

use tch::{Device, Kind, Tensor};

use super::*;

/// On a machine without a GPU every CUDA call is an error with a one-line message; on a
/// GPU machine (libtorch_cuda is loaded before `main` in this binary, see
/// `cuda::LOAD_LIBTORCH_CUDA_BEFORE_MAIN`) they answer.
#[test]
fn cuda_calls_fail_with_a_message_without_cuda_and_answer_with_it() {
    if crate::cuda::load_libtorch_cuda_for_tests() && tch::Cuda::is_available() {
        // The caching allocator answers once CUDA is initialized, which the first tensor
        // on the device does (the trainer asks only after its model is there).
        let _first = Tensor::zeros([1], (Kind::Float, Device::Cuda(0)));
        let (free, total) = cuda_mem_info(0).expect("a GPU is present");
        assert!(free > 0 && free <= total, "free {free} of {total}");
        cuda_memory(0).expect("allocator statistics on a GPU");
        cuda_reset_peak(0).expect("peak reset on a GPU");
        let before = cuda_current_stream(0).expect("the current stream on a GPU");
        {
            let side = PoolStream::enter(0).expect("a pool stream on a GPU");
            assert_ne!(side.handle(), 0, "a pool stream is not the legacy stream");
            assert_eq!(
                cuda_current_stream(0).expect("current stream"),
                side.handle()
            );
        }
        assert_eq!(cuda_current_stream(0).expect("current stream"), before);
        return;
    }
    let errors = [
        cuda_memory(0).err(),
        cuda_reset_peak(0).err(),
        cuda_mem_info(0).err(),
        cuda_current_stream(0).err(),
        PoolStream::enter(0).err().map(|e| ShimError(e.0)),
        // The CUDA graph pool (its own translation unit): an error, not a crash.
        super::cuda_graph_pool_begin(0, 1, 1 << 48).err(),
        super::cuda_graph_pool_end(0, 1 << 48).err(),
        super::cuda_graph_pool_release(0, 1 << 48).err(),
        // And a capture as a whole.
        crate::graph::StepGraph::capture(0, &[], || ())
            .err()
            .map(|e| ShimError(e.to_string())),
    ];
    for e in errors {
        let e = e.expect("no CUDA in this process: the call must fail");
        assert!(!e.0.is_empty());
        assert!(
            !e.0.contains("Exception raised from"),
            "the message carries no C++ backtrace: {}",
            e.0
        );
    }
}

/// Two parameters (a decayed matrix, an undecayed vector) with gradient `grads` each.
fn setup(grads: [&[f32]; 2]) -> (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, Tensor) {
    let params = vec![
        Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25])
            .view([2, 2])
            .set_requires_grad(true),
        Tensor::from_slice(&[1.0f32, -0.5]).set_requires_grad(true),
    ];
    give_grads(&params, grads);
    let m = params.iter().map(|p| p.zeros_like()).collect();
    let v = params.iter().map(|p| p.zeros_like()).collect();
    (params, m, v, Tensor::zeros([], (Kind::Float, Device::Cpu)))
}

/// Sets `p.grad = g` through a backward of `sum(p * g)`.
fn give_grads(params: &[Tensor], grads: [&[f32]; 2]) {
    let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for (p, g) in params.iter().zip(grads) {
        loss += (p * Tensor::from_slice(g).view(p.size().as_slice())).sum(Kind::Float);
    }
    loss.backward();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

const HYPER: AdamWHyper = AdamWHyper {
    lr: 0.1,
    beta1: 0.9,
    beta2: 0.95,
    weight_decay: 0.1,
    eps: 0.5,
    max_norm: 0.0,
    unscale: 1.0,
};

/// AdamW in f64 for one parameter: returns (p, m, v) after a step at count `t` with
/// gradient `g` already clipped and unscaled.
fn reference(
    p: &[f64],
    m: &[f64],
    v: &[f64],
    g: &[f64],
    t: i32,
    decay: bool,
    h: AdamWHyper,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (c1, c2) = (1.0 - h.beta1.powi(t), 1.0 - h.beta2.powi(t));
    let mut out = (vec![], vec![], vec![]);
    for i in 0..p.len() {
        let m1 = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
        let v1 = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
        let wd = if decay { h.lr * h.weight_decay } else { 0.0 };
        let p1 = p[i] * (1.0 - wd) - h.lr * (m1 / c1) / ((v1 / c2).sqrt() + h.eps);
        out.0.push(p1);
        out.1.push(m1);
        out.2.push(v1);
    }
    out
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn fused_adamw_matches_adamw_with_clipping_decay_and_unscaling() {
    let g0: [&[f32]; 2] = [&[0.4, -0.2, 0.1, 0.3], &[-0.6, 0.2]];
    let (mut params, mut m, mut v, mut step) = setup(g0);
    let decay = [true, false];
    let mut p_ref: Vec<Vec<f64>> = params.iter().map(values).collect();
    let mut m_ref = [vec![0.0; 4], vec![0.0; 2]];
    let mut v_ref = [vec![0.0; 4], vec![0.0; 2]];
    let g1: [&[f32]; 2] = [&[4.0, 2.0, -8.0, 1.0], &[3.0, -5.0]];
    // Step 1 unclipped; step 2 with gradients 4x too large (unscale 4) and clipped to 0.5.
    for (t, grads, hyper) in [
        (1, g0, HYPER),
        (
            2,
            g1,
            AdamWHyper {
                max_norm: 0.5,
                unscale: 4.0,
                ..HYPER
            },
        ),
    ] {
        if t == 2 {
            set_grads_to_none(&mut params).unwrap();
            assert!(!params[0].grad().defined(), "set_grads_to_none drops them");
            give_grads(&params, grads);
        }
        let unscaled: Vec<Vec<f64>> = grads
            .iter()
            .map(|g| g.iter().map(|&x| f64::from(x) / hyper.unscale).collect())
            .collect();
        let norm: f64 = unscaled.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let clip = if hyper.max_norm > 0.0 {
            (hyper.max_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let got = adamw_step(
            AdamWState {
                params: &mut params,
                exp_avg: &mut m,
                exp_avg_sq: &mut v,
                decay: &decay,
                step: &mut step,
            },
            hyper,
        )
        .unwrap();
        assert!(
            (got.double_value(&[]) - norm).abs() < 1e-5,
            "norm before clipping"
        );
        assert_eq!(step.double_value(&[]), f64::from(t));
        for i in 0..2 {
            let g: Vec<f64> = unscaled[i].iter().map(|x| x * clip).collect();
            let (p1, m1, v1) = reference(&p_ref[i], &m_ref[i], &v_ref[i], &g, t, decay[i], hyper);
            close(&values(&params[i]), &p1);
            close(&values(&m[i]), &m1);
            close(&values(&v[i]), &v1);
            (p_ref[i], m_ref[i], v_ref[i]) = (p1, m1, v1);
        }
    }
}

#[test]
fn a_non_finite_gradient_skips_the_step_and_its_count() {
    let (mut params, mut m, mut v, mut step) =
        setup([&[f32::INFINITY, 0.0, 1.0, 1.0], &[1.0, 1.0]]);
    let before: Vec<Vec<f64>> = params.iter().map(values).collect();
    let norm = adamw_step(
        AdamWState {
            params: &mut params,
            exp_avg: &mut m,
            exp_avg_sq: &mut v,
            decay: &[true, false],
            step: &mut step,
        },
        AdamWHyper {
            max_norm: 1.0,
            ..HYPER
        },
    )
    .unwrap();
    assert!(!norm.double_value(&[]).is_finite());
    assert_eq!(step.double_value(&[]), 0.0, "the count does not advance");
    for (p, b) in params.iter().zip(&before) {
        assert_eq!(&values(p), b, "no update");
    }
    assert!(values(&m[1]).iter().all(|&x| x == 0.0), "no moment update");
}

#[test]
fn adamw_step_rejects_mismatched_state() {
    let (mut params, mut m, mut v, _) = setup([&[0.0; 4], &[0.0; 2]]);
    let mut step = Tensor::zeros([], (Kind::Int64, Device::Cpu));
    let err = adamw_step(
        AdamWState {
            params: &mut params,
            exp_avg: &mut m,
            exp_avg_sq: &mut v,
            decay: &[true, false],
            step: &mut step,
        },
        HYPER,
    )
    .unwrap_err();
    assert!(err.0.contains("step count"), "{err}");
    let mut step = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let err = adamw_step(
        AdamWState {
            params: &mut params,
            exp_avg: &mut m[..1],
            exp_avg_sq: &mut v,
            decay: &[true, false],
            step: &mut step,
        },
        HYPER,
    )
    .unwrap_err();
    assert!(err.0.contains("moments"), "{err}");
}

/// Test ops for the autograd bridge: `y = 3 x` (and a second output `x^2` that a loss may
/// ignore), failing in forward or backward, panicking, or returning the wrong number of
/// gradients, as asked.
struct TestOp {
    fail: Option<&'static str>,
}

impl autograd::CustomOp for TestOp {
    fn name(&self) -> &str {
        "test op"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<autograd::Forward, String> {
        match self.fail {
            Some("forward") => return Err("forward refused".into()),
            Some("forward panic") => panic!("forward panicked"),
            _ => {}
        }
        let x = &inputs[0];
        Ok(autograd::Forward {
            outputs: vec![x * 3.0, x * x],
            saved: vec![x.shallow_clone()],
        })
    }

    fn backward(&self, saved: &[Tensor], grads: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
        match self.fail {
            Some("backward") => return Err("backward refused".into()),
            Some("backward panic") => panic!("backward panicked"),
            Some("count") => return Ok(vec![]),
            _ => {}
        }
        assert_eq!(grads.len(), 2, "one gradient per output");
        Ok(vec![Some(&grads[0] * 3.0 + &grads[1] * &saved[0] * 2.0)])
    }
}

fn test_op(fail: Option<&'static str>) -> autograd::OpHandle {
    autograd::OpHandle::register(std::sync::Arc::new(TestOp { fail }))
}

#[test]
fn a_rust_op_runs_under_autograd_and_its_unused_output_gets_a_zero_gradient() {
    let mut x = Tensor::from_slice(&[1.0f64, -2.0, 0.5]).set_requires_grad(true);
    let op = test_op(None);
    let out = op.apply(&[&x]).unwrap();
    assert_eq!(out.len(), 2);
    assert!(out[0].requires_grad(), "the output is part of the graph");
    assert_eq!(Vec::<f64>::try_from(&out[0]).unwrap(), vec![3.0, -6.0, 1.5]);
    // Only the first output reaches the loss: d/dx sum(3x) = 3.
    out[0].sum(Kind::Double).backward();
    assert_eq!(Vec::<f64>::try_from(x.grad()).unwrap(), vec![3.0; 3]);
    // Both outputs: 3 + 2x.
    x.zero_grad();
    let out = op.apply(&[&x]).unwrap();
    (&out[0] + &out[1]).sum(Kind::Double).backward();
    assert_eq!(
        Vec::<f64>::try_from(x.grad()).unwrap(),
        vec![5.0, -1.0, 4.0]
    );
}

#[test]
fn failures_in_a_rust_op_are_errors_not_crashes() {
    let mut x = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
    for (fail, want) in [
        ("forward", "forward refused"),
        ("forward panic", "forward panicked"),
    ] {
        let err = test_op(Some(fail)).apply(&[&x]).unwrap_err().0;
        assert!(
            err.contains("test op") || err.contains(want),
            "{fail}: {err}"
        );
        assert!(err.contains(want), "{fail}: {err}");
        assert!(!err.contains("Exception raised from"), "{fail}: {err}");
    }
    for (fail, want) in [
        ("backward", "backward refused"),
        ("backward panic", "backward panicked"),
        ("count", "0 gradients for 1 inputs"),
    ] {
        let out = test_op(Some(fail)).apply(&[&x]).unwrap();
        let err = out[0]
            .sum(Kind::Double)
            .f_backward()
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{fail}: {err}");
    }
    // The process and the bridge still work afterwards.
    x.zero_grad();
    let out = test_op(None).apply(&[&x]).unwrap();
    out[0].sum(Kind::Double).backward();
    assert_eq!(Vec::<f64>::try_from(x.grad()).unwrap(), vec![3.0, 3.0]);
}

/// `backward_with_grad` is `out.backward(grad)`: leaf gradients are the vector-Jacobian
/// product with `grad`, they accumulate over calls, and a shape mismatch is an error.
#[test]
fn backward_with_grad_accumulates_the_vector_jacobian_product() {
    let x = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
    let g = Tensor::from_slice(&[0.5f64, 2.0, -1.0]);
    let y = &x * &x * 3.0; // dy/dx = 6x
    backward_with_grad(&y, &g).expect("backward");
    assert_eq!(values(&x.grad()), vec![3.0, -24.0, -18.0]);
    let y = &x * 2.0;
    backward_with_grad(&y, &g).expect("second backward");
    assert_eq!(values(&x.grad()), vec![4.0, -20.0, -20.0]);
    let y = &x * 2.0;
    let err = backward_with_grad(&y, &Tensor::ones([2], (Kind::Double, Device::Cpu)))
        .expect_err("a gradient of the wrong shape");
    assert!(!err.to_string().is_empty());
}
