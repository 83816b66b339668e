#!/usr/bin/python3
"""Plot a `tapestry train --metrics-file` JSONL file: train/val loss and tokens/s against step.

Usage: tools/plot_metrics.py train_metrics.jsonl [-o loss.png]
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics")
    ap.add_argument("-o", "--output", default="loss.png")
    args = ap.parse_args()
    train, val = [], []
    with open(args.metrics) as f:
        for line in f:
            r = json.loads(line)
            (val if "val_loss" in r else train).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        ax1.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (nats/token)")
    ax1.legend()
    ax2.plot([r["step"] for r in train], [r["tokens_per_s"] for r in train])
    ax2.set_xlabel("step")
    ax2.set_ylabel("tokens/s")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
