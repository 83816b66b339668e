#!/usr/bin/python3
"""Collect a tools/scaling.sh sweep (weak_n*.json, strong_n*.json, allreduce_n*.json) into
scaling.csv / scaling.json and plot tokens/s, efficiency and all-reduce busbw to PNG.

Usage: tools/scaling.py OUT_DIR
"""
import csv
import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(out, kind):
    rows = []
    for path in glob.glob(os.path.join(out, f"{kind}_n*.json")):
        n = int(re.search(r"_n(\d+)\.json$", path).group(1))
        with open(path) as f:
            r = json.load(f)
        r["ranks"] = n
        rows.append(r)
    return sorted(rows, key=lambda r: r["ranks"])


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    table = []
    for mode in ("weak", "strong"):
        rows = load(out, mode)
        if not rows:
            continue
        base = rows[0]
        for r in rows:
            # weak: ideal tokens/s grows with ranks; strong: the same work, ideal time falls with ranks
            ideal = base["tokens_per_s"] * r["ranks"] / base["ranks"]
            table.append({"mode": mode, "ranks": r["ranks"], "batch_per_rank": r["batch_size"],
                          "ms_per_step": r["ms_per_step"], "comm_ms": r.get("comm_ms", 0.0),
                          "tokens_per_s": r["tokens_per_s"], "mfu": r["mfu"],
                          "efficiency": r["tokens_per_s"] / ideal})
    busbw = {}
    for path in glob.glob(os.path.join(out, "allreduce_n*.json")):
        with open(path) as f:
            a = json.load(f)
        busbw[a["ranks"]] = [(row["bytes"], row["tapestry"]["busbw_gbs"], row["mpi"]["busbw_gbs"]) for row in a["rows"]]
    for t in table:
        big = busbw.get(t["ranks"], [])
        t["allreduce_busbw_gbs_largest"] = big[-1][1] if big else None
    with open(os.path.join(out, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0].keys()))
        w.writeheader()
        w.writerows(table)
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump({"points": table, "allreduce_busbw": busbw}, f, indent=1)

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for mode, style in (("weak", "o-"), ("strong", "s--")):
        pts = [t for t in table if t["mode"] == mode]
        ax[0].plot([t["ranks"] for t in pts], [t["tokens_per_s"] for t in pts], style, label=mode)
        ax[1].plot([t["ranks"] for t in pts], [100 * t["efficiency"] for t in pts], style, label=mode)
    if table:
        r0 = min(t["ranks"] for t in table)
        base = [t for t in table if t["mode"] == "weak" and t["ranks"] == r0]
        if base:
            rs = sorted({t["ranks"] for t in table})
            ax[0].plot(rs, [base[0]["tokens_per_s"] * r / r0 for r in rs], ":", color="gray", label="ideal")
    ax[0].set(xlabel="ranks", ylabel="tokens/s", title="throughput")
    ax[1].set(xlabel="ranks", ylabel="% of ideal", title="scaling efficiency", ylim=(0, 110))
    for n, rows in sorted(busbw.items()):
        ax[2].semilogx([r[0] for r in rows], [r[1] for r in rows], "o-", label=f"tapestry, {n} ranks")
        ax[2].semilogx([r[0] for r in rows], [r[2] for r in rows], "x:", label=f"MPI_Allreduce, {n} ranks")
    ax[2].set(xlabel="bytes", ylabel="busbw (GB/s)", title="all-reduce")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    png = os.path.join(out, "scaling.png")
    fig.savefig(png, dpi=100)
    for t in table:
        print(f"{t['mode']:6s} ranks {t['ranks']:3d}  B/rank {t['batch_per_rank']:3d}  {t['ms_per_step']:8.1f} ms/step"
              f"  {t['tokens_per_s']:9.0f} tok/s  MFU {100 * t['mfu']:5.1f}%  efficiency {100 * t['efficiency']:5.1f}%")
    print(f"wrote {out}/scaling.csv, scaling.json, scaling.png")


if __name__ == "__main__":
    main()
