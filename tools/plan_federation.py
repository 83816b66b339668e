#!/usr/bin/env python3
"""plan_federation.py - predicts utilization and cross-site traffic of a federated run for each
cross-site method, from the model size, each site's step time, the link and the number of sites.

    tools/plan_federation.py predict --params 70e9 --step-s 2.0 --sites 4 --gbit 10 --ms 100
    tools/plan_federation.py validate docs/wan/streaming      # against the emulated runs there
    tools/plan_federation.py coalition                         # the table in docs/wan.md

The model (per site, one link of RATE each way, one-way delay L, S sites, N parameters):
- flat / hierarchical all-reduce every step: a ring over the sites sends 2(S-1)/S of the fp32
  gradient (all-gather of an encoding: (S-1) encodings) and pays 2(S-1) (all-gather: S-1)
  one-way delays; the step waits for it. The bytes go as one TCP stream that starts in slow start
  (the link was idle): the window doubles every round trip from 10 segments.
- DiLoCo, every H steps: the same exchange of the pseudo-gradient, blocking.
- Streaming DiLoCo, P fragments, delay tau: every H/P steps one fragment's exchange, overlapped
  with tau steps of compute; a step waits only for what is left of it. If the link cannot carry
  the fragments as fast as they are made, the backlog is waited for too.
- Lockstep: every site runs at the slowest site's step time (Tapestry's sites meet at every
  exchange), so a slower site is charged to all; with --outer-quota (`quota`), every site keeps
  the fastest site's pace and a slower one computes only t_fast / t_site of its steps.
- Each exchange also costs `overhead_s` on the step's critical path: encoding, decoding, copies
  and the local part of the transfer. `validate` instead starts from the same run's step time
  without the WAN, which holds those costs (and the sites' imbalance), and adds the network's.
Bytes per value: fp32 4, bf16 2, int8 1 + 4/256, int4 0.5 + 4/64, topk 3 * 8/256.
"""
import argparse
import json
import os
import re
import sys

BYTES_PER_VALUE = {"none": 4.0, "bf16": 2.0, "int8": 1 + 4 / 256, "int4": 0.5 + 4 / 64, "topk": 3 * 8 / 256}


MSS = 8948          # bytes per TCP segment at the emulator's 9000-byte MTU
INITIAL_WINDOW = 10  # segments (Linux's initial congestion window)


def transfer_seconds(nbytes, rate_bytes, one_way_s):
    """TCP after an idle link (Linux restarts slow start after an idle period longer than the
    retransmission timeout): the window starts at 10 segments and doubles every round trip until
    it covers the bandwidth-delay product, then the link runs at its rate."""
    rtt = 2 * one_way_s
    window, sent, t = INITIAL_WINDOW * MSS, 0.0, 0.0
    while rtt > 0 and sent + window < nbytes and window < rate_bytes * rtt:
        sent += window
        t += rtt
        window *= 2
    return t + (nbytes - sent) / rate_bytes


def exchange_seconds(n_values, codec, sites, rate_bytes, one_way_s):
    """Seconds and bytes sent per site for one cross-site sum of n_values."""
    if sites <= 1:
        return 0.0, 0.0
    if codec == "none":  # ring all-reduce: reduce-scatter + all-gather
        sent = 2 * (sites - 1) / sites * 4 * n_values
        hops = 2 * (sites - 1)
    else:  # all-gather of every site's encoding
        sent = (sites - 1) * BYTES_PER_VALUE[codec] * n_values
        hops = sites - 1
    return hops * one_way_s + transfer_seconds(sent, rate_bytes, one_way_s), sent


