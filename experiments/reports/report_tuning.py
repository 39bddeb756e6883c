"""Table and plot of tune_layers.py runs: tuned vs default times, best time against trials.

Usage: python -m experiments.reports.report_tuning experiments/results/tuning-H100-X.jsonl
       python -m experiments.reports.report_tuning RUN1.jsonl RUN2.jsonl ... --out PREFIX
One run: writes <run>.md and <run>.png next to it. Several (e.g. the batches and layers of one
GPU, tuned in several jobs): one table and plot of all their tasks, PREFIX.md and PREFIX.png."""
import argparse
import json
from pathlib import Path

import numpy as np

from experiments.common import geomean


def task_rows(run) -> list:
    """The task rows of a tune_layers.py run, each with its run's file name (``run``)."""
    lines = Path(run).read_text().splitlines()[1:]  # the first line: environment
    return [{**json.loads(line), "run": Path(run).name} for line in lines]


def resumed_from(row) -> int:
    """The trials the log held for this task before the run (a resumed job)."""
    return row["trials"] - row.get("new_trials", row["trials"])


def table(rows) -> str:
    lines = ["| layer | batch | default (us) | pre-tuned (us) | tuned (us) | tuned vs default | "
             "tuned vs pre-tuned | trials | within 5% after | tuning (s) |", "|" + "---|" * 10]
    for r in rows:
        pre = r.get("pretuned_us")
        lines.append(f"| {r['layer']} | {r['batch']} | {r['default_us']:.1f} | "
                     f"{pre:.1f} | {r['tuned_us']:.1f} | {r['default_us'] / r['tuned_us']:.2f}x | "
                     f"{pre / r['tuned_us']:.2f}x | {r['trials']} | {r.get('trials_to_5pct')} | "
                     f"{r['tuning_s']:.0f} |")
    lines.append("")
    if any(resumed_from(r) for r in rows):
        lines += ["Resumed jobs (trials > the run's new trials): 'within 5% after' counts the new "
                  "trials only, against the best of them.", ""]
    for label, group in [(f"batch {b}", [r for r in rows if r["batch"] == b])
                         for b in sorted({r["batch"] for r in rows})] + [("all", rows)]:
        if len({r["batch"] for r in rows}) == 1 and label != "all":
            continue
        tuning = [r["tuning_s"] for r in group]
        vs_default = geomean([r["default_us"] / r["tuned_us"] for r in group])
        vs_pretuned = geomean([r["pretuned_us"] / r["tuned_us"] for r in group if r.get("pretuned_us")])
        lines.append(f"{label} ({len(group)} tasks): geomean tuned vs default {vs_default:.2f}x, "
                     f"vs pre-tuned {vs_pretuned:.2f}x; "
                     f"tuning {min(tuning):.0f}-{max(tuning):.0f} s per task (median "
                     f"{np.median(tuning):.0f} s)")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for r in (r for r in rows if r["batch"] == batch):
            curve = np.minimum.accumulate([t if t < 1e9 else np.inf for t in r["curve_s"]])
            first = resumed_from(r) + 1
            ax.plot(np.arange(first, first + len(curve)), curve * 1e6, label=r["layer"])
        ax.set_xlabel("trials (of the log: a resumed job's curve starts after the earlier ones)")
        ax.set_ylabel("best kernel time so far (us)")
        ax.set_yscale("log")
        ax.legend(fontsize=6, ncol=2)
        ax.set_title(f"MetaSchedule tuning of the Escoin template, batch {batch} (H100, sparsity 0.9)",
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="", help="output prefix (required for several runs)")
    args = parser.parse_args(argv)
    if len(args.runs) > 1 and not args.out:
        parser.error("several runs need --out PREFIX")
    rows = [row for run in args.runs for row in task_rows(run)]
    prefix = Path(args.out) if args.out else Path(args.runs[0]).with_suffix("")
    text = table(rows)
    if len(args.runs) > 1:
        text = "From " + ", ".join(f"`{Path(r).name}`" for r in args.runs) + ".\n\n" + text
    prefix.with_suffix(".md").write_text(text)
    print(text)
    plot(rows, prefix.with_suffix(".png"))


if __name__ == "__main__":
    main()
