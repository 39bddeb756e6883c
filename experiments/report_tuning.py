"""Table and plot of a tune_layers.py run: best kernel time against trials, per layer.

Usage: python experiments/report_tuning.py experiments/results/tuning-H100-*.jsonl
Writes <input>.md and <input>.png next to the input."""
import json
import sys
from pathlib import Path

import numpy as np


def main(path):
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()][1:]
    lines = ["| layer | batch | default (us) | pre-tuned (us) | tuned (us) | tuned vs default | "
             "tuned vs pre-tuned | trials | within 5% after | tuning (s) |", "|" + "---|" * 10]
    for r in rows:
        pre = r.get("pretuned_us")
        lines.append(f"| {r['layer']} | {r['batch']} | {r['default_us']:.1f} | "
                     f"{pre:.1f} | {r['tuned_us']:.1f} | {r['default_us'] / r['tuned_us']:.2f}x | "
                     f"{pre / r['tuned_us']:.2f}x | {r['trials']} | {r.get('trials_to_5pct')} | "
                     f"{r['tuning_s']:.0f} |")
    gm = lambda xs: float(np.exp(np.mean(np.log(xs))))  # noqa: E731
    lines.append("")
    lines.append(f"geomean tuned vs default {gm([r['default_us'] / r['tuned_us'] for r in rows]):.2f}x, "
                 f"vs pre-tuned {gm([r['pretuned_us'] / r['tuned_us'] for r in rows if r.get('pretuned_us')]):.2f}x")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        curve = np.minimum.accumulate([t if t < 1e9 else np.inf for t in r["curve_s"]])
        ax.plot(np.arange(1, len(curve) + 1), curve * 1e6, label=f"{r['layer']} b{r['batch']}")
    ax.set_xlabel("trials")
    ax.set_ylabel("best kernel time so far (us)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("MetaSchedule tuning of the Escoin template (H100, sparsity 0.9)")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main(sys.argv[1])
