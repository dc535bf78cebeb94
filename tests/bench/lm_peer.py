"""PyTorch peer of `ausa train lm --attn sdpa`: the same architecture (learned positions, tied
embeddings, pre-LN blocks with a biased qkv projection, causal SDPA, exact-GELU MLP of width
ffn_mult*d, final LayerNorm), init N(0, 0.02) with residual projections scaled by
1/sqrt(2*layers), AdamW, fed random token batches of the same shape. Prints tokens/s of the
timed steps (after warm-up, CUDA-synchronized) for eager and torch.compile, as JSON.

`--attn ska` is the peer of `ausa train lm --attn ska --ska-backend naive` (every block SKA,
`--set-features atoms`, adapter rank 0, `--early none`, `--delta minhash`): the same tensor ops
in the same order and dtypes as `ausa_kernels` (`SetLayout::new`, `minhash_delta`,
`SetAttention::forward`, `pool_phi`, `masked_softmax`, `top_k_mask`) and `Lm::forward`, with the
same explicit casts (fp32 master weights cast at use, no autocast). Each batch's set inputs
(windows `--window` / `--stride`, sorted distinct atoms, MinHash `--minhash-k`, causal route
`end <= t + 1`) are built before timing; the set layout, `Delta` included, is built inside the
timed step (as the trainer does, in its forward phase).

Usage: python3 tests/bench/lm_peer.py --vocab 1024 --d-model 768 --layers 12 --heads 12 \
           --seq-len 1024 --batch 16 --steps 30 --warmup 10 [--compile] [--phases]
           [--attn ska [--window 64 --stride 32 --minhash-k 128 --beta 0 --gate-topk 0]
            [--precision bf16|fp32] [--device cuda|cpu]]
"""
import argparse, json, math, statistics, time
from typing import NamedTuple
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, ffn_mult, layers):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, ffn_mult * d), nn.Linear(ffn_mult * d, d)
        for lin, std in [(self.qkv, 0.02), (self.up, 0.02),
                         (self.out, 0.02 / math.sqrt(2 * layers)), (self.down, 0.02 / math.sqrt(2 * layers))]:
            nn.init.normal_(lin.weight, 0.0, std)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        b, l, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(b, l, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class Lm(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.tok = nn.Parameter(torch.randn(a.vocab, a.d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(a.seq_len, a.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(a.d_model, a.heads, a.ffn_mult, a.layers) for _ in range(a.layers))
        self.ln_f = nn.LayerNorm(a.d_model)

    def forward(self, tokens):
        x = self.tok[tokens] + self.pos[: tokens.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.tok.t()


def run(a, compiled):
    torch.manual_seed(0)
    model = Lm(a).cuda()
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(0, a.vocab, (a.batch, a.seq_len), device="cuda", generator=gen) for _ in range(4)]
    torch.cuda.reset_peak_memory_stats()

    def step(tokens, mark=lambda phase: None):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = step_model(tokens)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, a.vocab), tokens[:, 1:].reshape(-1))
        mark("forward_ms")
        loss.backward()
        mark("backward_ms")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark("optimizer_ms")
        return loss

    dt, loss, phases = time_steps(step, batches, a, torch.cuda.synchronize)
    out = {"mode": "compile" if compiled else "eager", "tokens_per_s": a.batch * a.seq_len * a.steps / dt,
           "ms_per_step": 1e3 * dt / a.steps, "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
           "loss": float(loss)}
    out.update(phases)
    return out


def time_steps(step, batches, a, sync):
    """`a.warmup` steps, then `a.steps` back to back with one synchronization at the end
    (seconds, and the last loss); with `a.phases` also the same steps with a synchronization
    after each phase (as `ausa train lm --benchmark` reports them), medians in ms."""
    for i in range(a.warmup):
        step(batches[i % 4])
    sync()
    t0 = time.perf_counter()
    for i in range(a.steps):
        loss = step(batches[i % 4])
    sync()
    dt = time.perf_counter() - t0
    phases = {}
    if a.phases:
        times = {"forward_ms": [], "backward_ms": [], "optimizer_ms": []}
        for i in range(a.steps):
            sync()
            clock = [time.perf_counter()]

            def mark(phase):
                sync()
                now = time.perf_counter()
                times[phase].append(1e3 * (now - clock[0]))
                clock[0] = now

            step(batches[i % 4], mark)
        phases = {k: statistics.median(v) for k, v in times.items()}
    return dt, loss, phases


# ---------------------------------------------------------------------------------------------
# --attn ska: a one-to-one port of the Rust naive reference (`kernels/src/lib.rs`,
# `trainers/lm/src/model.rs`). Comments name the Rust function each piece follows.

DELTA_CHUNK = 32  # signature columns compared at once (lib.rs DELTA_CHUNK)
IGNORE = -100


class SetInputs(NamedTuple):
    """One batch's set structure as flat tensors (lib.rs `SetInputs`, kinds as data.rs gives them)."""
    seq_sets: torch.Tensor     # [B + 1] int64
    max_sets: int
    signatures: torch.Tensor   # [Nsets, k] int32
    sizes: torch.Tensor        # [Nsets] int64
    starts: torch.Tensor       # [Nsets] int64
    ends: torch.Tensor         # [Nsets] int64
    values: torch.Tensor       # [Nvalues] int64
    set_offsets: torch.Tensor  # [Nsets + 1] int64
    route: torch.Tensor        # [B, L, M] bool (an expanded [L, M] table, as data.rs)


class SetLayout(NamedTuple):
    batch: int
    seq_len: int
    max_sets: int
    delta: torch.Tensor       # [B, M, M] fp32
    attend: torch.Tensor      # [B, 1, M, M] bool
    route: torch.Tensor       # [B, 1, L, M] bool
    sizes: torch.Tensor       # [B, M] fp32
    starts: torch.Tensor      # [B, M] int64
    ends: torch.Tensor        # [B, M] int64
    values: torch.Tensor      # [Nvalues] int64
    value_slot: torch.Tensor  # [Nvalues] int64


def build_sets(tokens, window, stride, k, seed=0):
    """Set inputs of `tokens` ([B, L] int64), vectorized (toy.rs `sets` rules, no leading windows):
    full windows [s*stride, s*stride + window), atoms the sorted distinct ids, k MinHash values
    under a seeded universal hash family, route `end <= t + 1`."""
    bsz, seq_len = tokens.shape
    dev = tokens.device
    starts = torch.arange(0, seq_len - window + 1, stride, device=dev)
    m = starts.numel()
    ends = starts + window
    win = tokens.unfold(1, window, stride)  # [B, M, window]
    srt = win.sort(-1).values
    distinct = torch.cat([torch.ones_like(srt[..., :1], dtype=torch.bool), srt[..., 1:] != srt[..., :-1]], -1)
    sizes = distinct.sum(-1).reshape(-1)
    values = srt[distinct]  # row-major: set by set, each set's atoms sorted
    set_offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    prime = 2**31 - 1
    gen = torch.Generator().manual_seed(seed)
    mul = torch.randint(1, prime, (k,), generator=gen).to(dev)
    add = torch.randint(0, prime, (k,), generator=gen).to(dev)
    signatures = ((win.unsqueeze(-1) * mul + add) % prime).amin(2).reshape(bsz * m, k).to(torch.int32)
    route = ends.view(1, m) <= torch.arange(seq_len, device=dev).view(seq_len, 1) + 1
    return SetInputs(
        seq_sets=torch.arange(bsz + 1, device=dev) * m, max_sets=m, signatures=signatures,
        sizes=sizes.to(torch.int64), starts=starts.repeat(bsz), ends=ends.repeat(bsz),
        values=values.to(torch.int64), set_offsets=set_offsets.to(torch.int64),
        route=route.unsqueeze(0).expand(bsz, seq_len, m))


def minhash_delta(signatures, sizes):
    """lib.rs `minhash_delta`: [B, M, M] fp32 from [B, M, k] signatures and [B, M] fp32 sizes."""
    batch, max_sets, k = signatures.shape
    equal = torch.zeros(batch, max_sets, max_sets, dtype=torch.float32, device=signatures.device)
    col = 0
    while col < k:
        width = min(DELTA_CHUNK, k - col)
        part = signatures.narrow(2, col, width)
        eq = part.unsqueeze(2).eq(part.unsqueeze(1))
        equal += eq.sum(-1, dtype=torch.float32)
        col += width
    jaccard = equal / float(max(k, 1))
    size_sum = sizes.unsqueeze(2) + sizes.unsqueeze(1)
    inter = jaccard / (jaccard + 1.0) * size_sum
    return (size_sum - inter * 2.0).clamp_min(0.0)


@torch.no_grad()
def set_layout(inputs, seq_len):
    """lib.rs `SetLayout::new` / `build`, under no_grad."""
    dev = inputs.signatures.device
    seq_sets = inputs.seq_sets.to(torch.int64)
    batch = seq_sets.shape[0] - 1
    counts = seq_sets.narrow(0, 1, batch) - seq_sets.narrow(0, 0, batch)
    max_sets = inputs.max_sets if batch else 0
    nsets = inputs.sizes.shape[0]
    set_seq = torch.arange(batch, device=dev).repeat_interleave(counts, 0, output_size=nsets)
    local = torch.arange(nsets, device=dev) - seq_sets.index_select(0, set_seq)
    slot = set_seq * max_sets + local
    slots = batch * max_sets
    k = inputs.signatures.shape[1]

    def pad(t, fill):
        return torch.full((slots, *t.shape[1:]), fill, dtype=t.dtype, device=dev).index_copy(0, slot, t)

    valid = pad(torch.ones(nsets, dtype=torch.bool, device=dev), 0).view(batch, max_sets)
    sizes = pad(inputs.sizes.to(torch.float32), 0.0).view(batch, max_sets)
    starts = pad(inputs.starts.to(torch.int64), 0).view(batch, max_sets)
    ends = pad(inputs.ends.to(torch.int64), 0).view(batch, max_sets)
    signatures = pad(inputs.signatures, 0).view(batch, max_sets, k)

    delta = minhash_delta(signatures, sizes)

    attend = valid.unsqueeze(2) * valid.unsqueeze(1) * ends.unsqueeze(1).le(ends.unsqueeze(2))
    attend = attend.unsqueeze(1)

    route_in = inputs.route.to(torch.bool)
    width = min(route_in.shape[2], max_sets)
    route = torch.zeros(batch, seq_len, max_sets, dtype=torch.bool, device=dev)
    if width > 0:
        route = route.slice_scatter(route_in.narrow(2, 0, width), 2, 0, width, 1)
    route = (route * valid.unsqueeze(1)).unsqueeze(1)

    nvalues = inputs.values.shape[0]
    offsets = inputs.set_offsets.to(torch.int64)
    per_set = offsets.narrow(0, 1, nsets) - offsets.narrow(0, 0, nsets)
    value_set = torch.arange(nsets, device=dev).repeat_interleave(per_set, 0, output_size=nvalues)
    value_slot = slot.index_select(0, value_set)
    return SetLayout(batch, seq_len, max_sets, delta, attend, route, sizes, starts, ends,
                     inputs.values.to(torch.int64), value_slot)


def masked_softmax(scores, mask):
    """lib.rs `masked_softmax`: rows with no visible entry give zeros."""
    hidden = mask.logical_not()
    empty = mask.any(-1, keepdim=True).logical_not()
    filled = scores.masked_fill(hidden, float("-inf")).masked_fill(empty, 0.0)
    return filled.softmax(-1, dtype=scores.dtype) * mask.to(scores.dtype)


def top_k_mask(scores, mask, k):
    """lib.rs `top_k_mask` (k = 0: the mask itself)."""
    width = scores.shape[-1]
    if k <= 0 or k >= width:
        return mask
    visible = scores.masked_fill(mask.logical_not(), float("-inf"))
    index = visible.detach().topk(k, -1, True, False).indices
    keep = torch.zeros_like(mask).scatter(-1, index, True)
    return keep.logical_and(mask)


def pool_phi(phi_values, lay):
    """lib.rs `pool_phi`: Phi(S) = sum of the set's atom features, a differentiable index_add."""
    dim = phi_values.shape[-1]
    slots = lay.batch * lay.max_sets
    return (torch.zeros(slots, dim, dtype=phi_values.dtype, device=phi_values.device)
            .index_add(0, lay.value_slot, phi_values).view(lay.batch, lay.max_sets, dim))


def linear_kind(lin, x):
    """lib.rs `linear_kind`: x W^T + b with the fp32 weights cast to x's dtype."""
    return F.linear(x, lin.weight.to(x.dtype), lin.bias.to(x.dtype))


def tch_linear(i, o):
    """tch's `nn::linear` default init: Kaiming uniform (ReLU gain, fan-in), bias U(+-1/sqrt(i))."""
    lin = nn.Linear(i, o)
    with torch.no_grad():
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(i)
        lin.weight.uniform_(-bound, bound)
        lin.bias.uniform_(-1.0 / math.sqrt(i), 1.0 / math.sqrt(i))
    return lin


def gpt_linear(i, o, std):
    """model.rs `linear`: normal(0, std) weights, zero bias."""
    lin = nn.Linear(i, o)
    nn.init.normal_(lin.weight, 0.0, std)
    nn.init.zeros_(lin.bias)
    return lin


class SetAttention(nn.Module):
    """lib.rs `SetAttention` (OpImpl::Autograd)."""

    def __init__(self, d, heads, beta=0.0, router_topk=0, gamma_init=0.05, tau_init=0.1):
        super().__init__()
        assert heads > 0 and d % heads == 0, f"d_model {d} not divisible by heads {heads}"
        self.heads, self.head_dim, self.beta, self.router_topk = heads, d // heads, beta, router_topk
        self.log_gamma = nn.Parameter(torch.full((heads,), math.log(gamma_init)))
        self.log_tau = nn.Parameter(torch.full((heads,), math.log(tau_init)))
        if beta != 0.0:
            std = 1.0 / math.sqrt(d)
            self.a = nn.Parameter(torch.randn(heads, d, d // heads) * std)
            self.b = nn.Parameter(torch.randn(heads, d, d // heads) * std)
        else:
            self.a = self.b = None
        self.v, self.gate, self.out = tch_linear(d + 1, d), tch_linear(d, d), tch_linear(d, d)

    def set_outputs(self, phi, lay):
        kind = phi.dtype
        bsz, m, h, dh = lay.batch, lay.max_sets, self.heads, self.head_dim
        value_in = torch.cat([phi, torch.log1p(lay.sizes).to(kind).unsqueeze(-1)], -1)
        values = linear_kind(self.v, value_in).view(bsz, m, h, dh).transpose(1, 2)
        content = None
        if self.a is not None:
            content = (phi.unsqueeze(1).matmul(self.a.to(kind).unsqueeze(0)),
                       phi.unsqueeze(1).matmul(self.b.to(kind).unsqueeze(0)))
        kernel = (lay.delta.to(kind).unsqueeze(1) * -(self.log_gamma.exp().to(kind).view(1, h, 1, 1))).exp()
        scores = kernel if content is None else kernel + content[0].matmul(content[1].transpose(-1, -2)) * self.beta
        scores = scores / self.log_tau.exp().to(kind).view(1, h, 1, 1)
        weights = masked_softmax(scores, lay.attend)
        return weights.matmul(values)

    def forward(self, x, phi, lay):
        bsz, l, h, dh = lay.batch, lay.seq_len, self.heads, self.head_dim
        z = self.set_outputs(phi.to(x.dtype), lay)
        query = linear_kind(self.gate, x).view(bsz, l, h, dh).transpose(1, 2)
        logits = query.matmul(z.transpose(-1, -2))  # [B, H, L, M]
        mask = lay.route.expand_as(logits)
        mask = top_k_mask(logits, mask, self.router_topk)
        routed = masked_softmax(logits, mask).matmul(z)
        mixed = routed.transpose(1, 2).reshape(bsz, l, h * dh)
        return linear_kind(self.out, mixed)


class SkaBlock(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, resid = a.d_model, 0.02 / math.sqrt(2 * a.layers)
        # Creation order as model.rs's Block: mixer, then the MLP (LayerNorms take no RNG).
        self.ska = SetAttention(d, a.heads, a.beta, a.gate_topk)
        self.up, self.down = gpt_linear(d, a.ffn_mult * d, 0.02), gpt_linear(a.ffn_mult * d, d, resid)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)


class SkaLm(nn.Module):
    """model.rs `Lm` with every block SKA, learned positions, `--set-features atoms`, adapter
    rank 0, dropout 0; explicit casts to `kind` (fp32 LayerNorms and residual stream)."""

    def __init__(self, a, kind):
        super().__init__()
        self.kind = kind
        self.blocks = nn.ModuleList(SkaBlock(a) for _ in range(a.layers))
        self.tok = nn.Parameter(torch.randn(a.vocab, a.d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(a.seq_len, a.d_model) * 0.02)
        self.ln_f = nn.LayerNorm(a.d_model, eps=1e-5)

    def forward(self, tokens, lay):
        kind = self.kind
        length = tokens.shape[1]
        x = F.embedding(tokens, self.tok) + self.pos.narrow(0, 0, length).unsqueeze(0)
        # Phi(S) = sum over the set's atoms of E[u] (adapter rank 0: identity), once per forward.
        phi = pool_phi(self.tok.index_select(0, lay.values), lay).to(kind)
        for blk in self.blocks:
            h = blk.ln1(x).to(kind)
            x = x + blk.ska(h, phi, lay)  # fp32 + bf16 promotes to fp32, as in Rust
            h = blk.ln2(x).to(kind)
            x = x + linear_kind(blk.down, F.gelu(linear_kind(blk.up, h)))
        h = self.ln_f(x).to(kind)
        return h.matmul(self.tok.to(kind).transpose(0, 1)).to(torch.float32)


def next_token_loss(logits, tokens):
    """model.rs `next_token_loss`: targets shifted left, the last position ignored."""
    bsz, length, vocab = logits.shape
    last = torch.full((bsz, 1), IGNORE, dtype=torch.int64, device=tokens.device)
    target = torch.cat([tokens.narrow(1, 1, length - 1), last], 1).reshape(-1)
    return F.cross_entropy(logits.reshape(-1, vocab), target, ignore_index=IGNORE)


def make_ska(a, device):
    """The SKA model and its AdamW (train.rs `AdamW`: decay on params of >= 2 dims but `log_*`)."""
    kind = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.precision]
    model = SkaLm(a, kind).to(device)
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "log_" not in n]
    rest = [p for n, p in named if not (p.dim() >= 2 and "log_" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=True)
    return model, opt


def run_ska(a, compiled):
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    model, opt = make_ska(a, device)
    step_model = torch.compile(model) if compiled else model
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = [torch.randint(0, a.vocab, (a.batch, a.seq_len), device=device, generator=gen) for _ in range(4)]
    # Set inputs are prepared data (the trainer reads them from its artifacts); the layout is not.
    batches = [(t, build_sets(t, a.window, a.stride, a.minhash_k, seed=i)) for i, t in enumerate(tokens)]
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step(batch, mark=lambda phase: None):
        toks, sets = batch
        opt.zero_grad(set_to_none=True)
        lay = set_layout(sets, a.seq_len)  # per batch, inside the step (train.rs `train_step`)
        logits = step_model(toks, lay)
        loss = next_token_loss(logits, toks)
        mark("forward_ms")
        (loss * 1.0).backward()  # train.rs: loss * (weight * scale), both 1 here
        mark("backward_ms")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mark("optimizer_ms")
        return loss

    dt, loss, phases = time_steps(step, batches, a, sync)
    sets0 = batches[0][1]
    out = {"mode": "compile" if compiled else "eager", "attn": "ska",
           "tokens_per_s": a.batch * a.seq_len * a.steps / dt, "ms_per_step": 1e3 * dt / a.steps,
           "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
           "loss": float(loss.detach()), "precision": a.precision, "sets_per_seq": sets0.max_sets,
           "avg_atoms_per_set": sets0.values.numel() / max(sets0.sizes.numel(), 1)}
    out.update(phases)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name, default in [("vocab", 1024), ("d-model", 768), ("layers", 12), ("heads", 12), ("ffn-mult", 4),
                          ("seq-len", 1024), ("batch", 16), ("steps", 30), ("warmup", 10)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--phases", action="store_true", help="also time forward / backward / optimizer, synchronized")
    p.add_argument("--attn", choices=["sdpa", "ska"], default="sdpa")
    for name, default in [("window", 64), ("stride", 32), ("minhash-k", 128), ("gate-topk", 0)]:
        p.add_argument("--" + name, type=int, default=default, help="with --attn ska")
    p.add_argument("--beta", type=float, default=0.0, help="with --attn ska")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="with --attn ska (sdpa: bf16 autocast always)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="with --attn ska (cpu: a smoke check only)")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    if a.attn == "sdpa":
        if a.device != "cuda" or a.precision != "bf16":
            p.error("--device and --precision apply to --attn ska only")
        print(json.dumps(run(a, False)))
        if a.compile:
            print(json.dumps(run(a, True)))
    else:
        if a.seq_len < a.window or a.window <= 0 or a.stride <= 0:
            p.error("--attn ska needs 0 < --window <= --seq-len and --stride > 0")
        print(json.dumps(run_ska(a, False)))
        if a.compile:
            try:
                print(json.dumps(run_ska(a, True)))
            except Exception as e:  # noqa: BLE001 (report, do not crash)
                print(json.dumps({"mode": "compile", "attn": "ska", "error": f"{type(e).__name__}: {e}"[:4000]}))
