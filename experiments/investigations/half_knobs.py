"""Should a half-precision kernel without a record of its own take the float32 record of its
layer shape? The shipped table (``schedules/``) holds float32 knobs only, so a half-precision
kernel of a benchmark layer gets the heuristic while the float32 kernel of the same layer gets
tuned knobs; at batch 1 the half kernels of VGG-16 were slower than the float32 ones.

For every layer of both layer sets at the given batch: the float32 kernel with its untuned
knobs (the shipped record where there is one) and with the heuristic; per half dtype the
untuned kernel (the heuristic) and, where the layer has a float32 record, that record's knobs.
Each kernel timed from CUDA graphs and checked against cuDNN fp32 (TF32 off).

Usage (GPU): python -m experiments.investigations.half_knobs [--batch 1] [--layers a,b]
    [--dtypes float16]
"""
from __future__ import annotations


from experiments.common import geomean
from experiments.investigations.image_blocks import run_main


def kernels(spec, dtypes):
    """(dtype, label, GpuConfig) triples for one layer: float32 untuned and heuristic; per half
    dtype untuned and, if the layer has one, the float32 record."""
    import tvm

    from escoin_tvm.kernels.conv2d.knobs import untuned_config
    from escoin_tvm.kernels.conv2d import knobs as conv_knobs
    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    record = conv_knobs.lookup(spec, "sm_90", "float32")
    out = [("float32", "untuned", untuned_config(spec, target, "float32"))]
    if record is not None:
        out.append(("float32", "heuristic", default_gpu_config(spec, "float32")))
    for dtype in dtypes:
        out.append((dtype, "untuned", untuned_config(spec, target, dtype)))
        if record is not None:
            out.append((dtype, "fp32_record", record))
    return out


def summary(rows) -> str:
    """Per layer with a float32 record and half dtype: the float32 kernel with the record and
    with the heuristic, the half kernel with the heuristic and with the record (us); geomeans of
    record over heuristic in each dtype and of the half kernels over the float32 record."""
    timed = {(r["layer"], r["dtype"], r["variant"]): r for r in rows if "seconds" in r}
    lines = ["| layer | dtype | fp32 record | fp32 heuristic | half heuristic | half with fp32 "
             "record | half record / heuristic | err |", "|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for layer, dtype, _ in sorted({k for k in timed if k[2] == "fp32_record"},
                                  key=lambda k: (k[1], k[0])):
        keys = [(layer, "float32", "untuned"), (layer, "float32", "heuristic"),
                (layer, dtype, "untuned"), (layer, dtype, "fp32_record")]
        if not all(k in timed for k in keys):
            continue
        f_rec, f_heur, h_heur, h_rec = (timed[k]["seconds"] for k in keys)
        ratios.setdefault(dtype, []).append((f_heur / f_rec, h_heur / h_rec, f_rec / h_heur,
                                             f_rec / h_rec))
        lines.append(f"| {layer} | {dtype} | {f_rec * 1e6:.1f} | {f_heur * 1e6:.1f} | "
                     f"{h_heur * 1e6:.1f} | {h_rec * 1e6:.1f} | {h_heur / h_rec:.2f}x | "
                     f"{timed[keys[3]]['max_rel_err']:.1e} |")
    for dtype, values in ratios.items():
        lines.append(f"\n{dtype}, {len(values)} layers with a float32 record (geomean): the record "
                     f"over the heuristic {geomean([v[0] for v in values]):.2f}x in float32, "
                     f"{geomean([v[1] for v in values]):.2f}x in {dtype}; {dtype} over the float32 "
                     f"record {geomean([v[2] for v in values]):.2f}x with the heuristic, "
                     f"{geomean([v[3] for v in values]):.2f}x with the record")
    return "\n".join(lines)


def main(argv=None):
    run_main(argv, __doc__, kernels, summary, "half-knobs", "float16")


if __name__ == "__main__":
    main()
