"""Markdown table and plot from a bench_layers.py result file.

Usage: python -m experiments.reports.report_layers [experiments/results/layers-*.jsonl]
Writes <result>.md and <result>.png next to the result (the plot needs matplotlib)."""
import glob
import json
import sys
from pathlib import Path


from experiments.common import RESULTS, geomean

BASELINES = ["cudnn_fp32", "cudnn_tf32", "cudnn_fp16", "cublas_im2col", "cusparse_im2col", "tvm_dense"]


def main(path=None):
    path = Path(path or sorted(glob.glob(str(RESULTS / "layers-*.jsonl")))[-1])
    lines = [json.loads(l) for l in open(path)]
    env, rows = lines[0]["environment"], lines[1:]
    out = [f"Layer benchmark, {env['gpu']} (driver {env['driver']}, torch {env['torch']}, "
           f"cuDNN {env['cudnn']}, TVM {env['tvm']}), {env['date']}. Kernel time speedup of "
           "escoin-tvm (geometric mean over the 15 layers; >1 means escoin-tvm is faster).", "",
           "| sparsity | batch | " + " | ".join(f"vs {b}" for b in BASELINES) + " | all correct |",
           "|---|---|" + "---|" * (len(BASELINES) + 1)]
    for s in sorted({r["sparsity"] for r in rows}):
        for b in sorted({r["batch"] for r in rows}):
            sel = [r for r in rows if r["sparsity"] == s and r["batch"] == b]
            cells = [f"{geomean([r[k + '_s'] / r['escoin_s'] for r in sel]):.2f}x" for k in BASELINES]
            out.append(f"| {s} | {b} | " + " | ".join(cells) +
                       f" | {'yes' if all(r['correct'] for r in sel) else 'NO'} |")
    out += ["", "| layer | batch | escoin us (s=0.9) | cuDNN fp32 us | TF32 us | fp16 us | roofline |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["sparsity"] == 0.9:
            out.append(f"| {r['layer']} | {r['batch']} | {r['escoin_s']*1e6:.1f} | "
                       f"{r['cudnn_fp32_s']*1e6:.1f} | {r['cudnn_tf32_s']*1e6:.1f} | "
                       f"{r['cudnn_fp16_s']*1e6:.1f} | {r['roofline_frac']:.0%} |")
    md = path.with_suffix(".md")
    md.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    layers = sorted({r["layer"] for r in rows})
    for col, base in enumerate(["cudnn_fp32", "cudnn_tf32"]):
        for row, batch in enumerate(sorted({r["batch"] for r in rows})):
            ax = axes[row][col]
            for index, layer in enumerate(layers):
                sel = sorted((r for r in rows if r["layer"] == layer and r["batch"] == batch),
                             key=lambda r: r["sparsity"])
                # 15 layers, 10 colours: the second round of colours gets dashed lines
                ax.plot([r["sparsity"] for r in sel], [r[base + "_s"] / r["escoin_s"] for r in sel],
                        marker="os"[index // 10], linestyle="-" if index < 10 else "--",
                        label=layer)
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"speedup over {base}, batch {batch}")
            ax.set_xlabel("sparsity")
    axes[0][1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"escoin-tvm kernel speedup, {env['gpu']}")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=90)


if __name__ == "__main__":
    main(*sys.argv[1:])
