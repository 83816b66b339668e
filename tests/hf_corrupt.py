#!/usr/bin/python3
"""Makes broken copies of a Hugging Face model directory (config.json + model.safetensors), one
per failure the reader must name: hf_corrupt.py GOOD_DIR OUT_ROOT. Writes OUT_ROOT/<case>/."""
import json
import os
import shutil
import struct
import sys

good, root = sys.argv[1], sys.argv[2]
raw = open(os.path.join(good, "model.safetensors"), "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]


def write(case, hdr=None, body=None, length=None):
    d = os.path.join(root, case)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(good, "config.json"), d)
    h = json.dumps(header if hdr is None else hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h) if length is None else length) + h + (data if body is None else body))


tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
write("truncated", body=data[: len(data) * 6 // 10])
write("header_past_end", length=len(raw) * 4)  # well past the end of the rewritten file
h = json.loads(json.dumps(header))
a, b = tensors[0], tensors[1]
size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size]
write("overlap", hdr=h)
h = json.loads(json.dumps(header))
missing = next(k for k in tensors if k.endswith("self_attn.k_proj.weight"))
del h[missing]
write("missing_tensor", hdr=h)
h = json.loads(json.dumps(header))
h[tensors[0]]["dtype"] = "I8"
write("unknown_dtype", hdr=h)
print("wrote 5 broken copies under", root, "; missing tensor:", missing)