def predict(method, params, step_s, sites, rate_bytes, one_way_s, H=1, P=1, tau=0, codec="none", overhead_s=0.0,
            tokens_per_step=1.0, quota=False):
    """dict: utilization (the fastest site's compute / wall), wall per step, bytes per site per step, tokens/s.
    step_s: compute seconds per step (a list: per site; the slowest sets the pace, or with quota
    the fastest, the others computing only the steps they have time for)."""
    times = list(step_s) if isinstance(step_s, (list, tuple)) else [step_s] * sites
    t = min(times) if quota else max(times)
    computed = sum(min(1.0, t / x) for x in times) / len(times)  # share of the steps computed
    if method in ("flat", "hier"):  # every step, blocking
        x, sent = exchange_seconds(params, codec, sites, rate_bytes, one_way_s)
        waits, per_step = x + overhead_s, sent
    elif method == "diloco":  # every H steps, blocking
        x, sent = exchange_seconds(params, codec, sites, rate_bytes, one_way_s)
        waits, per_step = (x + overhead_s) / H, sent / H
    elif method == "streaming":  # one fragment every H / P steps, overlapped with tau steps
        x, sent = exchange_seconds(params / P, codec, sites, rate_bytes, one_way_s)
        gap = H / P
        wait = max(0.0, x - tau * t) + overhead_s
        # the link's backlog when a fragment takes longer to send than the steps between two sends
        backlog = max(0.0, transfer_seconds(sent, rate_bytes, one_way_s) - gap * t) if tau > 0 else 0.0
        waits, per_step = (wait + backlog) / gap, sent / gap
    else:
        raise ValueError(method)
    wall = t + waits
    return {
        "utilization": min(times) / wall if wall > 0 else 1.0,  # the fastest site's compute / wall
        "wall_s": wall,
        "bytes_per_site_per_step": per_step,
        "tokens_per_s": tokens_per_step * sites * computed / wall,
    }


def parse_method(flags):
    """(method, H, P, tau, codec) from a Tapestry command line."""
    def opt(name, default):
        m = re.search(r"--" + name + r"\s+(\S+)", flags)
        return m.group(1) if m else default
    H, P, tau = int(opt("outer-steps", 0)), int(opt("outer-fragments", 1)), int(opt("outer-delay", 0))
    codec = opt("compress", "none")
    if H == 0:
        return ("hier" if "hierarchical" in flags else "flat"), 1, 1, 0, codec
    return ("streaming" if P > 1 or tau > 0 else "diloco"), H, P, tau, codec


