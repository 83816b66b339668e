#!/usr/bin/python3
"""Load a Tapestry HDF5 checkpoint into numpy with h5py (Debian: python3-h5py).

Usage: tools/ckpt_to_numpy.py checkpoints/step_00000300.h5 [--npz out.npz]

Prints the run's attributes and every parameter tensor with its shape and L2 norm, and checks that
the stored checksum of each, and the checksum of each of its chunks, match its data. With --npz, saves the parameters to a .npz file.
"""
import argparse
import sys

import h5py
import numpy as np


def checksum(a):
    """Tapestry's order-independent checksum: sum of float32 bit patterns as uint32, mod 2^64."""
    return int(np.asarray(a, dtype="<f4").view("<u4").astype(np.uint64).sum(dtype=np.uint64))


def chunk_checksums(a, chunk_rows):
    """Per chunk of whole rows (a vector: runs of elements): the sum of the float32 bit patterns
    as uint32, each times 1 + its index inside the chunk, mod 2^64."""
    bits = np.asarray(a, dtype="<f4").reshape(a.shape[0], -1).view("<u4").astype(np.uint64)
    out = []
    for r0 in range(0, bits.shape[0], chunk_rows):
        c = bits[r0:r0 + chunk_rows].ravel()
        out.append(int((c * np.arange(1, c.size + 1, dtype=np.uint64)).sum(dtype=np.uint64)))
    return out


def attrs(obj):
    """An HDF5 object's attributes as plain Python values."""
    return {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
            for k, v in obj.attrs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--npz", help="save the parameters here")
    args = ap.parse_args()
    with h5py.File(args.checkpoint, "r") as f:
        if f.attrs.get("format", b"") not in (b"tapestry-checkpoint", "tapestry-checkpoint"):
            sys.exit(f"{args.checkpoint}: not a Tapestry checkpoint")
        print("run:", attrs(f))
        print("model:", attrs(f["model"]))
        params = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                params[name] = obj[()]
                ok = checksum(params[name]) == int(obj.attrs["checksum"])
                if "chunk_checksums" in obj.attrs:  # files before them: HDF5's Fletcher32 filter
                    ok = ok and chunk_checksums(params[name], obj.chunks[0]) == [int(x) for x in obj.attrs["chunk_checksums"]]
                print(f"  /model/{name:40s} {str(params[name].shape):14s} norm {np.linalg.norm(params[name]):10.4f}"
                      f"  checksum {'ok' if ok else 'MISMATCH'}")
                if not ok:
                    sys.exit(f"{args.checkpoint}: checksum mismatch in /model/{name}")

        f["model"].visititems(visit)
        total = sum(a.size for a in params.values())
        print(f"{len(params)} tensors, {total} parameters")
        if args.npz:
            np.savez(args.npz, **{k.replace("/", "."): v for k, v in params.items()})
            print(f"wrote {args.npz}")


if __name__ == "__main__":
    main()
