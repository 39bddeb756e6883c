"""Half sums without image pairs: should a half-precision kernel whose tile holds one image
(batch 1, where the half dtype's heuristic and the float32 records give plain tiles) sum each
chunk of non-zeros in the half dtype with scalar FMAs? At batch 1 the fp16 kernel executes
more instructions than the fp32 one with the same knobs (each half value is converted before
its float32 FMA) and runs a little slower (Nsight Compute: docs/findings.md, "Half sums of one
image, and what bounds batch 1").

For every layer of both layer sets at the given batch: the float32 kernel (untuned: the shipped
record or the heuristic) and per half dtype the untuned kernel, the same knobs with half sums
(``with_half_sums``: threads fitted to tile the output exactly; where that changed them, the
fitted threads without half sums too, and half sums on the untuned threads, which then check
their bounds around each load and FMA) and, where the chunk is longer
than 16, half sums over chunks of 16 (the rounding error grows with the chunk). Each kernel
timed from CUDA graphs and checked against cuDNN fp32 (TF32 off).

Usage (GPU): python -m experiments.investigations.scalar_half_sums [--batch 1] [--layers a,b]
    [--dtypes float16,bfloat16]
"""
from __future__ import annotations

import dataclasses

from experiments.common import geomean
from experiments.investigations.image_blocks import run_main, untuned_kernels


def kernels(spec, dtypes):
    """(dtype, label, GpuConfig) triples for one layer."""
    from escoin_tvm.kernels.conv2d.schedule_gpu import with_half_sums

    out = []
    for dtype, label, untuned in untuned_kernels(spec, dtypes):
        out.append((dtype, label, untuned))
        if dtype == "float32" or untuned.half_sums:
            continue
        summed = with_half_sums(spec, untuned, dtype)
        if summed is not None:
            if summed != dataclasses.replace(untuned, half_sums=True):  # threads refitted
                out.append((dtype, "fitted", dataclasses.replace(summed, half_sums=False)))
            out.append((dtype, "half_sums", summed))
            unfitted = dataclasses.replace(untuned, half_sums=True)
            if unfitted != summed:  # the untuned threads, a bounds check on each FMA
                out.append((dtype, "half_sums_unfitted", unfitted))
            if summed.chunk > 16:
                out.append((dtype, "half_sums_c16", dataclasses.replace(summed, chunk=16)))
    return out


def summary(rows) -> str:
    """Per layer and half dtype: float32, the half kernel untuned and with half sums (us);
    geomeans of half sums over untuned and over float32."""
    timed = {(r["layer"], r["dtype"], r["variant"]): r for r in rows if "seconds" in r}
    lines = ["| layer | dtype | fp32 | half | half sums | half sums, chunks of 16 | sums / "
             "half | err half / sums / c16 |", "|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for layer, dtype, _ in sorted({k for k in timed if k[2] == "half_sums"},
                                  key=lambda k: (k[1], k[0])):
        f32, plain, summed = (timed.get((layer, d, v)) for d, v in (
            ("float32", "untuned"), (dtype, "untuned"), (dtype, "half_sums")))
        if f32 is None or plain is None:
            continue
        c16 = timed.get((layer, dtype, "half_sums_c16"))
        best = min(summed["seconds"], c16["seconds"] if c16 else float("inf"))
        ratios.setdefault(dtype, []).append((plain["seconds"] / summed["seconds"],
                                             plain["seconds"] / best,
                                             f32["seconds"] / plain["seconds"],
                                             f32["seconds"] / summed["seconds"]))
        c16_us = f"{c16['seconds'] * 1e6:.1f}" if c16 else "-"
        c16_err = f"{c16['max_rel_err']:.1e}" if c16 else "-"
        lines.append(f"| {layer} | {dtype} | {f32['seconds'] * 1e6:.1f} | "
                     f"{plain['seconds'] * 1e6:.1f} | {summed['seconds'] * 1e6:.1f} | {c16_us} | "
                     f"{plain['seconds'] / summed['seconds']:.2f}x | "
                     f"{plain['max_rel_err']:.1e} / {summed['max_rel_err']:.1e} / {c16_err} |")
    for dtype, values in ratios.items():
        lines.append(f"\n{dtype}, {len(values)} layers (geomean): half sums over the plain half "
                     f"kernel {geomean([v[0] for v in values]):.2f}x (the better chunk: "
                     f"{geomean([v[1] for v in values]):.2f}x); over float32: plain "
                     f"{geomean([v[2] for v in values]):.2f}x, half sums "
                     f"{geomean([v[3] for v in values]):.2f}x")
    return "\n".join(lines)


def main(argv=None):
    run_main(argv, __doc__, kernels, summary, "scalar-half-sums", "float16,bfloat16")


if __name__ == "__main__":
    main()
