//! Trainer tests on tiny shapes (CPU): zero-copy data path, batches against the copying
//! gather, causality for every `--attn`, overfitting, sampler, schedule, resume.

use std::collections::BTreeMap;
use std::path::Path;

use ausa_artifacts::{
    write_routing, write_signatures, BankShape, BanksWriter, Routing, RoutingLayout, SetArtifacts,
    SetPaths, TokensWriter,
};
use ausa_kernels::toy::{self, ToyShape};
use ausa_kernels::SetLayout;
use ausa_track::tfevents::SessionLog;
use tch::{Device, Kind, Tensor};

use crate::data::SplitData;
use crate::model::{next_token_loss, Attn, Inputs, Lm, ModelConfig, Pos, SetFeatures};
use crate::train::{
    self, learning_rate, Precision, Run, Sampler, SplitInput, TextStats, TrainConfig,
};

/// libtorch's default generator is global: tests that seed it and then draw from it
/// (initialization, dropout) hold this lock so parallel tests don't interleave draws.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    // One intra-op thread: tests already run in parallel, and an oversubscribed OpenMP
    // pool spin-waits (10x slower on a busy 2-core machine).
    tch::set_num_threads(1);
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

const SHAPE: ToyShape = ToyShape {
    window: 6,
    stride: 3,
    k: 16,
    seed: 1,
    leading: false,
};
const LEN: usize = 24;
const VOCAB: u32 = 32;

fn random_tokens(seed: u64, n: usize, vocab: u32) -> Vec<Vec<u32>> {
    ausa_kernels::toy::random_tokens(seed.wrapping_add(1), n, LEN, vocab)
}

/// Writes a split's four set artifacts for `seqs` (the toy bank rules of [`SHAPE`])
/// under `dir`.
fn write_split(dir: &Path, seqs: &[Vec<u32>], vocab: u32) -> SetPaths {
    write_split_shaped(dir, seqs, vocab, SHAPE)
}

/// [`write_split`] with the bank rules of `shape`.
fn write_split_shaped(dir: &Path, seqs: &[Vec<u32>], vocab: u32, shape: ToyShape) -> SetPaths {
    let paths = SetPaths {
        sequences: dir.join("sequences-train.arrow"),
        banks: dir.join("banks-train.arrow"),
        signatures: dir.join("minhash-train.arrow"),
        routing: dir.join("routing-train.arrow"),
    };
    let mut tokens = TokensWriter::create(&paths.sequences, vocab).unwrap();
    let bank_shape = BankShape {
        vocab_size: vocab,
        window: shape.window as u32,
        stride: shape.stride as u32,
    };
    let mut banks = BanksWriter::new(&paths.banks, bank_shape);
    let (mut sigs, mut sizes) = (vec![], vec![]);
    let spans = shape.spans(LEN);
    for (i, seq) in seqs.iter().enumerate() {
        tokens.push_document(i as u64, seq).unwrap();
        for &(start, end) in &spans {
            let mut atoms = seq[start..end].to_vec();
            atoms.sort_unstable();
            atoms.dedup();
            banks.push_set(&atoms, start as u32, end as u32).unwrap();
            sigs.extend(toy::signature(&atoms, shape));
            sizes.push(atoms.len() as u32);
        }
        banks.end_sequence();
    }
    tokens.finish().unwrap();
    banks.finish().unwrap();
    write_signatures(&paths.signatures, shape.k as u32, shape.seed, sigs, sizes).unwrap();
    let ends: Vec<u32> = spans.iter().map(|&(_, end)| end as u32).collect();
    let mut layout = RoutingLayout {
        ends: ends.clone(),
        token_offsets: vec![0],
        sets: vec![],
    };
    for t in 0..LEN as u32 {
        layout
            .sets
            .extend((0..ends.len() as u32).filter(|&j| ends[j as usize] <= t + 1));
        layout.token_offsets.push(layout.sets.len() as u64);
    }
    let routing = Routing {
        causal: true,
        topk: 0,
        sequences: seqs.len() as u64,
        layouts: vec![layout],
    };
    write_routing(&paths.routing, &routing).unwrap();
    paths
}

