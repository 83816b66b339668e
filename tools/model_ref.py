#!/usr/bin/python3
"""Independent float64 numpy reference forward pass for Tapestry HDF5 checkpoints (format v2).

Written from the published equations (Hugging Face transformers conventions: GPT-2,
Llama/LlamaRotaryEmbedding incl. llama3 scaling, Qwen3-style per-head QK-norm,
XIELUActivation). It does not use any Tapestry code.  Run with Debian's python3
(python3-numpy, python3-h5py).

Model (pre-norm decoder; all linears are y = x @ W.T + b, W stored [out, in]):
  x = wte[tok] (+ wpe[pos] if positions == learned)
  per layer:  x = x + o(attn(norm1(x)));  x = x + mlp(norm2(x))
  logits = final_norm(x) @ W_out[:vocab_size].T   (W_out = wte if tie_embeddings else lm_head)
  LayerNorm(x) = (x - mean) / sqrt(var + eps) * w + b   (biased variance; no b when bias == 0)
  RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * w
  attn: causal softmax(q k^T / sqrt(hd)) v; query head h uses kv head h // (n_head // n_kv_head);
        qk_norm: RMSNorm over each head's hd values (shared weight), before RoPE.
  RoPE: inv_freq[i] = theta^(-2i/hd); angle = pos * inv_freq; emb = [angle, angle];
        q' = q cos(emb) + rotate_half(q) sin(emb), rotate_half(x) = [-x2, x1].
  gelu:   down(gelu_tanh(up(x)));  swiglu: down(silu(gate(x)) * up(x));  xielu: down(xielu(up(x))).
"""
import argparse, json, math, os, sys
import numpy as np

EPILOG = """
error definitions (a = the other program's values, b = this script's float64 values):
  logits_max_rel_err = max over all entries |a - b| / max over all entries |b|
                       (absolute error relative to the largest reference logit magnitude)
  loss_rel_err       = |X - loss| / |loss|   (X = --compare-loss)
  loss               = mean over rows*seq_len positions of -log softmax(logits[:vocab_size])[target]
token file: llm.c format, 256 int32 header (magic 20240520, version 1, count), then count
uint16 tokens; row r uses inputs tokens[r*T + t], targets tokens[r*T + t + 1], t < T, so
rows*T + 1 tokens are needed.  --compare-logits: raw little-endian float32, shape
(rows*T, vocab_size), row r*T + t.  --logits-out: float64 .npy of the same shape.
optional attributes of /model (default): qk_norm (0), qk_norm_eps (norm_eps), rope_scaling
("none"), xielu_beta (0.5), xielu_eps (-1e-6); all others listed in the v2 format are required.
exit codes: 0 ok; 1 an error exceeds its tolerance, or a NaN/inf in the logits/loss
(either side); 2 bad input (missing file/tensor/attribute, shape mismatch, too few tokens)."""


class BadInput(Exception):  # -> exit code 2
    pass


