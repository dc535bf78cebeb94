"""PyTorch peer of `ausa train lm --attn sdpa`: the same architecture (learned positions, tied
embeddings, pre-LN blocks with a biased qkv projection, causal SDPA, exact-GELU MLP of width
ffn_mult*d, final LayerNorm), init N(0, 0.02) with residual projections scaled by
1/sqrt(2*layers), AdamW, fed random token batches of the same shape. Prints tokens/s of the
timed steps (after warm-up, CUDA-synchronized) for eager and torch.compile, as JSON.

Usage: python3 tests/bench/lm_peer.py --vocab 1024 --d-model 768 --layers 12 --heads 12 \
           --seq-len 1024 --batch 16 --steps 30 --warmup 10 [--compile] [--phases]
"""
import argparse, json, math, statistics, time
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

    for i in range(a.warmup):
        step(batches[i % 4])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(a.steps):
        loss = step(batches[i % 4])
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"mode": "compile" if compiled else "eager", "tokens_per_s": a.batch * a.seq_len * a.steps / dt,
           "ms_per_step": 1e3 * dt / a.steps, "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
           "loss": float(loss)}
    if a.phases:
        # Where the time goes: the same steps with a synchronization after each phase
        # (as `ausa train lm --benchmark` reports them), medians in ms.
        times = {"forward_ms": [], "backward_ms": [], "optimizer_ms": []}
        for i in range(a.steps):
            torch.cuda.synchronize()
            clock = [time.perf_counter()]

            def mark(phase):
                torch.cuda.synchronize()
                now = time.perf_counter()
                times[phase].append(1e3 * (now - clock[0]))
                clock[0] = now

            step(batches[i % 4], mark)
        out.update({k: statistics.median(v) for k, v in times.items()})
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name, default in [("vocab", 1024), ("d-model", 768), ("layers", 12), ("heads", 12), ("ffn-mult", 4),
                          ("seq-len", 1024), ("batch", 16), ("steps", 30), ("warmup", 10)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--phases", action="store_true", help="also time forward / backward / optimizer, synchronized")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    print(json.dumps(run(a, False)))
    if a.compile:
        print(json.dumps(run(a, True)))
