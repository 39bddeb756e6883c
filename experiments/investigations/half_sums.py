"""Do packed half-precision sums pay? ``GpuConfig.half_sums``: each chunk of non-zeros summed
in the input's dtype with packed two-lane FMAs (``__hfma2``), the chunks' sums in float32,
against the half-precision kernel that converts each value and accumulates in float32 (issue
bound on the H200 per Nsight Compute: one conversion and one FMA per value).

For every layer of both layer sets at the given batch: the fp32 untuned kernel (the 1.7x
target's baseline), then per half dtype the untuned kernel (half sums wherever the heuristic
blocks images), the same blocked tile without half sums, and the untuned kernel with chunks of
32 non-zeros. Each kernel timed from CUDA graphs and checked against cuDNN fp32 (TF32 off);
the errors say what the half-precision sums cost in accuracy.

Usage (GPU): python -m experiments.investigations.half_sums [--batch 16] [--layers a,b]
    [--dtypes float16,bfloat16]
"""
from __future__ import annotations

import dataclasses

from experiments.common import geomean
from experiments.investigations.image_blocks import run_main, untuned_kernels


def kernels(spec, dtypes):
    """(dtype, label, GpuConfig) triples for one layer: fp32 untuned; per half dtype the untuned
    kernel (half sums where the heuristic blocks images), the same blocked tile without them
    (the previous default), and the default with chunks of 32."""
    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config

    out = []
    for dtype, label, untuned in untuned_kernels(spec, dtypes):
        out.append((dtype, label, untuned))
        if dtype != "float32" and untuned.half_sums:
            out += [(dtype, "plain_blocked", default_gpu_config(spec, dtype, half_sums=False)),
                    (dtype, "half_sums_chunk32", dataclasses.replace(untuned, chunk=32))]
    return out


def main(argv=None):
    run_main(argv, __doc__, kernels, summary, "half-sums", "float16,bfloat16")


def summary(rows) -> str:
    """Per layer and half dtype: fp32 untuned, the plain blocked tile, the untuned kernel with
    half sums, the chunk-32 variant (us), the speedups and the errors; geomeans."""
    timed = {(r["layer"], r["dtype"], r["variant"]): r for r in rows if "seconds" in r}
    lines = ["| layer | dtype | fp32 | plain blocked | half sums | chunk 32 | sums / plain | "
             "sums / fp32 | err plain | err sums |", "|---|---|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for layer, dtype, _ in sorted({k for k in timed if k[1] != "float32" and k[2] == "untuned"},
                                  key=lambda k: (k[1], k[0])):
        fp32 = timed.get((layer, "float32", "untuned"))
        sums = timed[(layer, dtype, "untuned")]
        plain = timed.get((layer, dtype, "plain_blocked"))
        wide = timed.get((layer, dtype, "half_sums_chunk32"))
        if fp32 is None or plain is None or not sums["config"]["half_sums"]:
            continue
        over_plain, over_fp32 = plain["seconds"] / sums["seconds"], fp32["seconds"] / sums["seconds"]
        ratios.setdefault(dtype, []).append((over_plain, over_fp32))
        lines.append(f"| {layer} | {dtype} | {fp32['seconds'] * 1e6:.1f} | "
                     f"{plain['seconds'] * 1e6:.1f} | {sums['seconds'] * 1e6:.1f} | "
                     f"{wide['seconds'] * 1e6 if wide else float('nan'):.1f} | "
                     f"{over_plain:.2f}x | {over_fp32:.2f}x | {plain['max_rel_err']:.1e} | "
                     f"{sums['max_rel_err']:.1e} |")
    for dtype, values in ratios.items():
        lines.append(f"\n{dtype}, {len(values)} layers with half sums (geomean): "
                     f"{geomean([v[0] for v in values]):.2f}x over the plain blocked tile, "
                     f"{geomean([v[1] for v in values]):.2f}x over fp32 untuned")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
