#!/usr/bin/python3
"""Independent float64 numpy reference forward pass for Tapestry HDF5 checkpoints (format v2)
or Hugging Face model directories (config.json + model.safetensors or the sharded
model.safetensors.index.json; model_type gpt2, llama or apertus; F32/BF16/F16 tensors).

Written from the published equations (Hugging Face transformers conventions: GPT-2,
Llama/LlamaRotaryEmbedding incl. llama3 scaling, Qwen3-style per-head QK-norm,
XIELUActivation) and the public safetensors format. It does not use any Tapestry code, nor
torch/transformers/safetensors.  Run with Debian's python3 (python3-numpy, python3-h5py).

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
HF directory (CKPT is a directory): transformers names/conventions of GPT2LMHeadModel (Conv1D
[in, out] weights transposed, c_attn split into q, k, v; layernorm eps layer_norm_epsilon
(1e-5); gelu tanh; learned positions; tied unless tie_word_embeddings is false; names with
or without "transformer."), LlamaForCausalLM (rmsnorm eps rms_norm_eps; rope_theta (10000) and
rope_scaling null/default/llama3, or transformers-5 rope_parameters; swiglu; attention_bias,
mlp_bias; tie_word_embeddings (false); num_key_value_heads, head_dim) and ApertusForCausalLM
(as llama, no gate, qk_norm (true) with eps rms_norm_eps, xielu with raw alpha_p/alpha_n and
beta/eps from mlp.act_fn.beta/eps (0.5, -1e-6); with neither rope_scaling nor rope_parameters
the transformers default applies: theta 12e6, llama3 factor 8, 1, 4, 8192).  Embedding and
lm_head have exactly vocab_size rows.  max_seq_len: max_position_embeddings (gpt2 n_positions).
exit codes: 0 ok; 1 an error exceeds its tolerance, or a NaN/inf in the logits/loss
(either side); 2 bad input (missing file/tensor/attribute/config key, shape mismatch,
malformed safetensors, too few tokens)."""


class BadInput(Exception):  # -> exit code 2
    pass