def load_model(path):
    import h5py
    if not os.path.isfile(path):
        raise BadInput(f"checkpoint not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BadInput(f"cannot open {path} as HDF5: {e}")
    if "model" not in f:
        raise BadInput(f"no /model group in {path}")
    A = f["/model"].attrs  # the model spec: attributes of /model

    def attr(name, default=None):
        if name not in A:
            if default is None:
                raise BadInput(f"missing attribute '{name}' of /model in {path}")
            return default
        v = A[name]
        if isinstance(v, np.ndarray):
            v = v.reshape(-1)[0]
        if isinstance(v, (bytes, np.bytes_)):
            v = v.decode()
        return v.strip() if isinstance(v, str) else v

    c = {k: int(attr(k)) for k in ("n_layer", "n_head", "n_kv_head", "d_model", "vocab_size",
                                    "padded_vocab_size", "max_seq_len", "ffn_dim",
                                    "tie_embeddings", "bias")}
    c.update(norm=attr("norm"), norm_eps=float(attr("norm_eps")), mlp=attr("mlp"),
             positions=attr("positions"), qk_norm=int(attr("qk_norm", 0)))
    c["qk_norm_eps"] = float(attr("qk_norm_eps", c["norm_eps"]))
    if c["norm"] not in ("layernorm", "rmsnorm") or c["mlp"] not in ("gelu", "swiglu", "xielu") \
            or c["positions"] not in ("learned", "rope"):
        raise BadInput(f"unsupported norm/mlp/positions: {c['norm']}/{c['mlp']}/{c['positions']}")
    if c["d_model"] % c["n_head"] or c["n_head"] % c["n_kv_head"]:
        raise BadInput("d_model must divide by n_head and n_head by n_kv_head")
    c["hd"] = hd = c["d_model"] // c["n_head"]
    if c["mlp"] == "xielu":
        c["xielu_beta"] = float(attr("xielu_beta", 0.5))
        c["xielu_eps"] = float(attr("xielu_eps", -1e-6))
    if c["positions"] == "rope":
        if hd % 2:
            raise BadInput(f"RoPE needs an even head dim, got {hd}")
        # HF: inv_freq = 1 / theta^(arange(0, hd, 2) / hd)
        inv = 1.0 / float(attr("rope_theta")) ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
        if attr("rope_scaling", "none") == "llama3":   # transformers _compute_llama3_parameters
            fac, lo, hi = (float(attr(k)) for k in
                           ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"))
            orig = float(attr("rope_original_context"))
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > orig / lo, inv / fac, inv)
            smooth = (orig / wavelen - lo) / (hi - lo)
            smoothed = (1 - smooth) * scaled / fac + smooth * scaled
            medium = ~(wavelen < orig / hi) & ~(wavelen > orig / lo)
            inv = np.where(medium, smoothed, scaled)
        elif attr("rope_scaling", "none") != "none":
            raise BadInput(f"unsupported rope_scaling {attr('rope_scaling')}")
        c["inv_freq"] = inv

    def get(name, shape):
        if name not in f:
            raise BadInput(f"missing tensor {name} in {path}")
        a = np.asarray(f[name][...], dtype=np.float64)
        if a.shape != tuple(shape):
            raise BadInput(f"tensor {name} has shape {a.shape}, expected {tuple(shape)}")
        return a

    D, F, H, KV = c["d_model"], c["ffn_dim"], c["n_head"], c["n_kv_head"]
    ln, bias = c["norm"] == "layernorm", c["bias"]
    W = {"wte": get("/model/embedding/token/weight", (c["padded_vocab_size"], D))}
    if c["positions"] == "learned":
        W["wpe"] = get("/model/embedding/position/weight", (c["max_seq_len"], D))

    def norm(p, n):
        W[p + "/weight"] = get(p + "/weight", (n,))
        if ln and bias:  # LayerNorm has a bias only when the model has biases
            W[p + "/bias"] = get(p + "/bias", (n,))

    def linear(p, o, i, has_bias=bias):
        W[p + "/weight"] = get(p + "/weight", (o, i))
        if has_bias:
            W[p + "/bias"] = get(p + "/bias", (o,))

    for l in range(c["n_layer"]):
        p = f"/model/layers/{l:02d}/"
        norm(p + "attn_norm", D), norm(p + "mlp_norm", D)
        for n, o in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            linear(p + "attn/" + n, o, D)
        linear(p + "attn/o", D, H * hd)
        for n in ("attn/q_norm/weight", "attn/k_norm/weight") if c["qk_norm"] else ():
            W[p + n] = get(p + n, (hd,))
        linear(p + "mlp/up", F, D), linear(p + "mlp/down", D, F)
        if c["mlp"] == "swiglu":
            linear(p + "mlp/gate", F, D)
        for n in ("mlp/act/alpha_p", "mlp/act/alpha_n") if c["mlp"] == "xielu" else ():
            W[p + n] = get(p + n, (1,))[0]   # raw (pre-softplus) trainable scalars
    norm("/model/final_norm", D)
    W["out"] = (W["wte"] if c["tie_embeddings"] else
                get("/model/lm_head/weight", (c["padded_vocab_size"], D)))[:c["vocab_size"]]
    f.close()
    return c, W


def forward(c, W, tok):
    """tok: int array (T,) -> float64 logits (T, vocab_size)."""
    T, H, KV, hd = len(tok), c["n_head"], c["n_kv_head"], c["hd"]
    ln = c["norm"] == "layernorm"

    def lin(x, p):  # y = x W^T + b
        y = x @ W[p + "/weight"].T
        return y + W[p + "/bias"] if p + "/bias" in W else y

    def rms(x, w, eps):  # HF LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * w
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def norm(x, p):
        eps = c["norm_eps"]
        if ln:   # LayerNorm, biased variance
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            y = (x - mu) / np.sqrt(var + eps) * W[p + "/weight"]
            return y + W[p + "/bias"] if p + "/bias" in W else y
        return rms(x, W[p + "/weight"], eps)

    def rope(x):  # x: (heads, T, hd); positions 0..T-1
        ang = np.arange(T, dtype=np.float64)[:, None] * c["inv_freq"][None, :]
        emb = np.concatenate([ang, ang], -1)
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * np.cos(emb) + rot * np.sin(emb)

    x = W["wte"][tok]
    if c["positions"] == "learned":
        x = x + W["wpe"][:T]
    causal = np.triu(np.ones((T, T), dtype=bool), 1)
    for l in range(c["n_layer"]):
        p = f"/model/layers/{l:02d}/"
        h = norm(x, p + "attn_norm")
        q = lin(h, p + "attn/q").reshape(T, H, hd).transpose(1, 0, 2)
        k = lin(h, p + "attn/k").reshape(T, KV, hd).transpose(1, 0, 2)
        v = lin(h, p + "attn/v").reshape(T, KV, hd).transpose(1, 0, 2)
        if c["qk_norm"]:   # per-head RMSNorm over hd, weight shared by heads, before RoPE
            q = rms(q, W[p + "attn/q_norm/weight"], c["qk_norm_eps"])
            k = rms(k, W[p + "attn/k_norm/weight"], c["qk_norm_eps"])
        if c["positions"] == "rope":
            q, k = rope(q), rope(k)
        rep = np.arange(H) // (H // KV)               # HF repeat_kv
        k, v = k[rep], v[rep]
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)  # (H, T, T)
        s = np.where(causal, -np.inf, s)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v        # (H, T, hd)
        x = x + lin(a.transpose(1, 0, 2).reshape(T, H * hd), p + "attn/o")
        h = norm(x, p + "mlp_norm")
        u = lin(h, p + "mlp/up")
        if c["mlp"] == "gelu":   # tanh approximation
            u = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        elif c["mlp"] == "swiglu":  # silu(g) = g * sigmoid(g)
            g = lin(h, p + "mlp/gate")
            u = g / (1 + np.exp(-g)) * u
        else:  # xIELU: x>0: a_p x^2 + beta x; else a_n (expm1(min(x, eps)) - x) + beta x
            beta, eps = c["xielu_beta"], c["xielu_eps"]
            ap = np.logaddexp(0.0, W[p + "mlp/act/alpha_p"])          # softplus
            an = beta + np.logaddexp(0.0, W[p + "mlp/act/alpha_n"])
            u = np.where(u > 0, ap * u * u + beta * u,
                         an * (np.expm1(np.minimum(u, eps)) - u) + beta * u)
        x = x + lin(u, p + "mlp/down")
    return norm(x, "/model/final_norm") @ W["out"].T


