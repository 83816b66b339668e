#!/usr/bin/env python3
"""Independent reader and writer of Megatron indexed datasets (numpy only), written from the format
description in megatron/core/datasets/indexed_dataset.py (_IndexWriter / _IndexReader):

  PREFIX.idx: b"MMIDIDX\\x00\\x00" | <Q version = 1 | <B dtype code | <Q sequence count S
              | <Q document-index count D | int32 lengths[S] | int64 pointers[S] (bytes into .bin)
              | int64 document_indices[D] (sequence where each document starts; 0 ... S)
  PREFIX.bin: the tokens, sequence after sequence.

Usage:
  megatron_check.py PREFIX [--expect-tokens IDS]   check PREFIX.{idx,bin}; print a summary; optionally
                                                   compare its documents with IDS (one document a line)
  megatron_check.py --write PREFIX --from-ids IDS [--dtype auto|uint16|int32]
                                                   write PREFIX.{bin,idx}, one document a line of IDS
Exit status 1 with one line on stderr on any problem.
"""
import argparse
import os
import struct
import sys

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}
CODES = {np.dtype(v).name: k for k, v in DTYPES.items()}


class Problem(Exception):
    pass


def read_ids(path):
    docs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                docs.append([int(w) for w in line.split()])
            except ValueError:
                raise Problem(f"{path}:{n}: not a list of integers")
    return docs


def load(prefix):
    """Returns (dtype, lengths, pointers, document_indices, tokens) after checking consistency."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for p in (idx_path, bin_path):
        if not os.path.isfile(p):
            raise Problem(f"{p}: missing")
    size = os.path.getsize(idx_path)
    if size < 34:
        raise Problem(f"{idx_path}: truncated ({size} bytes, header is 34)")
    idx = np.memmap(idx_path, dtype=np.uint8, mode="r")
    head = bytes(idx[:34])
    if head[:9] != HEADER:
        raise Problem(f"{idx_path}: bad magic {head[:9]!r}")
    (version,) = struct.unpack("<Q", head[9:17])
    if version != 1:
        raise Problem(f"{idx_path}: version {version}, expected 1")
    code = head[17]
    if code not in DTYPES:
        raise Problem(f"{idx_path}: unknown dtype code {code}")
    dtype = np.dtype(DTYPES[code])
    S, D = struct.unpack("<QQ", head[18:34])
    expected = 34 + 4 * S + 8 * S + 8 * D
    if size != expected:
        raise Problem(f"{idx_path}: {size} bytes, header (S={S}, D={D}) implies {expected}")
    buf = memoryview(idx)
    lengths = np.frombuffer(buf, dtype="<i4", count=S, offset=34)
    pointers = np.frombuffer(buf, dtype="<i8", count=S, offset=34 + 4 * S)
    docs = np.frombuffer(buf, dtype="<i8", count=D, offset=34 + 12 * S)
    if S and lengths.min() < 0:
        raise Problem(f"{idx_path}: negative sequence length")
    ends = np.cumsum(lengths.astype(np.int64) * dtype.itemsize)
    starts = np.concatenate([[0], ends[:-1]]) if S else np.zeros(0, np.int64)
    if not np.array_equal(pointers, starts):
        bad = int(np.nonzero(pointers != starts)[0][0])
        raise Problem(f"{idx_path}: sequence {bad} pointer {pointers[bad]}, expected {starts[bad]}")
    total_bytes = int(ends[-1]) if S else 0
    bin_size = os.path.getsize(bin_path)
    if bin_size != total_bytes:
        raise Problem(f"{bin_path}: {bin_size} bytes, index describes {total_bytes}")
    if D < 1 or docs[0] != 0 or docs[-1] != S or (D > 1 and np.any(np.diff(docs) < 0)):
        raise Problem(f"{idx_path}: document_indices must rise from 0 to {S}")
    tokens = np.memmap(bin_path, dtype=dtype.newbyteorder("<"), mode="r") if bin_size else np.zeros(0, dtype)
    if dtype.kind == "i" and tokens.size and tokens.min() < 0:
        raise Problem(f"{bin_path}: negative token id")
    return dtype, lengths, pointers, docs, tokens


def documents(dtype, lengths, pointers, docs, tokens):
    out = []
    total = tokens.size
    for d in range(len(docs) - 1):
        s0, s1 = int(docs[d]), int(docs[d + 1])
        a = int(pointers[s0]) // dtype.itemsize if s0 < len(lengths) else total
        b = int(pointers[s1]) // dtype.itemsize if s1 < len(lengths) else total
        out.append([int(t) for t in tokens[a:b]])
    return out


def write(prefix, docs, dtype_name):
    if dtype_name == "auto":
        top = max((max(d) for d in docs if d), default=0)
        dtype_name = "uint16" if top < 65536 else "int32"
    dtype = np.dtype(dtype_name).newbyteorder("<")
    lengths = []
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            arr = np.array(d, dtype=np.int64)
            if arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
                raise Problem(f"ids out of range for {dtype_name}")
            f.write(arr.astype(dtype).tobytes())
            lengths.append(arr.size)
    S = len(lengths)
    pointers = np.concatenate([[0], np.cumsum(np.array(lengths, np.int64) * dtype.itemsize)[:-1]]) if S else []
    with open(prefix + ".idx", "wb") as f:
        f.write(HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", CODES[dtype.name]))
        f.write(struct.pack("<Q", S))
        f.write(struct.pack("<Q", S + 1))
        f.write(np.array(lengths, dtype="<i4").tobytes())
        f.write(np.array(pointers, dtype="<i8").tobytes())
        f.write(np.arange(S + 1, dtype="<i8").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prefix", nargs="?")
    ap.add_argument("--expect-tokens", metavar="IDS")
    ap.add_argument("--write", metavar="PREFIX")
    ap.add_argument("--from-ids", metavar="IDS")
    ap.add_argument("--dtype", default="auto", choices=["auto", "uint16", "int32"])
    a = ap.parse_args()
    try:
        if a.write:
            if not a.from_ids or a.prefix:
                ap.error("--write PREFIX needs --from-ids IDS and no positional PREFIX")
            write(a.write, read_ids(a.from_ids), a.dtype)
            return 0
        if not a.prefix:
            ap.error("give PREFIX or --write PREFIX --from-ids IDS")
        dtype, lengths, pointers, docs, tokens = load(a.prefix)
        print(f"{a.prefix}: dtype {dtype.name}, sequences {len(lengths)}, documents {len(docs) - 1}, "
              f"tokens {tokens.size}")
        if a.expect_tokens:
            want = read_ids(a.expect_tokens)
            got = documents(dtype, lengths, pointers, docs, tokens)
            if len(got) != len(want):
                raise Problem(f"{len(got)} documents, {a.expect_tokens} has {len(want)}")
            for i, (g, w) in enumerate(zip(got, want)):
                if g != w:
                    raise Problem(f"document {i} differs from line {i + 1} of {a.expect_tokens}")
            print(f"{a.prefix}: all {len(got)} documents match {a.expect_tokens}")
        return 0
    except Problem as e:
        print(f"megatron_check: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
