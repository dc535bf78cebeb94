//! Kernel tests on tiny shapes (CPU): the Delta formula, causality to the last bit, the
//! zero-output rule, and finite-difference gradients into every learned piece.

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::pool::AtomPool;
use crate::toy::{random_tokens, sets, sets_recent, ToyShape};
use crate::OpImpl;
use crate::{
    masked_softmax, pool_atoms, pool_atoms_with, pool_hidden, Adapter, SetAttention, SetLayout,
    SkaConfig,
};

const SHAPE: ToyShape = ToyShape {
    window: 6,
    stride: 3,
    k: 16,
    seed: 7,
    leading: false,
};
/// [`SHAPE`] with the leading partial windows (`banks.leading`): the early-positions remedy.
const LEADING: ToyShape = ToyShape {
    leading: true,
    ..SHAPE
};
const VOCAB: u32 = 12;
const LEN: usize = 24;

fn tokens(seed: u64, batch: usize) -> Vec<Vec<u32>> {
    random_tokens(seed, batch, LEN, VOCAB)
}

/// The pieces of a tiny SKA model: embedding, adapter, one layer.
struct Tiny {
    vs: nn::VarStore,
    embedding: Tensor,
    adapter: Adapter,
    layer: SetAttention,
}

fn tiny(kind: Kind, beta: f64, router_topk: i64) -> Tiny {
    tiny_with_ops(kind, beta, router_topk, OpImpl::Autograd)
}

fn tiny_with_ops(kind: Kind, beta: f64, router_topk: i64, router: OpImpl) -> Tiny {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let d = 8;
    let embedding = root.var(
        "e",
        &[i64::from(VOCAB), d],
        Init::Randn {
            mean: 0.0,
            stdev: 0.3,
        },
    );
    let adapter = Adapter::new(&root / "adapter", d, 3, 0.5);
    let config = SkaConfig {
        d_model: d,
        heads: 2,
        beta,
        router_topk,
        ops: router,
        ..SkaConfig::default()
    };
    let layer = SetAttention::new(&root / "ska", &config);
    let mut tiny = Tiny {
        vs,
        embedding,
        adapter,
        layer,
    };
    // W2 starts at zero; make it non-zero so the gradient into W1 is not trivially 0.
    tch::no_grad(|| {
        for (name, mut var) in tiny.vs.variables() {
            if name.ends_with("w2") {
                var.copy_(&(Tensor::randn_like(&var) * 0.3));
            }
        }
    });
    if kind == Kind::Double {
        tiny.vs.double();
    }
    tiny
}

impl Tiny {
    fn forward(&self, toks: &[Vec<u32>], x: &Tensor) -> (Tensor, SetLayout) {
        self.forward_shaped(toks, x, SHAPE)
    }

    fn forward_shaped(
        &self,
        toks: &[Vec<u32>],
        x: &Tensor,
        shape: ToyShape,
    ) -> (Tensor, SetLayout) {
        let layout = SetLayout::new(&sets(toks, shape, Device::Cpu), LEN as i64);
        let phi = self.adapter.forward(&pool_atoms(&self.embedding, &layout));
        (self.layer.forward(x, &phi, &layout), layout)
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).expect("float tensor")
}

#[test]
fn delta_matches_the_formula_per_pair() {
    let toks = tokens(1, 2);
    let inputs = sets(&toks, SHAPE, Device::Cpu);
    let layout = SetLayout::new(&inputs, LEN as i64);
    let sig = Vec::<i64>::try_from(inputs.signatures.flatten(0, -1)).unwrap();
    let sizes = Vec::<i64>::try_from(&inputs.sizes).unwrap();
    let delta = floats(&layout.delta);
    let m = layout.max_sets as usize;
    let k = SHAPE.k;
    for b in 0..2 {
        for i in 0..m {
            for j in 0..m {
                let (si, sj) = (b * m + i, b * m + j);
                let same = (0..k)
                    .filter(|&c| sig[si * k + c] == sig[sj * k + c])
                    .count();
                let jac = same as f64 / k as f64;
                let sum = (sizes[si] + sizes[sj]) as f64;
                let want = (sum - 2.0 * jac / (1.0 + jac) * sum).max(0.0);
                let got = f64::from(delta[(b * m + i) * m + j]);
                assert!(
                    (got - want).abs() < 1e-4,
                    "Delta[{b},{i},{j}] = {got}, want {want}"
                );
            }
            assert_eq!(
                delta[(b * m + i) * m + i],
                0.0,
                "a set is at distance 0 from itself"
            );
        }
    }
}

