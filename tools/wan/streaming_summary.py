#!/usr/bin/env python3
"""streaming_summary.py OUT DELAY_MS RATE - runs.json for tools/plan_federation.py validate: per
run over the WAN, the measured figures, and from the same run without the WAN the cost of one
exchange (encoding, decoding, copies, the local transfer)."""
import json
import os
import re
import statistics
import sys

out, delay, rate = sys.argv[1], float(sys.argv[2]), sys.argv[3]
unit = re.search(r"([kmg])bit", rate).group(1)
mbit = float(re.match(r"([0-9.]+)", rate).group(1)) * {"k": 1e-3, "m": 1, "g": 1e3}[unit]
flags = dict(l.rstrip("\n").split(" ", 1) for l in open(os.path.join(out, "flags.txt")))


def load(tag):
    path = os.path.join(out, tag + ".jsonl")
    if not os.path.exists(path):
        return None
    steps = [json.loads(l) for l in open(path) if '"loss"' in l]
    return steps or None


runs = []
for f in sorted(os.listdir(out)):
    m = re.match(r"s(\d+)_wan_(.*)\.jsonl$", f)
    if not m:
        continue
    sites, name = int(m.group(1)), m.group(2)
    wan, nowan = load(f"s{sites}_wan_{name}"), load(f"s{sites}_nowan_{name}")
    if not wan or not nowan:
        continue
    log = open(os.path.join(out, f"s{sites}_wan_{name}.log")).read()
    params = int(re.search(r"tapestry train: (\d+) parameters", log).group(1))
    body = [s for s in wan if s["step"] > 3]
    wall = sum(s["ms"] for s in body)
    wait = sum(s["xsite_wait_ms"] for s in body)
    # exchanges in the no-WAN run: every step (flat), or the steps that sent (DiLoCo)
    sends = [s for s in nowan if s["step"] > 3 and ("outer-steps" not in flags[name] or s["cross_site_mb"] > 0)]
    runs.append({
        "name": name, "sites": sites, "one_way_ms": delay, "rate_mbit": mbit, "params": params,
        "flags": flags[name], "steps": len(wan),
        "step_s": statistics.median((s["ms"] - s["xsite_wait_ms"]) / 1e3 for s in body),
        "utilization": (wall - wait) / wall,
        "xsite_mb_per_step": sum(s["cross_site_mb"] for s in wan) / len(wan),
        "xsite_mb_peak_step": max(s["cross_site_mb"] for s in wan),  # the largest burst: one step's bytes
        "overhead_s": sum(s["xsite_wait_ms"] for s in nowan if s["step"] > 3) / 1e3 / max(1, len(sends)),
        "ms_per_step": wall / len(body),
        "nowan_ms_per_step": statistics.mean(s["ms"] for s in nowan if s["step"] > 3),
    })
json.dump(runs, open(os.path.join(out, "runs.json"), "w"), indent=1)
print(f"{len(runs)} runs summarised in {out}/runs.json")

# The table for docs/wan.md: per run over the WAN; bytes against the flat run of the same model
# and sites.
print("\n| run | sites | ms/step | utilization (site 0) | cross-site MB/step (all ranks) | fewer bytes than flat |"
      " largest step's MB |")
print("|---|---|---|---|---|---|---|")
for r in runs:
    model = r["name"].split("-")[0]
    flat = next((f for f in runs if f["name"] == model + "-flat" and f["sites"] == r["sites"]), None)
    fewer = f"{flat['xsite_mb_per_step'] / r['xsite_mb_per_step']:.0f}x" if flat and r["xsite_mb_per_step"] > 0 else "-"
    print(f"| {r['name']} | {r['sites']} | {r['ms_per_step']:.1f} | {100 * r['utilization']:.1f}% |"
          f" {r['xsite_mb_per_step']:.4f} | {fewer} | {r['xsite_mb_peak_step']:.3f} |")
