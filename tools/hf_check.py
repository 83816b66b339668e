#!/usr/bin/python3
"""Independent validator of a Hugging Face model directory (safetensors weights).

Written from the public safetensors format description and the transformers naming
conventions of GPT2LMHeadModel, LlamaForCausalLM and ApertusForCausalLM; it does not use
any Tapestry code, torch, transformers or the safetensors package (json + numpy only).
Run with Debian's python3 (python3-numpy).

Checks:
  config.json       parses; model_type in {gpt2, llama, apertus}; the expected tensor names
                    and shapes are derived from it.
  weights           DIR/model.safetensors, or DIR/model.safetensors.index.json
                    ({"metadata": {"total_size": N}, "weight_map": {name: shard}}): every
                    listed shard exists, every weight_map entry is in its shard and every
                    tensor of a shard is mapped to that shard, total_size == the sum of the
                    tensors' byte sizes.
  each file         8-byte little-endian header length N <= file size - 8; header is a JSON
                    object name -> {dtype, shape, data_offsets: [begin, end]} plus optional
                    "__metadata__" (str -> str); dtype is F32/BF16/F16; end - begin ==
                    prod(shape) * dtype size; end <= data size; no overlaps; the data
                    section is covered exactly (sorted by begin, contiguous from 0 to the
                    data size).  8-byte alignment of the data section: warning only.
  tensors           every expected tensor present exactly once (across shards) with the
                    expected shape; nothing unexpected except ignorable buffers (gpt2
                    *.attn.bias / *.attn.masked_bias, llama/apertus *.rotary_emb.inv_freq);
                    with --expect-dtype every floating tensor has that dtype; all values
                    finite.
Output: one line per problem and exit 1, or one summary line and exit 0, e.g.
  hf_check: OK: llama, 11 tensors in 1 file(s), 803968 parameters, F32
Warnings (prefixed "warning:") do not fail the check.  Exit 2 (one line) when the
directory or config.json is missing/unreadable or the config cannot be interpreted.
"""
import argparse, json, math, os, re, struct, sys
import numpy as np

from model_ref import BadInput, read_hf_config  # tools/model_ref.py (json + numpy too); BadInput -> exit 2

FLOAT_DTYPES = {"F32": 4, "BF16": 2, "F16": 2}
# other dtypes of the safetensors spec: known sizes, but not accepted in a model checkpoint
OTHER_DTYPES = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
IGNORABLE = {"gpt2": (r".*\.attn\.bias", r".*\.attn\.masked_bias"),
             "llama": (r".*\.rotary_emb\.inv_freq",),
             "apertus": (r".*\.rotary_emb\.inv_freq",)}


def _int(cfg, key, default=None):
    v = cfg.get(key, default)
    if v is None:
        raise BadInput(f"config.json: missing '{key}'")
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BadInput(f"config.json: '{key}' = {v!r} is not a non-negative integer")
    return v