#[test]
fn outputs_up_to_t_ignore_later_tokens_bit_for_bit() {
    for (beta, topk, shape) in [(0.0, 0, SHAPE), (1.0, 2, SHAPE), (1.0, 2, LEADING)] {
        let model = tiny(Kind::Float, beta, topk);
        let x = Tensor::randn([2, LEN as i64, 8], (Kind::Float, Device::Cpu));
        let toks = tokens(5, 2);
        let (y, _) = model.forward_shaped(&toks, &x, shape);
        for t in [5usize, 11, 17] {
            let mut changed = toks.clone();
            for seq in &mut changed {
                for tok in &mut seq[t + 1..] {
                    *tok = (*tok + 5) % VOCAB;
                }
            }
            let (y2, _) = model.forward_shaped(&changed, &x, shape);
            let head = |y: &Tensor| floats(&y.narrow(1, 0, t as i64 + 1));
            let same = head(&y)
                .iter()
                .zip(head(&y2))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "beta {beta} topk {topk} leading {}: output at <= {t} changed with tokens after {t}",
                shape.leading
            );
            let tail = |y: &Tensor| floats(&y.narrow(1, t as i64 + 1, (LEN - t - 1) as i64));
            assert_ne!(
                tail(&y),
                tail(&y2),
                "the change after {t} must be visible later (test sanity)"
            );
        }
    }
}