def load_tokens(path, need):
    if not os.path.isfile(path):
        raise BadInput(f"token file not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 1024:
        raise BadInput(f"{path}: shorter than the 1024-byte header")
    hdr = raw[:1024].view("<i4")
    if hdr[0] != 20240520 or hdr[1] != 1:
        raise BadInput(f"{path}: bad header magic/version {hdr[0]}/{hdr[1]}")
    n = int(hdr[2])
    if raw.size < 1024 + 2 * n:
        raise BadInput(f"{path}: header says {n} tokens but file is too short")
    if n < need:
        raise BadInput(f"{path}: {n} tokens, need rows*seq_len+1 = {need}")
    return raw[1024:1024 + 2 * need].view("<u2").astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="Tapestry HDF5 checkpoint (format v2)")
    ap.add_argument("tokens", help="llm.c uint16 token file")
    ap.add_argument("--seq-len", type=int, required=True, help="T, positions per row")
    ap.add_argument("--rows", type=int, required=True, help="R, rows (sequences) evaluated")
    ap.add_argument("--logits-out", help="write float64 logits (R*T, vocab_size) to this .npy")
    ap.add_argument("--compare-logits", help="raw float32 logits file (R*T, vocab_size) to check")
    ap.add_argument("--tol", type=float, default=1e-5, help="max logits_max_rel_err (default 1e-5)")
    ap.add_argument("--compare-loss", type=float, help="loss X from another program to check")
    ap.add_argument("--loss-tol", type=float, default=1e-5, help="max loss_rel_err (default 1e-5)")
    a = ap.parse_args()
    R, T = a.rows, a.seq_len
    try:
        if R < 1 or T < 1:
            raise BadInput("--rows and --seq-len must be >= 1")
        c, W = load_model(a.ckpt)
        V = c["vocab_size"]
        if c["positions"] == "learned" and T > c["max_seq_len"]:
            raise BadInput(f"seq_len {T} > max_seq_len {c['max_seq_len']}")
        toks = load_tokens(a.tokens, R * T + 1)
        if toks.max() >= V:
            raise BadInput(f"token id {toks.max()} >= vocab_size {V}")
        other = None
        if a.compare_logits:
            if not os.path.isfile(a.compare_logits):
                raise BadInput(f"logits file not found: {a.compare_logits}")
            sz = os.path.getsize(a.compare_logits)
            if sz != R * T * V * 4:
                raise BadInput(f"{a.compare_logits}: {sz} bytes, expected R*T*V*4 = {R * T * V * 4}")
            other = np.memmap(a.compare_logits, dtype="<f4", mode="r", shape=(R * T, V))
        try:
            out = (np.lib.format.open_memmap(a.logits_out, mode="w+", dtype=np.float64,
                                             shape=(R * T, V)) if a.logits_out else None)
        except OSError as e:
            raise BadInput(f"cannot write {a.logits_out}: {e}")
    except BadInput as e:
        print(f"model_ref: error: {e}", file=sys.stderr)
        return 2
    nll, max_abs, max_diff, bad, ref_bad = 0.0, 0.0, 0.0, False, False
    for r in range(R):
        logits = forward(c, W, toks[r * T:(r + 1) * T])
        tgt = toks[r * T + 1:(r + 1) * T + 1]
        m = logits.max(-1)
        lse = m + np.log(np.exp(logits - m[:, None]).sum(-1))
        nll += float((lse - logits[np.arange(T), tgt]).sum())
        ref_bad |= not np.isfinite(logits).all()
        max_abs = float(np.maximum(max_abs, np.abs(logits).max()))  # NaN propagates
        if out is not None:
            out[r * T:(r + 1) * T] = logits
        if other is not None:
            o = np.asarray(other[r * T:(r + 1) * T], dtype=np.float64)
            bad |= not np.isfinite(o).all()
            max_diff = max(max_diff, float(np.abs(o - logits).max()))
    if out is not None:
        out.flush(); del out
    loss = nll / (R * T)
    res = {"loss": loss, "rows": R, "seq_len": T, "vocab_size": V, "max_abs_logit": max_abs}
    fails = []
    if ref_bad or not math.isfinite(loss):
        fails.append("reference logits/loss are not finite")
    if other is not None:
        res["logits_max_rel_err"] = err = max_diff / max(max_abs, 1e-300)
        if bad:
            fails.append("compared logits contain NaN/inf")
        elif err > a.tol:
            fails.append(f"logits_max_rel_err {err:.3e} > tol {a.tol:.1e}")
    if a.compare_loss is not None:
        res["loss_rel_err"] = lerr = abs(a.compare_loss - loss) / max(abs(loss), 1e-300)
        if not math.isfinite(a.compare_loss):
            fails.append("compared loss is NaN/inf")
        elif lerr > a.loss_tol:
            fails.append(f"loss_rel_err {lerr:.3e} > loss_tol {a.loss_tol:.1e}")
    print(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                      for k, v in res.items()}))
    if fails:
        print("model_ref: FAIL: " + "; ".join(fails), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