def validate(folder):
    """Compares predictions with the runs recorded by tools/wan/streaming.sh in `folder`: the step
    time over the WAN, predicted as the same run's step time without the WAN (compute, local
    exchange costs, the sites' imbalance) plus what the network model adds."""
    runs = json.load(open(os.path.join(folder, "runs.json")))
    print("| run | sites | one-way ms | rate Mbit/s | ms/step without WAN | measured ms/step | predicted ms/step |"
          " error | measured xsite MB/step | predicted xsite MB/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for r in runs:
        method, H, P, tau, codec = parse_method(r["flags"])
        base = r["nowan_ms_per_step"] / 1e3
        pr = predict(method, r["params"], base, r["sites"], r["rate_mbit"] * 1e6 / 8, r["one_way_ms"] / 1e3,
                     H, P, tau, codec)
        # Tapestry counts all ranks' bytes; the prediction is per site: times the sites
        pred_mb = pr["bytes_per_site_per_step"] * r["sites"] / 1e6
        err = 100 * (pr["wall_s"] * 1e3 / r["ms_per_step"] - 1)
        worst = max(worst, abs(err))
        print(f"| {r['name']} | {r['sites']} | {r['one_way_ms']:g} | {r['rate_mbit']:g} | {r['nowan_ms_per_step']:.1f} |"
              f" {r['ms_per_step']:.1f} | {1e3 * pr['wall_s']:.1f} | {err:+.1f}% | {r['xsite_mb_per_step']:.4f} |"
              f" {pred_mb:.4f} |")
    print(f"\nlargest step-time error: {worst:.1f}%")
    return worst


def coalition():
    """The prediction for a federation like the coalition's."""
    params = 70e9
    # a site of 1024 H100-class GPUs at 40% of 989 TFLOP/s, 2M tokens per site step: 6 N tokens FLOP
    tokens = 2 * 2**20
    step = 6 * params * tokens / (1024 * 989e12 * 0.4)
    print(f"70B parameters; each site: 1024 GPUs at 40% MFU, {tokens / 2**20:.0f}M tokens per step -> "
          f"{step:.2f} s per step; fp32 gradient {4 * params / 1e9:.0f} GB\n")
    print("| sites | link | one-way | method | utilization | cross-site GB per site per step | fewer bytes than flat |")
    print("|---|---|---|---|---|---|---|")
    methods = [("flat all-reduce", "flat", 1, 1, 0, "none"),
               ("hierarchical int8", "hier", 1, 1, 0, "int8"),
               ("DiLoCo H=100", "diloco", 100, 1, 0, "none"),
               ("DiLoCo H=100 int4", "diloco", 100, 1, 0, "int4"),
               ("Streaming H=100 P=4 tau=5 int4", "streaming", 100, 4, 5, "int4"),
               ("Streaming H=100 P=4 tau=5 topk", "streaming", 100, 4, 5, "topk")]
    for sites in (4, 8):
        for gbit in (10, 100):
            for ms in (50, 150):
                flat = predict("flat", params, step, sites, gbit * 1e9 / 8, ms / 1e3)
                for label, m, H, P, tau, codec in methods:
                    # encoding on the GPUs: about 20 ps per value over the site's 1024 GPUs (assumed)
                    pr = predict(m, params, step, sites, gbit * 1e9 / 8, ms / 1e3, H, P, tau, codec,
                                 overhead_s=0.0 if codec == "none" else 2e-11 * params / P)
                    ratio = flat["bytes_per_site_per_step"] / pr["bytes_per_site_per_step"]
                    print(f"| {sites} | {gbit} Gbit/s | {ms} ms | {label} | {100 * pr['utilization']:.1f}% |"
                          f" {pr['bytes_per_site_per_step'] / 1e9:.3f} | {ratio:.0f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="one configuration, every method")
    p.add_argument("--params", type=float, required=True)
    p.add_argument("--step-s", type=float, nargs="+", required=True, help="per-site step times (s)")
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--gbit", type=float, required=True, help="link rate per site, Gbit/s each way")
    p.add_argument("--ms", type=float, required=True, help="one-way delay, ms")
    p.add_argument("--H", type=int, default=100)
    p.add_argument("--P", type=int, default=4)
    p.add_argument("--tau", type=int, default=5)
    p.add_argument("--overhead-s", type=float, default=0.0, help="seconds per exchange beyond the network")
    p.add_argument("--quota", action="store_true", help="--outer-quota: sites keep the fastest site's pace")
    v = sub.add_parser("validate", help="predicted against emulated runs")
    v.add_argument("folder")
    v.add_argument("--max-error", type=float, default=None, help="exit 1 when a step time is off by more (%%)")
    sub.add_parser("coalition", help="70B over 4-8 national sites")
    a = ap.parse_args()
    if a.cmd == "predict":
        rate = a.gbit * 1e9 / 8
        print("| method | codec | utilization | wall s/step | cross-site MB per site per step | tokens/s (1 per site step) |")
        print("|---|---|---|---|---|---|")
        for m, codec in (("flat", "none"), ("hier", "int8"), ("diloco", "none"), ("diloco", "int4"),
                         ("streaming", "int4"), ("streaming", "topk")):
            quota = a.quota and m in ("diloco", "streaming")
            pr = predict(m, a.params, a.step_s, a.sites, rate, a.ms / 1e3, a.H, a.P, a.tau, codec, a.overhead_s,
                         quota=quota)
            print(f"| {m}{' (quota)' if quota else ''} | {codec} | {100 * pr['utilization']:.1f}% | {pr['wall_s']:.3f} |"
                  f" {pr['bytes_per_site_per_step'] / 1e6:.3f} | {pr['tokens_per_s']:.2f} |")
    elif a.cmd == "validate":
        worst = validate(a.folder)
        if a.max_error is not None and not (worst <= a.max_error):
            sys.exit(1)
    else:
        coalition()


if __name__ == "__main__":
    main()
