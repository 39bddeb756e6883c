"""Tables and plots from bench_networks.py's JSON lines.

Merges the given result files (a later file wins for the same network/batch/sparsity/variant)
and writes, next to the first file or under --out:
  networks-<gpu>-report.md      latency per variant and escoin-tvm's speedups
  networks-<gpu>-sparsity.png   escoin-tvm's speedup over eager fp32 and TVM dense vs sparsity (b1)
  networks-<gpu>-resnet50-layers.png  per-layer dense vs Escoin time of the measured-dispatch
                                      ResNet-50 compile (from its report)

Usage: python -m experiments.reports.report_networks experiments/results/networks-H100-*.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.common import gpu_short_name

DENSE_VARIANTS = ("eager_fp32", "eager_tf32", "eager_fp16", "torch_compile", "tvm_dense")
VARIANTS = DENSE_VARIANTS + ("escoin", "escoin_graph", "escoin_tuned", "escoin_measured")


def load(paths):
    rows, env = {}, None
    for path in paths:
        for line in open(path):
            row = json.loads(line)
            if "environment" in row:
                env = env or row["environment"]
            elif "latency_ms" in row:
                rows[(row["network"], row["batch"], row["sparsity"], row["variant"])] = row
    return rows, env


def baseline(rows, case, variant):
    """A dense variant's latency for ``case``: measured at that sparsity, else at another one of
    the same network and batch (dense compute does not depend on the weights' zeros;
    bench_networks times the dense variants once per network and batch)."""
    if (*case, variant) in rows:
        return rows[(*case, variant)]["latency_ms"]
    same = [r["latency_ms"] for k, r in rows.items() if k[:2] == case[:2] and k[3] == variant]
    return same[-1] if same else None


def table(rows) -> str:
    cases = sorted({k[:3] for k in rows}, key=lambda c: (c[0], c[1], str(c[2])))
    head = ("| network | batch | sparsity | " + " | ".join(VARIANTS) +
            " | escoin vs fp32 | vs TF32 | vs TVM dense |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for case in cases:
        ms = {v: t for v in DENSE_VARIANTS if (t := baseline(rows, case, v)) is not None}
        ms.update({v: rows[(*case, v)]["latency_ms"] for v in VARIANTS[len(DENSE_VARIANTS):]
                   if (*case, v) in rows})
        if "escoin" not in ms:
            continue

        def ratio(base):
            return f"{ms[base] / ms['escoin']:.2f}x" if base in ms else "-"

        lines.append(f"| {case[0]} | {case[1]} | {case[2]} | " +
                     " | ".join(f"{ms[v]:.2f}" if v in ms else "-" for v in VARIANTS) +
                     f" | {ratio('eager_fp32')} | {ratio('eager_tf32')} | {ratio('tvm_dense')} |")
    return "\n".join(lines)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_sparsity(rows, path, title):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for network in sorted({k[0] for k in rows}):
        points = sorted((float(k[2]), k) for k in {k[:3] for k in rows}
                        if k[0] == network and k[1] == 1 and k[2] != "dc"
                        and (*k, "escoin") in rows)
        for ax, base in zip(axes, ("eager_fp32", "tvm_dense")):
            speedups = [(s, t / rows[(*k, "escoin")]["latency_ms"]) for s, k in points
                         if (t := baseline(rows, k, base)) is not None]
            ax.plot([s for s, _ in speedups], [x for _, x in speedups], "o-", label=network)
    for ax, base in zip(axes, ("PyTorch eager fp32", "TVM without the Escoin pass")):
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("sparsity of the convolutions")
        ax.set_ylabel(f"speedup over {base}")
        ax.set_title(f"batch 1: escoin-tvm vs {base}")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_layers(row, path, title):
    plt = pyplot()
    layers = [l for l in row["layers"] if l.get("escoin_us") and l.get("dense_us")]
    fig, ax = plt.subplots(figsize=(14, 4.5))
    xs = range(len(layers))
    ax.bar([x - 0.2 for x in xs], [l["dense_us"] for l in layers], 0.4, label="TVM dense")
    ax.bar([x + 0.2 for x in xs], [l["escoin_us"] for l in layers], 0.4, label="Escoin kernel")
    ax.set_xticks(list(xs), [l["name"] for l in layers], rotation=90, fontsize=6)
    ax.set_ylabel("layer time (us)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows, env = load(args.files)
    out = Path(args.out or Path(args.files[0]).parent)
    gpu = (env or {}).get("gpu", "GPU")
    stem = "networks-" + gpu_short_name(gpu)
    header = (f"Whole networks on {gpu} (driver {env.get('driver')}, torch {env.get('torch')}, "
              f"TVM {env.get('tvm')}), 224x224, latency in ms (median), from "
              f"{', '.join(Path(f).name for f in args.files)}. Dense variants are timed once per "
              "network and batch (their time does not depend on the sparsity).\n\n") if env else ""
    (out / f"{stem}-report.md").write_text(header + table(rows) + "\n")
    plot_sparsity(rows, out / f"{stem}-sparsity.png", f"escoin-tvm, whole networks, {gpu}")
    measured = [r for k, r in rows.items() if k[0] == "resnet50" and k[3] == "escoin_measured"]
    if measured:
        row = measured[0]
        plot_layers(row, out / f"{stem}-resnet50-layers.png",
                    f"ResNet-50, batch {row['batch']}, sparsity {row['sparsity']}, {gpu}: "
                    "per-layer time, measured at compile time")
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