fn tiny_model(attn: Attn, vocab: u32) -> ModelConfig {
    ModelConfig {
        vocab: i64::from(vocab),
        seq_len: LEN as i64,
        d_model: 32,
        layers: 2,
        heads: 2,
        ffn_mult: 2,
        dropout: 0.0,
        attn,
        ska_layers: if attn == Attn::Ska {
            vec![0, 1]
        } else {
            vec![]
        },
        beta: 1.0,
        router_topk: 0,
        adapter_rank: 4,
        pos: Pos::Learned,
        set_features: SetFeatures::Atoms,
        delta: Default::default(),
    }
}

/// Every model variant the causality and overfit tests cover, with the bank shape it
/// reads: each `--attn`, SKA with both set features and with the leading partial
/// windows (`--early leading`), and rotary positions (SKA mixed with a dot block, which
/// is the one rotary changes).
fn variants(vocab: u32) -> Vec<(String, ModelConfig, ToyShape)> {
    let mut out = Vec::new();
    for attn in [Attn::DotNaive, Attn::Sdpa, Attn::Ska] {
        out.push((attn.as_str().to_string(), tiny_model(attn, vocab), SHAPE));
    }
    let mut hidden = tiny_model(Attn::Ska, vocab);
    hidden.set_features = SetFeatures::Hidden;
    hidden.adapter_rank = 0;
    out.push(("ska+hidden".into(), hidden.clone(), SHAPE));
    let leading = ToyShape {
        leading: true,
        ..SHAPE
    };
    out.push(("ska+leading".into(), tiny_model(Attn::Ska, vocab), leading));
    out.push(("ska+hidden+leading".into(), hidden, leading));
    for attn in [Attn::DotNaive, Attn::Sdpa, Attn::Ska] {
        let mut rotary = tiny_model(attn, vocab);
        rotary.pos = Pos::Rotary;
        if attn == Attn::Ska {
            rotary.ska_layers = vec![1];
            rotary.set_features = SetFeatures::Hidden;
            rotary.adapter_rank = 0;
        }
        out.push((format!("{}+rotary", attn.as_str()), rotary, SHAPE));
    }
    out
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn longs(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).flatten(0, -1)).unwrap()
}

#[test]
fn token_tensor_points_into_the_artifact_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_split(dir.path(), &random_tokens(1, 5, VOCAB), VOCAB);
    let data = SplitData::open(&paths).unwrap();
    let (range, ptr) = data.token_pointers().expect("CPU data is zero-copy");
    assert!(
        range.contains(&ptr),
        "tensor data {ptr:?} is outside the mapping {range:?}"
    );
    assert_eq!(
        range.start, ptr,
        "the whole-split tensor starts at the mapped ids"
    );
}

