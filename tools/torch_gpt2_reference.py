#!/usr/bin/env python3
"""A PyTorch reference for Tapestry's GPU speed: GPT-2 124M in bf16 on the same card, same lease.

The model is llm.c's train_gpt2.py shape: L=12, H=12, C=768, vocabulary 50257 padded to 50304,
tied embeddings, learned positions, GELU (tanh). It uses PyTorch's fused attention
(scaled_dot_product_attention, causal), bf16 autocast and fused AdamW. Random tokens; the figure is
speed only. MFU uses Tapestry's FLOP count (ModelConfig::flops_per_token: 6 N + 12 L H hd T per
token, N without the position embedding) against --peak, so the two MFU columns compare.

    python3 tools/torch_gpt2_reference.py [--batch 8] [--seq 1024] [--steps 12] [--peak 989e12]
                                          [--compile] [--device cuda]

Prints one line per step and a summary line "torch_reference: ... ms/step ... tokens/s ... MFU".
"""
import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.fcproj = nn.Linear(4 * C, C)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # PyTorch < 2.0 (a CPU check of this script): the same thing, unfused
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, H, C, V, T):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, H) for _ in range(L))
        self.lnf = nn.LayerNorm(C)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.lnf(x), self.wte.weight)  # tied
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50304, help="padded vocabulary (GPT-2: 50257 -> 50304)")
    ap.add_argument("--peak", type=float, default=989e12, help="FLOP/s that MFU divides by")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (slower start)")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.steps < 3:
        sys.exit("torch_reference: error: --steps must be at least 3 (the first two are warm-up)")
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_reference: error: no CUDA device visible to PyTorch")
    torch.manual_seed(1234)
    model = GPT(a.layers, a.heads, a.dim, a.vocab, a.seq).to(dev)
    n = sum(p.numel() for p in model.parameters()) - a.seq * a.dim  # without the position embedding
    flops_per_token = 6.0 * n + 12.0 * a.layers * a.heads * (a.dim // a.heads) * a.seq
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, **fused)
    step_fn = torch.compile(model) if a.compile else model
    tokens = min(50257, a.vocab)  # GPT-2's vocabulary inside the padded one
    x = torch.randint(0, tokens, (a.batch, a.seq), device=dev)
    y = torch.randint(0, tokens, (a.batch, a.seq), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for s in range(a.steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        lv = loss.item()
        if not math.isfinite(lv):
            sys.exit(f"torch_reference: error: loss {lv} at step {s + 1}")
        times.append(dt)
        tok = a.batch * a.seq / dt
        print(f"step {s + 1:3d}/{a.steps} | loss {lv:.4f} | {dt * 1e3:.1f} ms | {tok:.0f} tok/s | "
              f"MFU {100 * flops_per_token * tok / a.peak:.1f}%", flush=True)
    dt = sorted(times[2:])[len(times[2:]) // 2]  # the median after two warm-up steps
    tok = a.batch * a.seq / dt
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch_reference: torch {torch.__version__} on {name}, GPT-2 {n / 1e6:.1f}M, B={a.batch} T={a.seq}"
          f"{' compiled' if a.compile else ''}: {dt * 1e3:.1f} ms/step (median of steps 3-{a.steps}), "
          f"{tok:.0f} tokens/s, MFU {100 * flops_per_token * tok / a.peak:.1f}% of {a.peak:.3g} FLOP/s")


if __name__ == "__main__":
    main()