#[test]
fn tokens_without_a_visible_set_get_zero_router_output_and_finite_gradients() {
    let model = tiny(Kind::Float, 1.0, 0);
    let x = Tensor::randn([2, LEN as i64, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let (y, layout) = model.forward(&tokens(9, 2), &x);
    // Positions 0..window-1 see no set: the layer gives exactly its output bias there.
    let early = SHAPE.window as i64 - 1;
    let visible = layout.route.any_dim(-1, false).squeeze_dim(1);
    assert!(!bool::try_from(visible.narrow(1, 0, early).any()).unwrap());
    assert!(bool::try_from(visible.narrow(1, early, LEN as i64 - early).all()).unwrap());
    let bias = model
        .layer
        .out
        .bs
        .as_ref()
        .unwrap()
        .view([1, 1, 8])
        .expand([2, early, 8], false);
    assert_eq!(floats(&y.narrow(1, 0, early)), floats(&bias));
    assert!(!floats(&y).iter().any(|v| v.is_nan()));
    y.sum(Kind::Float).backward();
    for (name, var) in model.vs.variables() {
        let grad = floats(&var.grad());
        assert!(
            grad.iter().all(|g| g.is_finite()),
            "{name} has a non-finite gradient"
        );
    }
    assert!(floats(&x.grad()).iter().all(|g| g.is_finite()));

    // With the leading partial windows the blind prefix shrinks to stride - 1 positions.
    let (_, layout) = model.forward_shaped(&tokens(9, 2), &x, LEADING);
    let early = LEADING.stride as i64 - 1;
    let visible = layout.route.any_dim(-1, false).squeeze_dim(1);
    assert!(!bool::try_from(visible.narrow(1, 0, early).any()).unwrap());
    assert!(bool::try_from(visible.narrow(1, early, LEN as i64 - early).all()).unwrap());
}

#[test]
fn masked_softmax_of_an_empty_row_is_zero() {
    let scores = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
    let mask = Tensor::from_slice(&[false, false, true, false]).view([2, 2]);
    assert_eq!(
        floats(&masked_softmax(&scores, &mask)),
        vec![0.0, 0.0, 1.0, 0.0]
    );
}

/// Central differences in fp64 against autograd for a few entries of every parameter.
#[test]
fn gradients_reach_adapter_phi_gamma_tau_a_b_and_v() {
    let model = tiny(Kind::Double, 0.7, 2);
    let toks = tokens(11, 2);
    let x = Tensor::randn([2, LEN as i64, 8], (Kind::Double, Device::Cpu));
    let weights = Tensor::randn([2, LEN as i64, 8], (Kind::Double, Device::Cpu));
    let loss = |m: &Tiny| (m.forward(&toks, &x).0 * &weights).sum(Kind::Double);
    loss(&model).backward();
    let variables = model.vs.variables();
    let must_reach = [
        "e",
        "adapter.w1",
        "adapter.w2",
        "ska.log_gamma",
        "ska.log_tau",
        "ska.a",
        "ska.b",
        "ska.v.weight",
    ];
    for name in must_reach {
        let var = variables
            .get(name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        let grad = var.grad().flatten(0, -1);
        let n = grad.size()[0];
        let grads = Vec::<f64>::try_from(&grad).unwrap();
        assert!(
            grads.iter().any(|g| g.abs() > 1e-8),
            "{name}: gradient is zero everywhere"
        );
        let flat = var.flatten(0, -1);
        for idx in [0, n / 3, n / 2, n - 1] {
            let eps = 1e-6;
            let at = |delta: f64| {
                tch::no_grad(|| {
                    let mut v = flat.get(idx);
                    let old = v.double_value(&[]);
                    let _ = v.fill_(old + delta);
                    let l = loss(&model).double_value(&[]);
                    let _ = v.fill_(old);
                    l
                })
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            let analytic = grads[idx as usize];
            let tol = 1e-6 + 1e-4 * numeric.abs().max(analytic.abs());
            assert!(
                (numeric - analytic).abs() < tol,
                "{name}[{idx}]: autograd {analytic}, finite difference {numeric}"
            );
        }
    }
}

#[test]
fn gamma_and_tau_stay_positive_for_any_raw_value() {
    let model = tiny(Kind::Float, 0.0, 0);
    tch::no_grad(|| {
        let mut raw = model.vs.variables()["ska.log_tau"].shallow_clone();
        raw.copy_(&Tensor::from_slice(&[-50.0f32, 30.0]));
    });
    assert!(floats(&model.layer.tau()).iter().all(|&t| t > 0.0));
    assert!(floats(&model.layer.gamma()).iter().all(|&g| g > 0.0));
}

/// `hidden` set features: each real slot is the mean of the states over its span, and
/// the layer's output at positions `<= t` ignores states (and tokens) after `t`.
#[test]
fn hidden_features_are_span_means_and_causal_to_the_last_bit() {
    let model = tiny(Kind::Float, 1.0, 2);
    let toks = tokens(13, 2);
    let inputs = sets(&toks, SHAPE, Device::Cpu);
    let layout = SetLayout::new(&inputs, LEN as i64);
    let x = Tensor::randn([2, LEN as i64, 8], (Kind::Float, Device::Cpu));
    let phi = pool_hidden(&x, &layout);
    let m = layout.max_sets;
    for b in 0..2 {
        for j in 0..m {
            let set = b * m + j;
            let start = inputs.starts.int64_value(&[set]);
            let end = inputs.ends.int64_value(&[set]);
            let want = x
                .get(b)
                .narrow(0, start, end - start)
                .mean_dim(0, false, Kind::Float);
            let got = phi.get(b).get(j);
            let err = (got - want).abs().max().double_value(&[]);
            assert!(err < 1e-6, "slot {b},{j}: off by {err}");
        }
    }
    let forward = |toks: &[Vec<u32>], x: &Tensor| {
        let layout = SetLayout::new(&sets(toks, SHAPE, Device::Cpu), LEN as i64);
        model.layer.forward(x, &pool_hidden(x, &layout), &layout)
    };
    let y = forward(&toks, &x);
    for t in [5usize, 11, 17] {
        let (mut changed, later) = (toks.clone(), t as i64 + 1);
        for seq in &mut changed {
            for tok in &mut seq[t + 1..] {
                *tok = (*tok + 5) % VOCAB;
            }
        }
        let noise = Tensor::randn([2, LEN as i64 - later, 8], (Kind::Float, Device::Cpu));
        let x2 = Tensor::cat(&[x.narrow(1, 0, later), noise], 1);
        let y2 = forward(&changed, &x2);
        let head = |y: &Tensor| floats(&y.narrow(1, 0, later));
        let same = head(&y)
            .iter()
            .zip(head(&y2))
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "output at <= {t} changed with states after {t}");
        let tail = |y: &Tensor| floats(&y.narrow(1, later, LEN as i64 - later));
        assert_ne!(
            tail(&y),
            tail(&y2),
            "later outputs must change (test sanity)"
        );
    }
}

/// Central differences in fp64: the gradient of an SKA layer with `hidden` set
/// features reaches the hidden states through the pooling (not only through the router).
#[test]
fn gradients_reach_the_hidden_states_through_the_pooled_features() {
    let model = tiny(Kind::Double, 0.7, 0);
    let toks = tokens(17, 2);
    let layout = SetLayout::new(&sets(&toks, SHAPE, Device::Cpu), LEN as i64);
    let x = Tensor::randn([2, LEN as i64, 8], (Kind::Double, Device::Cpu));
    let weights = Tensor::randn([2, LEN as i64, 8], (Kind::Double, Device::Cpu));
    // The router query sees `x` too; a detached copy there isolates the pooling path.
    let loss = |pooled: &Tensor| {
        let y = model
            .layer
            .forward(&x.detach(), &pool_hidden(pooled, &layout), &layout);
        (y * &weights).sum(Kind::Double)
    };
    let leaf = x.detach().set_requires_grad(true);
    loss(&leaf).backward();
    let grad = Vec::<f64>::try_from(leaf.grad().flatten(0, -1)).unwrap();
    assert!(
        grad.iter().any(|g| g.abs() > 1e-8),
        "no gradient reaches the hidden states through Phi"
    );
    let flat = x.flatten(0, -1);
    let n = flat.size()[0];
    for idx in [0, n / 5, n / 3, n / 2, n - 9] {
        let eps = 1e-6;
        let at = |delta: f64| {
            tch::no_grad(|| {
                let bumped = x.flatten(0, -1).copy();
                let mut v = bumped.get(idx);
                let _ = v.fill_(flat.double_value(&[idx]) + delta);
                loss(&bumped.view_as(&x)).double_value(&[])
            })
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        let analytic = grad[idx as usize];
        let tol = 1e-6 + 1e-4 * numeric.abs().max(analytic.abs());
        assert!(
            (numeric - analytic).abs() < tol,
            "x[{idx}]: autograd {analytic}, finite difference {numeric}"
        );
    }
}

/// The set attention and the router with their hand-written backwards (the math of the
/// CUDA kernels, through the autograd bridge) against libtorch's autograd of the tensor
/// ops: the same layer output and the same gradient into every parameter (gamma, tau, the
/// content maps, the values, the adapter) and into the token states, with and without
/// top-k and the content term, on batches whose first positions see no set.
#[test]
fn manual_backwards_match_autograd_everywhere() {
    for (topk, beta) in [(0, 0.7), (2, 0.7), (0, 0.0)] {
        let toks = tokens(23, 3);
        tch::manual_seed(5);
        let x0 = Tensor::randn([3, LEN as i64, 8], (Kind::Double, Device::Cpu));
        let weights = Tensor::randn([3, LEN as i64, 8], (Kind::Double, Device::Cpu));
        // The same parameters in both models: copied, since the global RNG that seeds
        // them is shared with the tests running in parallel.
        let reference = tiny_with_ops(Kind::Double, beta, topk, OpImpl::Autograd);
        let mut manual = tiny_with_ops(Kind::Double, beta, topk, OpImpl::Manual);
        manual.vs.copy(&reference.vs).unwrap();
        let run = |model: &Tiny| {
            let x = x0.detach().set_requires_grad(true);
            let (y, layout) = model.forward(&toks, &x);
            assert!(
                bool::try_from(layout.route.any_dim(-1, false).logical_not().any()).unwrap(),
                "the batch must have tokens without a set"
            );
            (&y * &weights).sum(Kind::Double).backward();
            let mut grads: Vec<(String, Tensor)> = model
                .vs
                .variables()
                .into_iter()
                .map(|(name, v)| (name, v.grad()))
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            grads.push(("x".into(), x.grad()));
            (y.detach(), grads)
        };
        let (want_y, want) = run(&reference);
        let (got_y, got) = run(&manual);
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(
            diff(&got_y, &want_y) < 1e-12,
            "top-k {topk}, beta {beta}: outputs differ"
        );
        assert_eq!(got.len(), want.len());
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            assert!(w.defined() && g.defined(), "{name}: no gradient");
            let scale = w.abs().max().double_value(&[]).max(1e-30);
            let err = diff(g, w) / scale;
            assert!(
                err < 1e-10,
                "top-k {topk}, beta {beta}, {name}: relative gradient error {err}"
            );
        }
    }
}

/// LayerNorm `[rows, cols]` of `x` through `(w, b)` under `imp` (libtorch's layer norm and
/// a cast for `Autograd`), into `out`, and the gradients of `sum(y * weights)`:
/// `(y, dx, dw, db)` as f64.
pub(crate) fn layer_norm_run(
    imp: OpImpl,
    [x, w, b]: [&Tensor; 3],
    weights: &Tensor,
    out: Kind,
) -> [Tensor; 4] {
    let (xg, wg, bg) = (
        x.detach().set_requires_grad(true),
        w.detach().set_requires_grad(true),
        b.detach().set_requires_grad(true),
    );
    let cols = x.size()[1];
    let y = match crate::layer_norm::HalfLayerNorm::new(imp, 1e-5).unwrap() {
        Some(op) => op.forward_with(&xg, &wg, &bg, out).unwrap(),
        None => xg
            .layer_norm([cols], Some(&wg), Some(&bg), 1e-5, false)
            .to_kind(out),
    };
    assert_eq!(y.kind(), out);
    (y.to_kind(Kind::Float) * weights)
        .sum(Kind::Float)
        .backward();
    [y.detach(), xg.grad(), wg.grad(), bg.grad()].map(|t| t.to_kind(Kind::Double))
}

/// `|a - b| / |b|` over whole tensors.
pub(crate) fn norm_error(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

#[test]
fn manual_layer_norm_to_half_matches_libtorch_in_forward_and_backward() {
    tch::manual_seed(11);
    let cpu = (Kind::Float, Device::Cpu);
    // Rows off-centre and scaled, so centring and scaling both matter.
    let x = Tensor::randn([37, 100], cpu) * 3.0 + 5.0;
    let (w, b) = (Tensor::randn([100], cpu), Tensor::randn([100], cpu));
    let weights = Tensor::randn([37, 100], cpu);
    for out in [Kind::BFloat16, Kind::Half] {
        let want = layer_norm_run(OpImpl::Autograd, [&x, &w, &b], &weights, out);
        let got = layer_norm_run(OpImpl::Manual, [&x, &w, &b], &weights, out);
        // The same fp32 row up to rounding, then one rounding to half: within one unit
        // in the last place of the half kind, at worst.
        let err = norm_error(&got[0], &want[0]);
        assert!(err < 4e-3, "{out:?} y: relative error {err}");
        for (name, g, w) in [
            ("dx", &got[1], &want[1]),
            ("dw", &got[2], &want[2]),
            ("db", &got[3], &want[3]),
        ] {
            let err = norm_error(g, w);
            assert!(err < 1e-5, "{out:?} {name}: relative error {err}");
        }
    }
}

/// Two sequences with 3 and 1 sets (one of them empty), so the second has padding slots.
fn ragged_inputs() -> (crate::SetInputs, Vec<Vec<i64>>) {
    let atoms: Vec<Vec<i64>> = vec![vec![0, 3, 5], vec![], vec![2, 2, 7, 1], vec![4, 6]];
    let long = |v: &[i64]| Tensor::from_slice(v);
    let mut offsets = vec![0i64];
    for a in &atoms {
        offsets.push(offsets.last().unwrap() + a.len() as i64);
    }
    let values: Vec<i64> = atoms.concat();
    let inputs = crate::SetInputs {
        seq_sets: long(&[0, 3, 4]),
        max_sets: 3,
        signatures: Tensor::zeros([4, 2], (Kind::Int64, Device::Cpu)),
        sizes: long(&[3, 0, 4, 2]),
        starts: long(&[0, 2, 4, 0]),
        ends: long(&[3, 4, 8, 2]),
        values: long(&values),
        set_offsets: long(&offsets),
        route: Tensor::zeros([2, 8, 3], (Kind::Bool, Device::Cpu)),
        max_route_sets: 0,
    };
    (inputs, atoms)
}

/// `pool` (libtorch's `embedding_bag` under autograd, or an [`AtomPool`] op) against
/// per-set sums and their gradient, written out here set by set.
fn check_pooling(pool: Option<&AtomPool>) {
    let (inputs, atoms) = ragged_inputs();
    let layout = SetLayout::new(&inputs, 8);
    let dim = 5;
    let table =
        (Tensor::randn([8, dim], (Kind::Double, Device::Cpu)) + 0.5).set_requires_grad(true);
    let pooled = pool_atoms_with(pool, &table, &layout);
    assert_eq!(pooled.size(), [2, 3, dim]);
    // slot (b, m) -> set; None: padding.
    let slots = [Some(0), Some(1), Some(2), Some(3), None, None];
    let flat = pooled.view([6, dim]);
    for (slot, set) in slots.iter().enumerate() {
        let want = match set {
            Some(s) if !atoms[*s].is_empty() => table
                .index_select(0, &Tensor::from_slice(&atoms[*s]))
                .sum_dim_intlist(0, false, Kind::Double),
            _ => Tensor::zeros([dim], (Kind::Double, Device::Cpu)),
        };
        let err = (flat.get(slot as i64) - &want)
            .abs()
            .max()
            .double_value(&[]);
        assert!(err < 1e-12, "slot {slot} (set {set:?}): off by {err}");
    }
    // d(sum of w * pooled)/d table[u] = sum over u's occurrences of w[slot].
    let w = Tensor::randn([2, 3, dim], (Kind::Double, Device::Cpu));
    let grad = Tensor::run_backward(&[(&pooled * &w).sum(Kind::Double)], &[&table], false, false);
    let mut want = Tensor::zeros([8, dim], (Kind::Double, Device::Cpu));
    let wf = w.view([6, dim]);
    for (slot, set) in slots.iter().enumerate() {
        if let Some(s) = set {
            for &u in &atoms[*s] {
                want = want.index_add(
                    0,
                    &Tensor::from_slice(&[u]),
                    &wf.get(slot as i64).unsqueeze(0),
                );
            }
        }
    }
    let err = (&grad[0] - want).abs().max().double_value(&[]);
    assert!(err < 1e-12, "table gradient off by {err}");
}

#[test]
fn pooled_atoms_are_per_set_sums_with_zero_padding_and_exact_gradients() {
    check_pooling(None);
}

#[test]
fn the_manual_pooling_op_gives_the_same_sums_and_gradients() {
    let op = AtomPool::new(OpImpl::Manual).unwrap().expect("a manual op");
    check_pooling(Some(&op));
}

#[test]
fn the_layout_keeps_each_atoms_occurrences_as_one_sorted_run() {
    let (inputs, _) = ragged_inputs();
    let layout = SetLayout::new(&inputs, 8);
    assert_eq!(layout.atom_ids.kind(), Kind::Int);
    assert_eq!(layout.atom_slots.kind(), Kind::Int);
    let ids: Vec<i64> = Vec::try_from(&layout.atom_ids.to_kind(Kind::Int64)).unwrap();
    let slots: Vec<i64> = Vec::try_from(&layout.atom_slots.to_kind(Kind::Int64)).unwrap();
    let values: Vec<i64> = Vec::try_from(&layout.values).unwrap();
    let value_slot: Vec<i64> = Vec::try_from(&layout.value_slot).unwrap();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "not sorted: {ids:?}");
    // The same (atom, slot) occurrences, each atom's in the order of `values`.
    let mut want: Vec<(i64, i64)> = values.iter().copied().zip(value_slot).collect();
    want.sort_by_key(|&(atom, _)| atom); // stable
    let got: Vec<(i64, i64)> = ids.into_iter().zip(slots).collect();
    assert_eq!(got, want);
}

#[test]
fn the_adapter_commutes_with_pooling() {
    let (inputs, _) = ragged_inputs();
    let layout = SetLayout::new(&inputs, 8);
    let vs = nn::VarStore::new(Device::Cpu);
    let adapter = Adapter::new(vs.root() / "adapter", 6, 2, 1.0);
    tch::no_grad(|| {
        for v in vs.trainable_variables() {
            let mut v = v;
            v.copy_(&Tensor::randn(v.size(), (Kind::Float, Device::Cpu)));
        }
    });
    let table = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let after = adapter.forward(&pool_atoms(&table, &layout));
    // The per-occurrence form: adapt every atom row, then add them into the slots.
    let per_atom = adapter.forward(&table.index_select(0, &layout.values));
    let before = Tensor::zeros([6, 6], (Kind::Float, Device::Cpu))
        .index_add(0, &layout.value_slot, &per_atom)
        .view([2, 3, 6]);
    let err = (&after - &before).abs().max().double_value(&[]);
    assert!(err < 1e-4, "adapter(pool) vs pool(adapter): {err}");
    let scale = after.abs().max().double_value(&[]);
    assert!(scale > 0.1, "the adapter must do something here: {scale}");
}

#[test]
fn a_recent_route_keeps_the_last_visible_sets_of_each_token() {
    let toks = tokens(3, 2);
    for shape in [SHAPE, LEADING] {
        let spans = shape.spans(LEN);
        let all = sets(&toks, shape, Device::Cpu).route;
        // The widest row of a route, which `max_route_sets` must state.
        let widest = |route: &Tensor| {
            route
                .to_kind(Kind::Int64)
                .sum_dim_intlist(&[-1i64][..], false, Kind::Int64)
                .max()
                .int64_value(&[])
        };
        for recent in [1usize, 2, 3] {
            let inputs = sets_recent(&toks, shape, recent, Device::Cpu);
            assert_eq!(
                inputs.max_route_sets,
                widest(&inputs.route),
                "recent {recent}"
            );
            let layout = crate::SetLayout::new(&inputs, LEN as i64);
            assert_eq!(layout.max_route_sets, recent as i64, "recent {recent}");
            let route = inputs.route;
            assert_eq!(route.size(), all.size());
            let mut limited = 0;
            for b in 0..2i64 {
                for t in 0..LEN {
                    let visible: Vec<usize> =
                        (0..spans.len()).filter(|&m| spans[m].1 <= t + 1).collect();
                    let want: Vec<usize> = visible[visible.len().saturating_sub(recent)..].to_vec();
                    let got: Vec<usize> = (0..spans.len())
                        .filter(|&m| route.int64_value(&[b, t as i64, m as i64]) != 0)
                        .collect();
                    assert_eq!(got, want, "recent {recent}, b {b}, t {t}");
                    limited += usize::from(visible.len() > recent);
                }
            }
            assert!(
                limited > 0,
                "recent {recent} must drop some visible set here"
            );
        }
        let unlimited = sets_recent(&toks, shape, 0, Device::Cpu);
        assert!(unlimited.route.equal(&all), "recent 0 is every visible set");
        assert_eq!(unlimited.max_route_sets, widest(&all), "every visible set");
    }
}

/// The linear op with the matrix-vector bias gradient against libtorch's linear under
/// autograd, on a 3-d input in fp64: the same outputs and the same gradients of the input,
/// the weight and the bias (to rounding), and bit-identical gradients on a second run.
#[test]
fn the_linear_op_matches_libtorchs_linear_and_its_gradients() {
    use crate::linear::linear_with_bias;
    tch::manual_seed(crate::tests_cuda::fresh_seed() as i64);
    let opts = (Kind::Double, Device::Cpu);
    let leaf = |shape: &[i64]| Tensor::randn(shape, opts).set_requires_grad(true);
    let (x, w, b) = (leaf(&[3, 5, 12]), leaf(&[7, 12]), leaf(&[7]));
    let dy = Tensor::randn([3, 5, 7], opts);
    let run = |ours: bool| {
        for t in [&x, &w, &b] {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let y = if ours {
            linear_with_bias(&x, &w, &b)
        } else {
            x.linear(&w, Some(&b))
        };
        (&y * &dy).sum(Kind::Double).backward();
        (
            y.detach(),
            x.grad().copy(),
            w.grad().copy(),
            b.grad().copy(),
        )
    };
    let reference = run(false);
    let ours = run(true);
    let again = run(true);
    let names = ["y", "dx", "dw", "db"];
    let pairs = [
        (&ours.0, &reference.0),
        (&ours.1, &reference.1),
        (&ours.2, &reference.2),
        (&ours.3, &reference.3),
    ];
    for (name, (a, r)) in names.iter().zip(pairs) {
        let err = (a - r).abs().max().double_value(&[]);
        assert!(err < 1e-12, "{name}: off by {err}");
    }
    for (name, (a, r)) in names.iter().zip([
        (&ours.1, &again.1),
        (&ours.2, &again.2),
        (&ours.3, &again.3),
    ]) {
        assert!(a.equal(r), "{name} differs between two runs");
    }
    assert!(
        ours.3.abs().sum(Kind::Double).double_value(&[]) > 0.0,
        "a bias gradient that is all zeros tests nothing"
    );
}