#[test]
fn bank_histograms_in_the_metadata_count_every_sequence_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let seqs = random_tokens(9, 7, VOCAB);
    let paths = write_split(dir.path(), &seqs, VOCAB);
    let data = SplitData::open(&paths).unwrap();
    let meta = train::data_meta(&data, None);
    let h = &meta["histograms"];
    // Direct counts from the token sequences: distinct ids of every window.
    let spans = SHAPE.spans(LEN);
    let mut sizes = BTreeMap::<u64, u64>::new();
    for seq in &seqs {
        for &(start, end) in &spans {
            let mut atoms = seq[start..end].to_vec();
            atoms.sort_unstable();
            atoms.dedup();
            *sizes.entry(atoms.len() as u64).or_default() += 1;
        }
    }
    let bins = |v: &serde_json::Value| -> BTreeMap<u64, u64> {
        v["bins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["le"].as_u64().unwrap(), b["count"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(h["atoms_per_set"]["bin_width"], 1, "{h}");
    assert_eq!(bins(&h["atoms_per_set"]), sizes, "{h}");
    let expected = BTreeMap::from([(spans.len() as u64, seqs.len() as u64)]);
    assert_eq!(bins(&h["sets_per_seq"]), expected, "{h}");
    assert_eq!(data.histograms().sets_per_seq.total(), 7);
    assert_eq!(
        data.histograms().atoms_per_set.total(),
        (7 * spans.len()) as u64
    );
}

#[test]
fn tensor_batches_equal_the_copying_gather() {
    let dir = tempfile::tempdir().unwrap();
    // A 16-bit vocabulary above 32767 checks the unsigned widening of stored ids.
    let vocab = 40_000;
    let mut seqs = random_tokens(2, 6, VOCAB);
    for seq in &mut seqs {
        for t in seq.iter_mut().step_by(3) {
            *t += 39_000;
        }
    }
    let paths = write_split(dir.path(), &seqs, vocab);
    let data = SplitData::open(&paths).unwrap();
    let reference = SetArtifacts::open(&paths).unwrap();
    let ids = [4i64, 0, 4, 5];
    let batch = data.batch(&ids);
    let want = reference.gather(&ids.map(|i| i as usize)).unwrap();
    let as_i64 = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
    assert_eq!(longs(&batch.tokens), as_i64(&want.tokens));
    assert_eq!(longs(&batch.sets.values), as_i64(&want.values));
    let offsets: Vec<i64> = want.set_offsets.iter().map(|&o| o as i64).collect();
    assert_eq!(longs(&batch.sets.set_offsets), offsets);
    let seq_sets: Vec<i64> = want.seq_sets.iter().map(|&o| o as i64).collect();
    assert_eq!(longs(&batch.sets.seq_sets), seq_sets);
    let sigs: Vec<i64> = want
        .signatures
        .iter()
        .map(|&s| i64::from(s as i32))
        .collect();
    assert_eq!(longs(&batch.sets.signatures), sigs);
    assert_eq!(longs(&batch.sets.sizes), as_i64(&want.sizes));
    let ends: Vec<u32> = want.spans.chunks(2).map(|s| s[1]).collect();
    assert_eq!(longs(&batch.sets.ends), as_i64(&ends));
    // Route mask vs the candidate lists.
    let m = data.sets_per_seq() as usize;
    let route = longs(&batch.sets.route.to_kind(Kind::Int64));
    for tok in 0..ids.len() * LEN {
        let first_set = (tok / LEN * m) as u32;
        let mut from_mask: Vec<u32> = (0..m as u32)
            .filter(|&j| route[tok * m + j as usize] == 1)
            .map(|j| j + first_set)
            .collect();
        from_mask.sort_unstable();
        let lo = want.token_offsets[tok] as usize;
        let hi = want.token_offsets[tok + 1] as usize;
        let mut listed = want.candidates[lo..hi].to_vec();
        listed.sort_unstable();
        assert_eq!(from_mask, listed, "token {tok}");
    }
}

fn logits(model: &Lm, seqs: &[Vec<u32>], shape: ToyShape) -> Tensor {
    let tokens = toy::token_tensor(seqs, Device::Cpu);
    let layout = SetLayout::new(&toy::sets(seqs, shape, Device::Cpu), LEN as i64);
    model.forward(&Inputs {
        tokens: &tokens,
        sets: Some(&layout),
        kind: Kind::Float,
        train: false,
    })
}

#[test]
fn logits_up_to_t_ignore_later_tokens_for_every_attn() {
    let _rng = rng_lock();
    for (name, config, shape) in variants(VOCAB) {
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let model = Lm::new(&vs.root(), &config);
        let seqs = random_tokens(3, 2, VOCAB);
        let base = logits(&model, &seqs, shape);
        for t in [2usize, 9, 16] {
            let mut changed = seqs.clone();
            for seq in &mut changed {
                for tok in &mut seq[t + 1..] {
                    *tok = (*tok + 7) % VOCAB;
                }
            }
            let other = logits(&model, &changed, shape);
            let head = |x: &Tensor| floats(&x.narrow(1, 0, t as i64 + 1));
            let same = head(&base)
                .iter()
                .zip(head(&other))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name}: logits at <= {t} changed with tokens after {t}"
            );
            let rest = |x: &Tensor| floats(&x.narrow(1, t as i64 + 1, (LEN - t - 1) as i64));
            assert_ne!(
                rest(&base),
                rest(&other),
                "{name}: later logits must change"
            );
        }
    }
}