def expected_tensors(cfg):
    """-> (model_type, {name: shape}, optional {name: shape}, warnings)."""
    mt = cfg.get("model_type")
    if mt not in ("gpt2", "llama", "apertus"):
        raise BadInput(f"config.json: model_type {mt!r} not one of gpt2, llama, apertus")
    E, opt, warn = {}, {}, []
    if mt == "gpt2":
        L, H, C = _int(cfg, "n_layer"), _int(cfg, "n_head"), _int(cfg, "n_embd")
        P, V = _int(cfg, "n_positions"), _int(cfg, "vocab_size")
        F = _int(cfg, "n_inner", 4 * C) if cfg.get("n_inner") is not None else 4 * C
        if H == 0 or C % H:
            raise BadInput(f"config.json: n_embd {C} not divisible by n_head {H}")
        E["wte.weight"], E["wpe.weight"] = (V, C), (P, C)
        for i in range(L):
            p = f"h.{i}."
            for n in ("ln_1", "ln_2"):
                E[p + n + ".weight"] = E[p + n + ".bias"] = (C,)
            E[p + "attn.c_attn.weight"], E[p + "attn.c_attn.bias"] = (C, 3 * C), (3 * C,)
            E[p + "attn.c_proj.weight"], E[p + "attn.c_proj.bias"] = (C, C), (C,)
            E[p + "mlp.c_fc.weight"], E[p + "mlp.c_fc.bias"] = (C, F), (F,)
            E[p + "mlp.c_proj.weight"], E[p + "mlp.c_proj.bias"] = (F, C), (C,)
        E["ln_f.weight"] = E["ln_f.bias"] = (C,)
        if cfg.get("tie_word_embeddings", True):
            opt["lm_head.weight"] = (V, C)   # tied to wte: usually absent, ignored if present
        else:
            E["lm_head.weight"] = (V, C)
        return mt, E, opt, warn
    L, C, H = (_int(cfg, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads"))
    F, V = _int(cfg, "intermediate_size"), _int(cfg, "vocab_size")
    KV = _int(cfg, "num_key_value_heads", H) if cfg.get("num_key_value_heads") is not None else H
    if H == 0 or KV == 0 or H % KV:
        raise BadInput(f"config.json: num_attention_heads {H} not divisible by "
                       f"num_key_value_heads {KV}")
    if cfg.get("head_dim") is not None:
        hd = _int(cfg, "head_dim")
    elif C % H:
        raise BadInput(f"config.json: hidden_size {C} not divisible by num_attention_heads {H}")
    else:
        hd = C // H
    abias = bool(cfg.get("attention_bias", False))
    mbias = bool(cfg.get("mlp_bias", False))
    if mt == "apertus" and mbias:
        warn.append("warning: config.json: mlp_bias is true, but ApertusMLP has no biases "
                    "(transformers ignores it)")
        mbias = False
    tied = bool(cfg.get("tie_word_embeddings", False))
    E["model.embed_tokens.weight"] = (V, C)
    for i in range(L):
        p = f"model.layers.{i}."
        if mt == "llama":
            E[p + "input_layernorm.weight"] = E[p + "post_attention_layernorm.weight"] = (C,)
        else:
            E[p + "attention_layernorm.weight"] = E[p + "feedforward_layernorm.weight"] = (C,)
        for n, o, i_ in (("q", H * hd, C), ("k", KV * hd, C), ("v", KV * hd, C), ("o", C, H * hd)):
            E[p + f"self_attn.{n}_proj.weight"] = (o, i_)
            if abias:
                E[p + f"self_attn.{n}_proj.bias"] = (o,)
        mlp = (("gate", F, C), ("up", F, C), ("down", C, F)) if mt == "llama" else \
              (("up", F, C), ("down", C, F))
        for n, o, i_ in mlp:
            E[p + f"mlp.{n}_proj.weight"] = (o, i_)
            if mbias:
                E[p + f"mlp.{n}_proj.bias"] = (o,)
        if mt == "apertus":
            if cfg.get("qk_norm", True):
                E[p + "self_attn.q_norm.weight"] = E[p + "self_attn.k_norm.weight"] = (hd,)
            E[p + "mlp.act_fn.alpha_p"] = E[p + "mlp.act_fn.alpha_n"] = (1,)
            E[p + "mlp.act_fn.beta"] = E[p + "mlp.act_fn.eps"] = ()
    E["model.norm.weight"] = (C,)
    if tied:
        opt["lm_head.weight"] = (V, C)   # present but ignored by transformers: warning
    else:
        E["lm_head.weight"] = (V, C)
    return mt, E, opt, warn


def nonfinite_count(mm, dtype):
    """mm: uint8 memmap of one tensor's bytes -> number of NaN/inf values."""
    u = mm.view("<u4" if dtype == "F32" else "<u2")
    m = {"F32": 0x7F800000, "BF16": 0x7F80, "F16": 0x7C00}[dtype]   # exponent all ones
    step = 1 << 24   # chunks bound the temporaries for large tensors
    return sum(int(np.count_nonzero((u[i:i + step] & m) == m)) for i in range(0, u.size, step))


def _no_dup_pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def check_file(path, fname, errs, warns):
    """Validate one safetensors file.  -> None if unusable, else (good, names, nbytes):
    good = {name: (dtype, shape, nbytes)} of well-formed float entries inside the data,
    names = every tensor name of the header, nbytes = sum of all entries' byte spans."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                errs.append(f"{fname}: file is {size} bytes, shorter than the 8-byte header length")
                return None
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                errs.append(f"{fname}: header length {n} > file size - 8 = {size - 8}")
                return None
            raw = fh.read(n)
    except OSError as e:
        errs.append(f"{fname}: cannot read: {e}")
        return None
    try:
        hdr = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_dup_pairs)
    except (UnicodeDecodeError, ValueError) as e:
        errs.append(f"{fname}: header is not valid UTF-8 JSON: {e}")
        return None
    if not isinstance(hdr, dict):
        errs.append(f"{fname}: header is not a JSON object")
        return None
    if (8 + n) % 8:
        warns.append(f"warning: {fname}: data section starts at byte {8 + n}, not 8-byte aligned")
    data_size = size - 8 - n
    if "__metadata__" in hdr:
        meta = hdr.pop("__metadata__")
        if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            errs.append(f"{fname}: __metadata__ is not a string -> string map")
        elif meta.get("format") not in ("pt", "tf", "flax", "mlx"):
            errs.append(f"{fname}: __metadata__ format {meta.get('format')!r} is not pt/tf/flax/mlx "
                        "(transformers refuses such a file)")
    good, spans, total = {}, [], 0
    for name, e in hdr.items():
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}):
            errs.append(f"{fname}: {name}: entry must have exactly dtype, shape, data_offsets")
            continue
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not (isinstance(offs, list) and len(offs) == 2 and
                all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)
                and offs[0] <= offs[1]):
            errs.append(f"{fname}: {name}: bad data_offsets {offs!r}")
            continue
        b, en = offs
        spans.append((b, en, name))
        total += en - b
        if en > data_size:
            errs.append(f"{fname}: {name}: data_offsets end {en} > data size {data_size}")
        if not (isinstance(shape, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                                 and x >= 0 for x in shape)):
            errs.append(f"{fname}: {name}: bad shape {shape!r}")
            continue
        numel = math.prod(shape)
        if dt in FLOAT_DTYPES:
            esz = FLOAT_DTYPES[dt]
        elif dt in OTHER_DTYPES:
            errs.append(f"{fname}: {name}: dtype {dt} not supported (expected F32, BF16 or F16)")
            esz = OTHER_DTYPES[dt]
        else:
            errs.append(f"{fname}: {name}: unknown dtype {dt!r}")
            esz = None
        if esz is not None and en - b != numel * esz:
            errs.append(f"{fname}: {name}: data_offsets span {en - b} bytes, but shape "
                        f"{shape} x {dt} needs {numel * esz}")
            continue
        if dt in FLOAT_DTYPES and en <= data_size:
            good[name] = (dt, tuple(shape), en - b, b)
    # coverage (official requirement): sorted by begin, contiguous from 0 to data size
    spans.sort()
    pos, prev = 0, None
    for b, en, name in spans:
        if b < pos:
            errs.append(f"{fname}: {name} [{b}, {en}) overlaps {prev} (which ends at {pos})")
        elif b > pos:
            errs.append(f"{fname}: data bytes [{pos}, {b}) before {name} belong to no tensor")
        if en > pos:
            pos, prev = en, name
    if pos < data_size:
        errs.append(f"{fname}: data bytes [{pos}, {data_size}) at the end belong to no tensor")
    # all values finite
    if good and data_size:
        try:
            mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(data_size,))
        except (OSError, ValueError) as e:
            errs.append(f"{fname}: cannot map the data section: {e}")
            mm = None
        for name, (dt, shape, nb, b) in good.items() if mm is not None else ():
            bad = nonfinite_count(mm[b:b + nb], dt) if nb else 0
            if bad:
                errs.append(f"{fname}: {name}: {bad} NaN/inf value(s)")
        del mm
    return {k: v[:3] for k, v in good.items()}, {name for _, _, name in spans}, total


def run(d, expect_dtype):
    errs, warns = [], []
    if not os.path.isdir(d):
        raise BadInput(f"not a directory: {d}")
    cp, cfg = read_hf_config(d)
    mt, E, opt, w = expected_tensors(cfg)
    warns += w
    arch = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
            "apertus": "ApertusForCausalLM"}[mt]
    if isinstance(cfg.get("architectures"), list) and arch not in cfg["architectures"]:
        warns.append(f"warning: config.json: architectures {cfg['architectures']} lacks {arch}")

    single = os.path.join(d, "model.safetensors")
    idx = os.path.join(d, "model.safetensors.index.json")
    files, weight_map, total_size = [], None, None
    broken = set()     # shard files that do not exist or could not be parsed at all
    if os.path.isfile(single):
        if os.path.exists(idx):
            warns.append("warning: both model.safetensors and model.safetensors.index.json exist; "
                         "checking model.safetensors (transformers prefers it)")
        files = ["model.safetensors"]
    elif os.path.isfile(idx):
        IX = "model.safetensors.index.json"
        try:
            with open(idx, encoding="utf-8") as fh:
                ix = json.load(fh)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            errs.append(f"{IX}: cannot parse: {e}")
            ix = None
        if ix is not None:
            weight_map = ix.get("weight_map") if isinstance(ix, dict) else None
            if not (isinstance(weight_map, dict) and
                    all(isinstance(v, str) for v in weight_map.values())):
                errs.append(f"{IX}: no weight_map object (tensor name -> file name)")
                weight_map = None
            meta = ix.get("metadata") if isinstance(ix, dict) else None
            total_size = meta.get("total_size") if isinstance(meta, dict) else None
            if not isinstance(total_size, int) or isinstance(total_size, bool):
                errs.append(f"{IX}: no integer metadata.total_size")
                total_size = None
            for s in sorted(set(weight_map.values())) if weight_map is not None else ():
                if os.path.basename(s) != s or s in ("", ".", ".."):
                    errs.append(f"{IX}: shard name {s!r} is not a plain file name")
                elif not os.path.isfile(os.path.join(d, s)):
                    errs.append(f"{IX}: shard {s} does not exist")
                    broken.add(s)
                else:
                    files.append(s)
    else:
        errs.append(f"no model.safetensors or model.safetensors.index.json in {d}")
        broken.add(None)

    seen = {}          # normalized name -> (file, dtype, shape, nbytes, raw name)
    names = {}         # file -> set of raw names in its header (parsed files only)
    where = {}         # raw name -> first file holding it
    nbytes = 0
    for fn in files:
        r = check_file(os.path.join(d, fn), fn, errs, warns)
        if r is None:
            broken.add(fn)
            continue
        good, names[fn], nb = r
        nbytes += nb
        for name in sorted(names[fn]):
            if name in where:
                errs.append(f"{name}: present in both {where[name]} and {fn}")
            where.setdefault(name, fn)
            if weight_map is not None and weight_map.get(name) != fn:
                errs.append(f"{fn}: {name} is in this file but weight_map maps it to "
                            f"{weight_map.get(name)}")
        for name, info in sorted(good.items()):
            key = name
            if mt == "gpt2" and name.startswith("transformer.") and \
                    not name.startswith("transformer.lm_head."):
                key = name[len("transformer."):]
            if key in seen:
                if seen[key][4] != name:
                    errs.append(f"{name} ({fn}) and {seen[key][4]} ({seen[key][0]}) "
                                "are the same tensor")
                continue
            seen[key] = (fn,) + info + (name,)
    if weight_map is not None:
        for name, s in sorted(weight_map.items()):
            if s in names and name not in names[s]:
                errs.append(f"weight_map: {name} -> {s}, but {s} has no tensor {name}")
        if total_size is not None and not broken and total_size != nbytes:
            errs.append(f"model.safetensors.index.json: metadata.total_size {total_size} != "
                        f"sum of the tensors' byte sizes {nbytes}")

    # expected tensors: skip the ones a broken file was supposed to hold (already reported)
    def in_broken(key):
        if weight_map is None:
            return bool(broken)
        return any(weight_map.get(k) in broken for k in (key, "transformer." + key))
    for key in E:
        if key not in seen and key not in where and "transformer." + key not in where \
                and not in_broken(key):
            pre = "transformer." if mt == "gpt2" and key != "lm_head.weight" else ""
            errs.append(f"missing tensor {pre + key}")
    ign = [re.compile(p) for p in IGNORABLE[mt]]
    nparams, dtypes, ntensors = 0, set(), 0
    for key, (fn, dt, shape, nb, name) in sorted(seen.items()):
        exp = E.get(key, opt.get(key))
        ignorable = exp is None and any(p.fullmatch(key) for p in ign)
        if exp is None and not ignorable:
            errs.append(f"{fn}: unexpected tensor {name}")
        elif exp is not None and shape != tuple(exp):
            errs.append(f"{fn}: {name}: shape {list(shape)}, expected {list(exp)}")
        if key in opt and mt != "gpt2":
            warns.append(f"warning: {name} present although tie_word_embeddings is true "
                         "(transformers ties it to the embedding)")
        if expect_dtype and dt != expect_dtype:
            errs.append(f"{fn}: {name}: dtype {dt}, expected {expect_dtype}")
        if not ignorable:
            ntensors += 1
            nparams += math.prod(shape)
            dtypes.add(dt)
    summary = (f"hf_check: OK: {mt}, {ntensors} tensors in {len(files)} file(s), "
               f"{nparams} parameters, {'+'.join(sorted(dtypes)) or '-'}")
    return errs, warns, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="Hugging Face model directory (config.json + safetensors)")
    ap.add_argument("--expect-dtype", choices=("F32", "BF16"),
                    help="require every floating tensor to have this dtype")
    ap.add_argument("--quiet", action="store_true",
                    help="print only problems (no warnings, no OK summary)")
    a = ap.parse_args()
    try:
        errs, warns, summary = run(a.dir, a.expect_dtype)
    except BadInput as e:
        print(f"hf_check: error: {e}")
        return 2
    if not a.quiet:
        for w in warns:
            print(w)
    for e in errs:
        print(e)
    if errs:
        if not a.quiet:
            print(f"hf_check: FAIL: {len(errs)} problem(s)")
        return 1
    if not a.quiet:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