def rope_inv_freq(theta, hd, llama3=None):
    """HF default RoPE inverse frequencies; llama3 = (factor, low_freq_factor,
    high_freq_factor, original_max_position_embeddings) applies transformers'
    _compute_llama3_parameters."""
    # HF: inv_freq = 1 / theta^(arange(0, hd, 2) / hd)
    inv = 1.0 / float(theta) ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if llama3 is not None:
        fac, lo, hi, orig = (float(v) for v in llama3)
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > orig / lo, inv / fac, inv)
        smooth = (orig / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / fac + smooth * scaled
        medium = ~(wavelen < orig / hi) & ~(wavelen > orig / lo)
        inv = np.where(medium, smoothed, scaled)
    return inv


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
        l3 = None
        if attr("rope_scaling", "none") == "llama3":   # transformers _compute_llama3_parameters
            l3 = tuple(float(attr(k)) for k in ("rope_factor", "rope_low_freq_factor",
                                                "rope_high_freq_factor", "rope_original_context"))
        elif attr("rope_scaling", "none") != "none":
            raise BadInput(f"unsupported rope_scaling {attr('rope_scaling')}")
        c["inv_freq"] = rope_inv_freq(attr("rope_theta"), hd, l3)

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


ST_DTYPES = {"F32": 4, "BF16": 2, "F16": 2}


def read_safetensors(path, want=None):
    """Parse one safetensors file (json + numpy) -> {name: float64 array}.
    want: names to load (None: all).  F32, BF16 (uint16 << 16 as float32) and F16."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BadInput(f"{path}: shorter than the 8-byte header length")
            n = int(np.frombuffer(head, "<u8")[0])
            if n > size - 8:
                raise BadInput(f"{path}: header length {n} > file size - 8 = {size - 8}")
            hdr = json.loads(fh.read(n).decode("utf-8"))
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e}")
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"{path}: header is not valid JSON: {e}")
    if not isinstance(hdr, dict):
        raise BadInput(f"{path}: header is not a JSON object")
    data = size - 8 - n
    out = {}
    for name, e in hdr.items():
        if name == "__metadata__" or (want is not None and name not in want):
            continue
        try:
            dt, shape, (b, en) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            b, en = int(b), int(en)
        except (TypeError, KeyError, ValueError):
            raise BadInput(f"{path}: malformed header entry for {name}")
        if dt not in ST_DTYPES:
            raise BadInput(f"{path}: {name}: unsupported dtype {dt}")
        if not 0 <= b <= en <= data or en - b != math.prod(shape) * ST_DTYPES[dt]:
            raise BadInput(f"{path}: {name}: data_offsets {[b, en]} do not fit shape "
                           f"{list(shape)} x {dt} in {data} data bytes")
        raw = np.fromfile(path, dtype=np.uint8, count=en - b, offset=8 + n + b)
        if dt == "F32":
            a = raw.view("<f4")
        elif dt == "F16":
            a = raw.view("<f2")
        else:
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float64).reshape(shape)
    return out


def read_hf_config(d):
    """(path, dict) of a Hugging Face model directory's config.json; BadInput if it is missing,
    unreadable or not a JSON object. tools/hf_check.py reads it the same way."""
    cp = os.path.join(d, "config.json")
    if not os.path.isfile(cp):
        raise BadInput(f"no config.json in {d}")
    try:
        with open(cp, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"cannot parse {cp}: {e}")
    if not isinstance(cfg, dict):
        raise BadInput(f"{cp}: not a JSON object")
    return cp, cfg


def load_hf(d):
    """Hugging Face model directory -> (c, W) exactly as load_model builds them."""
    cp, cfg = read_hf_config(d)
    mt = cfg.get("model_type")
    if mt not in ("gpt2", "llama", "apertus"):
        raise BadInput(f"{cp}: model_type {mt!r} is not gpt2, llama or apertus")

    def key(k, default=None, typ=int):
        v = cfg.get(k)
        if v is None:
            if default is None:
                raise BadInput(f"{cp}: missing '{k}'")
            return default
        try:
            return typ(v)
        except (TypeError, ValueError):
            raise BadInput(f"{cp}: bad value {v!r} for '{k}'")

    # weights
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(d, "model.safetensors")):
        T = read_safetensors(os.path.join(d, "model.safetensors"))
    elif os.path.isfile(idx):
        try:
            with open(idx, encoding="utf-8") as fh:
                wm = json.load(fh)["weight_map"]
            shards = {}
            for name, s in wm.items():
                shards.setdefault(str(s), set()).add(name)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadInput(f"cannot parse {idx}: {e}")
        T = {}
        for s, names in sorted(shards.items()):
            sp = os.path.join(d, s)
            if os.path.basename(s) != s or not os.path.isfile(sp):
                raise BadInput(f"{idx}: shard {s} not found")
            got = read_safetensors(sp, names)
            if names - set(got):
                raise BadInput(f"{sp}: lacks {sorted(names - set(got))[0]} (from weight_map)")
            T.update(got)
    else:
        raise BadInput(f"no model.safetensors or model.safetensors.index.json in {d}")

    def get(name, shape, alt=None):
        for n in (name, alt):
            if n is not None and n in T:
                if T[n].shape != tuple(shape):
                    raise BadInput(f"tensor {n} has shape {T[n].shape}, expected {tuple(shape)}")
                return T[n]
        raise BadInput(f"missing tensor {name} in {d}")

    W = {}
    if mt == "gpt2":
        D, H, L = key("n_embd"), key("n_head"), key("n_layer")
        V, P = key("vocab_size"), key("n_positions")
        F = key("n_inner", 4 * D)
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise BadInput(f"{cp}: activation_function {act!r} is not a tanh gelu")
        tied = bool(cfg.get("tie_word_embeddings", True))
        if H < 1 or D % H:
            raise BadInput(f"{cp}: n_embd {D} must divide by n_head {H}")
        c = dict(n_layer=L, n_head=H, n_kv_head=H, d_model=D, vocab_size=V,
                 padded_vocab_size=V, max_seq_len=P, ffn_dim=F, tie_embeddings=int(tied), bias=1,
                 norm="layernorm", norm_eps=key("layer_norm_epsilon", 1e-5, float), mlp="gelu",
                 positions="learned", qk_norm=0, hd=D // H)
        c["qk_norm_eps"] = c["norm_eps"]

        def g(n, shape):  # names with or without the "transformer." prefix
            return get("transformer." + n, shape, n)
        W["wte"] = g("wte.weight", (V, D))
        W["wpe"] = g("wpe.weight", (P, D))
        for l in range(L):
            p, h = f"/model/layers/{l:02d}/", f"h.{l}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                W[p + ours + "/weight"] = g(h + theirs + ".weight", (D,))
                W[p + ours + "/bias"] = g(h + theirs + ".bias", (D,))
            qkv_w, qkv_b = g(h + "attn.c_attn.weight", (D, 3 * D)), g(h + "attn.c_attn.bias", (3 * D,))
            for j, n in enumerate("qkv"):   # Conv1D [in, out] -> Linear [out, in]
                W[p + f"attn/{n}/weight"] = qkv_w[:, j * D:(j + 1) * D].T.copy()
                W[p + f"attn/{n}/bias"] = qkv_b[j * D:(j + 1) * D].copy()
            for ours, theirs, i, o in (("attn/o", "attn.c_proj", D, D), ("mlp/up", "mlp.c_fc", D, F),
                                       ("mlp/down", "mlp.c_proj", F, D)):
                W[p + ours + "/weight"] = g(h + theirs + ".weight", (i, o)).T.copy()
                W[p + ours + "/bias"] = g(h + theirs + ".bias", (o,))
        W["/model/final_norm/weight"] = g("ln_f.weight", (D,))
        W["/model/final_norm/bias"] = g("ln_f.bias", (D,))
        W["out"] = W["wte"] if tied else get("lm_head.weight", (V, D))
        return c, W

    # llama / apertus
    D, H, L = key("hidden_size"), key("num_attention_heads"), key("num_hidden_layers")
    V, F = key("vocab_size"), key("intermediate_size")
    KV = key("num_key_value_heads", H)
    if H < 1 or KV < 1 or H % KV:
        raise BadInput(f"{cp}: num_attention_heads {H} must divide by num_key_value_heads {KV}")
    if cfg.get("head_dim") is None and D % H:
        raise BadInput(f"{cp}: hidden_size {D} must divide by num_attention_heads {H}")
    hd = key("head_dim", D // H)
    if hd % 2:
        raise BadInput(f"RoPE needs an even head dim, got {hd}")
    ap_ = mt == "apertus"
    act = cfg.get("hidden_act", "xielu" if ap_ else "silu")
    if act != ("xielu" if ap_ else "silu"):
        raise BadInput(f"{cp}: hidden_act {act!r} unsupported for {mt}")
    abias = bool(cfg.get("attention_bias", False))
    mbias = bool(cfg.get("mlp_bias", False)) and not ap_   # ApertusMLP has no biases
    tied = bool(cfg.get("tie_word_embeddings", False))
    eps = key("rms_norm_eps", 1e-6 if not ap_ else 1e-5, float)
    c = dict(n_layer=L, n_head=H, n_kv_head=KV, d_model=D, vocab_size=V, padded_vocab_size=V,
             max_seq_len=key("max_position_embeddings", 2048 if not ap_ else 65536), ffn_dim=F,
             tie_embeddings=int(tied), bias=int(abias or mbias), norm="rmsnorm", norm_eps=eps,
             mlp="xielu" if ap_ else "swiglu", positions="rope",
             qk_norm=int(ap_ and bool(cfg.get("qk_norm", True))), qk_norm_eps=eps, hd=hd)
    # RoPE: transformers <5 rope_theta + rope_scaling; transformers 5 rope_parameters
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        theta, rs = rp.get("rope_theta", cfg.get("rope_theta")), rp
    elif ap_ and "rope_scaling" not in cfg and "rope_theta" not in cfg:  # ApertusConfig default
        theta, rs = 12000000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    else:
        theta, rs = cfg.get("rope_theta"), cfg.get("rope_scaling")
    if theta is None:
        theta = 12000000.0 if ap_ else 10000.0
    rt = (rs.get("rope_type", rs.get("type", "default")) if isinstance(rs, dict) else
          "default" if rs is None else rs)
    if rt == "llama3":
        try:
            l3 = tuple(float(rs[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings"))
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{cp}: incomplete llama3 rope scaling {rs!r}")
    elif rt in ("default", None):
        l3 = None
    else:
        raise BadInput(f"{cp}: unsupported rope type {rt!r}")
    try:
        c["inv_freq"] = rope_inv_freq(float(theta), hd, l3)
    except (TypeError, ValueError):
        raise BadInput(f"{cp}: bad rope_theta {theta!r}")

    W["wte"] = get("model.embed_tokens.weight", (V, D))
    betas, epss = set(), set()
    for l in range(L):
        p, h = f"/model/layers/{l:02d}/", f"model.layers.{l}."
        n1, n2 = (("attention_layernorm", "feedforward_layernorm") if ap_ else
                  ("input_layernorm", "post_attention_layernorm"))
        W[p + "attn_norm/weight"] = get(h + n1 + ".weight", (D,))
        W[p + "mlp_norm/weight"] = get(h + n2 + ".weight", (D,))
        for n, o, i in (("q", H * hd, D), ("k", KV * hd, D), ("v", KV * hd, D), ("o", D, H * hd)):
            W[p + f"attn/{n}/weight"] = get(h + f"self_attn.{n}_proj.weight", (o, i))
            if abias:
                W[p + f"attn/{n}/bias"] = get(h + f"self_attn.{n}_proj.bias", (o,))
        if c["qk_norm"]:
            for n in ("q", "k"):
                W[p + f"attn/{n}_norm/weight"] = get(h + f"self_attn.{n}_norm.weight", (hd,))
        mlp = (("up", F, D), ("down", D, F)) + ((("gate", F, D),) if not ap_ else ())
        for n, o, i in mlp:
            W[p + f"mlp/{n}/weight"] = get(h + f"mlp.{n}_proj.weight", (o, i))
            if mbias:
                W[p + f"mlp/{n}/bias"] = get(h + f"mlp.{n}_proj.bias", (o,))
        if ap_:
            for n in ("alpha_p", "alpha_n"):   # raw (pre-softplus) trainable scalars
                W[p + f"mlp/act/{n}"] = get(h + f"mlp.act_fn.{n}", (1,))[0]
            for n, dflt, acc in (("beta", 0.5, betas), ("eps", -1e-6, epss)):
                t = h + f"mlp.act_fn.{n}"
                acc.add(float(get(t, ()).reshape(-1)[0]) if t in T else dflt)
    if ap_:
        if len(betas) > 1 or len(epss) > 1:
            raise BadInput(f"xielu beta/eps differ between layers ({sorted(betas)}, "
                           f"{sorted(epss)}); unsupported")
        c["xielu_beta"] = betas.pop() if betas else 0.5
        c["xielu_eps"] = epss.pop() if epss else -1e-6
    W["/model/final_norm/weight"] = get("model.norm.weight", (D,))
    W["out"] = W["wte"] if tied else get("lm_head.weight", (V, D))
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
    ap.add_argument("ckpt", help="Tapestry HDF5 checkpoint (format v2), or a Hugging Face model "
                                 "directory (config.json + safetensors)")
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
        c, W = load_hf(a.ckpt) if os.path.isdir(a.ckpt) else load_model(a.ckpt)
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