/// Rotary positions replace the learned table (no `pos_emb` variable) and make the
/// output depend on where a token is: the same token at two positions differs.
#[test]
fn rotary_positions_have_no_table_and_still_see_position() {
    let _rng = rng_lock();
    let mut config = tiny_model(Attn::DotNaive, VOCAB);
    config.pos = Pos::Rotary;
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = Lm::new(&vs.root(), &config);
    assert!(!vs.variables().contains_key("pos_emb"));
    // Two constant sequences: only the position tells the logits apart.
    let same = vec![vec![5u32; LEN]];
    let out = logits(&model, &same, SHAPE);
    let (first, later) = (floats(&out.get(0).get(1)), floats(&out.get(0).get(7)));
    assert_ne!(first, later, "rotary logits ignore position");
    config.d_model = 30;
    config.heads = 2;
    let err = config.check().unwrap_err();
    assert!(
        err.contains("--pos rotary") && err.contains("even"),
        "{err}"
    );
}

/// `--delta exact` replaces the layout's MinHash `Delta` by the exact symmetric
/// difference (it differs from the estimate on these sets), and a vocabulary too large
/// for the bitsets is refused with the flag to change.
#[test]
fn exact_delta_replaces_the_estimate_and_bounds_the_vocabulary() {
    let seqs = random_tokens(9, 2, VOCAB);
    let sets = toy::sets(&seqs, SHAPE, Device::Cpu);
    let mut config = tiny_model(Attn::Ska, VOCAB);
    let estimate = config.set_layout(&sets, LEN as i64);
    config.delta = crate::model::DeltaEstimate::Exact;
    let exact = config.set_layout(&sets, LEN as i64);
    let want = ausa_kernels::exact::exact_delta(&estimate, i64::from(VOCAB));
    assert!(
        exact.delta.equal(&want),
        "the exact Delta is the reference's"
    );
    assert!(
        !exact.delta.equal(&estimate.delta),
        "MinHash and exact Delta must differ here (test sanity)"
    );
    config.check().unwrap();
    config.vocab = 5000;
    let err = config.check().unwrap_err();
    assert!(
        err.contains("--delta exact") && err.contains("4096"),
        "{err}"
    );
}

#[test]
fn a_tiny_model_overfits_a_fixed_batch_for_every_attn() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let seqs = random_tokens(4, 4, 16);
    for (name, model, shape) in variants(16) {
        let data_dir = dir.path().join(format!("{name}-data"));
        std::fs::create_dir(&data_dir).unwrap();
        let paths = write_split_shaped(&data_dir, &seqs, 16, shape);
        let split = SplitInput {
            data: SplitData::open(&paths).unwrap(),
            stats: None,
        };
        assert_eq!(split.data.leading_sets(), i64::from(shape.leading));
        let blind = if shape.leading {
            shape.stride
        } else {
            shape.window
        } - 1;
        assert_eq!(split.data.blind_positions(), blind as i64, "{name}");
        // The route's widest row, as every batch hands it to the SKA layers.
        let batch = split.data.batch(&[0, 1]);
        let widest = batch
            .sets
            .route
            .to_kind(tch::Kind::Int64)
            .sum_dim_intlist(&[-1i64][..], false, tch::Kind::Int64)
            .max()
            .int64_value(&[]);
        assert!(widest > 0, "{name}: some position routes to a set");
        assert_eq!(split.data.route_sets(), widest, "{name}");
        assert_eq!(batch.sets.max_route_sets, widest, "{name}");
        let out = dir.path().join(&name);
        let config = TrainConfig {
            model,
            batch: 4,
            steps: Some(120),
            lr: 1e-2,
            warmup: 5,
            weight_decay: 0.0,
            ..TrainConfig::default()
        };
        let summary = train::run(&run(config, &split, &out), &mut |_| {}).unwrap();
        let (first, last) = (summary.first_loss.unwrap(), summary.last_loss.unwrap());
        assert!(first > 2.0, "{name}: first loss {first}");
        assert!(last < 0.3, "{name}: loss went from {first} to {last} only");
    }
}

fn run<'a>(config: TrainConfig, split: &'a SplitInput, out: &Path) -> Run<'a> {
    Run {
        config,
        train: split,
        valid: Some(split),
        test: None,
        out: out.to_path_buf(),
        resume: false,
        device: Device::Cpu,
        meta: serde_json::Value::Null,
        stop_at: None,
        tensorboard: true,
    }
}

fn train_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .collect()
}

/// The event files of a run directory, in the order TensorBoard loads them.
fn tb_files(out: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(out.join(train::TB_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// `(tag, step) -> value` as TensorBoard shows it: files in order, a restart marker at
/// step `s` dropping what earlier events logged at steps `>= s`.
fn tb_scalars(out: &Path) -> BTreeMap<(String, u64), f32> {
    let mut values = BTreeMap::new();
    for file in tb_files(out) {
        let events = ausa_track::tfevents::read_events(&file).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        for event in events {
            let step = event.step as u64;
            if event
                .session_log
                .is_some_and(|l| l.status == SessionLog::START)
            {
                values.retain(|(_, s): &(String, u64), _| *s < step);
            }
            for v in event.summary.map(|s| s.value).unwrap_or_default() {
                let old = values.insert((v.tag.clone(), step), v.simple_value.unwrap());
                assert!(old.is_none(), "{} at step {step} twice", v.tag);
            }
        }
    }
    values
}

/// `(tag, step) -> value` of metrics.jsonl, as 32-bit floats.
fn jsonl_scalars(out: &Path) -> BTreeMap<(String, u64), f32> {
    let file = ausa_track::scalars::MetricsFile::read(&out.join("metrics.jsonl")).unwrap();
    file.lines
        .into_iter()
        .flat_map(|(step, values)| {
            values
                .into_iter()
                .map(move |(tag, v)| ((tag, step), v as f32))
        })
        .collect()
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_exactly() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_split(dir.path(), &random_tokens(5, 10, VOCAB), VOCAB);
    let stats = TextStats {
        tokens: 240,
        words: 200,
        bytes: 1000,
    };
    let split = SplitInput {
        data: SplitData::open(&paths).unwrap(),
        stats: Some(stats),
    };
    let mut model = tiny_model(Attn::Ska, VOCAB);
    model.dropout = 0.1;
    model.ska_layers = vec![1];
    let config = TrainConfig {
        model,
        batch: 4,
        accum: 2,
        steps: Some(6),
        warmup: 2,
        ..TrainConfig::default()
    };
    let whole = dir.path().join("whole");
    let summary = train::run(&run(config.clone(), &split, &whole), &mut |_| {}).unwrap();
    assert_eq!(summary.steps, 6);
    let valid = summary.valid.expect("final validation");
    assert!(valid.word_ppl.is_some() && valid.bits_per_byte.is_some());

    let parts = dir.path().join("parts");
    let mut first = run(config.clone(), &split, &parts);
    first.stop_at = Some(3);
    assert_eq!(train::run(&first, &mut |_| {}).unwrap().steps, 3);
    let mut again = run(config.clone(), &split, &parts);
    assert!(
        train::run(&again, &mut |_| {}).is_err(),
        "a second run into a used --out must fail without --resume"
    );
    again.resume = true;
    assert_eq!(train::run(&again, &mut |_| {}).unwrap().steps, 6);

    let read = |out: &Path| {
        let mut t = Tensor::read_safetensors(out.join("checkpoint/model.safetensors")).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t.into_iter()
            .map(|(n, t)| (n, floats(&t)))
            .collect::<Vec<_>>()
    };
    let (a, b) = (read(&whole), read(&parts));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "parameter {name} differs after resume");
    }
    let (la, lb) = (train_lines(&whole), train_lines(&parts));
    assert_eq!(la.len(), 6);
    assert_eq!(lb.len(), 6);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
    }
    for name in ["run_meta.json", "summary.csv", "summary.json"] {
        assert!(parts.join(name).exists(), "{name} missing");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("run_meta.json")).unwrap()).unwrap();
    let sets = &meta["data"]["train"]["histograms"]["sets_per_seq"]["bins"];
    assert_eq!(sets[0]["count"], 10, "one count per sequence: {meta}");

    // TensorBoard: every number of metrics.jsonl at its step, in the event files; the
    // resumed process wrote a second file that starts with a restart marker at its
    // first new step.
    assert_eq!(tb_scalars(&whole), jsonl_scalars(&whole));
    assert_eq!(tb_scalars(&parts), jsonl_scalars(&parts));
    assert!(jsonl_scalars(&whole).contains_key(&("valid/word_ppl".into(), 6)));
    let files = tb_files(&parts);
    assert_eq!(files.len(), 2, "{files:?}");
    let second = ausa_track::tfevents::read_events(&files[1]).unwrap();
    let restart = second[1].session_log.as_ref().expect("a restart marker");
    assert_eq!((restart.status, second[1].step), (SessionLog::START, 4));

    // Another model shape cannot resume this checkpoint.
    let mut other = config.clone();
    other.model.d_model = 64;
    let mut bad = run(other, &split, &parts);
    bad.resume = true;
    let err = train::run(&bad, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("another model"), "{err}");
    // Nor can a run directory without one.
    let mut missing = run(config, &split, &dir.path().join("nothing"));
    missing.resume = true;
    let err = train::run(&missing, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("no checkpoint"), "{err}");
}

#[test]
fn the_sampler_is_seeded_and_covers_every_sequence_each_epoch() {
    let sampler = Sampler::new(10, 4, 9);
    assert_eq!(sampler.per_epoch(), 3);
    let epoch: Vec<Vec<i64>> = (0..3).map(|g| sampler.micro_batch(g).1).collect();
    assert_eq!(
        epoch.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    let mut all: Vec<i64> = epoch.concat();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert_eq!(sampler.micro_batch(3).0, 1, "batch 3 starts epoch 1");
    assert_ne!(
        sampler.permutation(0),
        sampler.permutation(1),
        "a new order per epoch"
    );
    assert_eq!(
        Sampler::new(10, 4, 9).permutation(1),
        sampler.permutation(1)
    );
    assert_ne!(
        Sampler::new(10, 4, 8).permutation(0),
        sampler.permutation(0)
    );
}

#[test]
fn learning_rate_warms_up_then_decays_to_the_floor() {
    let config = TrainConfig {
        lr: 1.0,
        warmup: 4,
        min_lr_ratio: 0.1,
        ..TrainConfig::default()
    };
    let lrs: Vec<f64> = (0..14).map(|s| learning_rate(&config, s, 14)).collect();
    assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
    assert!((lrs[4] - 1.0).abs() < 1e-12);
    assert!(lrs[4..].windows(2).all(|w| w[1] <= w[0]));
    assert!((learning_rate(&config, 14, 14) - 0.1).abs() < 1e-12);
}

#[test]
fn a_model_for_another_vocabulary_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_split(dir.path(), &random_tokens(6, 3, VOCAB), VOCAB);
    let split = SplitInput {
        data: SplitData::open(&paths).unwrap(),
        stats: None,
    };
    let config = TrainConfig {
        model: tiny_model(Attn::Sdpa, VOCAB + 1),
        precision: Precision::Bf16,
        ..TrainConfig::default()
    };
    let out = dir.path().join("run");
    let err = train::run(&run(config, &split, &out), &mut |_| {}).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("vocabulary 33"), "{err}");
    assert!(!out.exists(), "nothing written for a rejected run");
}

#[test]
fn bf16_training_runs_and_the_loss_is_finite() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_split(dir.path(), &random_tokens(7, 4, VOCAB), VOCAB);
    let split = SplitInput {
        data: SplitData::open(&paths).unwrap(),
        stats: None,
    };
    let config = TrainConfig {
        model: tiny_model(Attn::Ska, VOCAB),
        precision: Precision::Bf16,
        batch: 2,
        steps: Some(3),
        ..TrainConfig::default()
    };
    let summary = train::run(&run(config, &split, &dir.path().join("bf16")), &mut |_| {}).unwrap();
    assert!(summary.last_loss.unwrap().is_finite());
    // Next-token loss on logits of the right shape (sanity of the helper).
    let logits = Tensor::zeros([1, 3, 4], (Kind::Float, Device::Cpu));
    let (loss, n) = next_token_loss(&logits, &Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]));
    assert_eq!(n, 2);
    assert!((loss.double_value(&[]) - 4f64.ln()).abs() < 1e-6);
}

#[test]
fn fused_layernorm_resolves_to_libtorch_off_the_gpu_and_on_is_an_error_saying_why() {
    use crate::model::FusedNorm;
    use ausa_kernels::OpImpl;
    for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
        // Off and auto never fail; off the GPU (or in fp32) both are libtorch's LayerNorm.
        assert_eq!(FusedNorm::Off.ops(kind, Device::Cpu), Ok(OpImpl::Autograd));
        assert_eq!(FusedNorm::Auto.ops(kind, Device::Cpu), Ok(OpImpl::Autograd));
        let err = FusedNorm::On.ops(kind, Device::Cpu).unwrap_err();
        assert!(err.starts_with("--fused-layernorm on:"), "{err}");
        assert!(err.contains("--fused-layernorm auto or off"), "{err}");
        let why = if kind == Kind::Float {
            "--precision bf16 or fp16"
        } else {
            "--device cuda"
        };
        assert!(err.contains(why), "{kind:?}: {err}");
    }
}

/// `--ska-backend cuda` refuses what its kernels do not compute before anything runs, with
/// the flag to change: fp16 (the fused router and set attention take fp32 or bf16 rows), a
/// model without SKA blocks, a CPU device. Checked before the kernels are opened, so the
/// test holds on a machine without a GPU.
#[test]
fn the_cuda_backend_refuses_fp16_and_other_unsupported_setups_by_flag() {
    use crate::model::SkaBackend;
    let ska = tiny_model(Attn::Ska, 50);
    let fp16 = SkaBackend::Cuda
        .ops(&ska, Kind::Half, Device::Cuda(0))
        .expect_err("fp16 is refused");
    assert!(fp16.contains("--precision bf16"), "{fp16}");
    let dot = SkaBackend::Cuda
        .ops(
            &tiny_model(Attn::DotNaive, 50),
            Kind::BFloat16,
            Device::Cuda(0),
        )
        .expect_err("no SKA blocks");
    assert!(dot.contains("--attn ska"), "{dot}");
    let cpu = SkaBackend::Cuda
        .ops(&ska, Kind::BFloat16, Device::Cpu)
        .expect_err("no CUDA device");
    assert!(cpu.contains("--device cuda"), "{cpu}");
    assert!(SkaBackend::Naive.ops(&ska, Kind::Half, Device::Cpu).is_ok());
}
