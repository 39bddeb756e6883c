"""Do aligned vector loads pay at batch >= 2? The padded input laid out (N/v, C*Hp*Wp, v)
(``GpuConfig.block_images``), so that the v images a thread holds at a tap are one aligned
8/16-byte load instead of v scalar loads that each straddle two 128-byte lines.

For every layer of both layer sets (the benchmark's and the unseen shapes) at the given batch,
in fp32 and fp16: the untuned config, then the same register tile size (images x channels x
rows accumulators) spent on 1, 2 and 4 images per thread, each with the images blocked and not.
Each kernel timed from CUDA graphs (``graph_time``) and checked against cuDNN fp32 (TF32 off).
Writes one JSON line per kernel and prints, per layer and dtype, the best blocked and the best
unblocked time.

Usage (GPU): python -m experiments.investigations.image_blocks [--batch 16] [--layers a,b]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


from experiments.benchmarks.layers import LAYER_SETS, pruned_weight
from experiments.common import environment, export_kernel, geomean, load_kernel, result_path


def variants(spec, dtype):
    """(label, GpuConfig) pairs: the untuned config, then its tile on 1, 2, 4 images, each
    with and without blocked images."""
    import dataclasses

    import tvm

    from escoin_tvm.kernels.conv2d.knobs import untuned_config

    base = untuned_config(spec, tvm.target.Target({"kind": "cuda", "arch": "sm_90"}), dtype)
    out = [("untuned", base)]
    tile = base.images_per_thread * base.channels_per_thread * base.rows_per_thread
    for images in (1, 2, 4):
        if images > spec.batch:
            continue
        rows = min(base.rows_per_thread, max(1, tile // images))
        channels = max(1, tile // (images * rows))
        for blocked in ((False, True) if images > 1 else (False,)):
            config = dataclasses.replace(base, images_per_thread=images, rows_per_thread=rows,
                                         channels_per_thread=channels, block_images=blocked)
            if config not in [c for _, c in out]:
                out.append((f"img{images}{'_blocked' if blocked else ''}", config))
    return out


def build(job):
    """Worker: compile one kernel and export it with its constants."""
    name, batch, chw, wshape, stride, pad, groups, seed, sparsity, dtype, label, knobs, workdir = job
    import escoin_tvm
    from escoin_tvm.support.dtypes import numpy_dtype
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig

    weight = pruned_weight(wshape, sparsity, seed).astype(numpy_dtype(dtype))
    try:
        kernel = escoin_tvm.build_sparse_conv2d(weight, (batch, *chw), stride=stride, padding=pad,
                                                groups=groups, target="cuda",
                                                config=GpuConfig(**knobs))
    except Exception as err:  # report, keep going
        return None, f"{type(err).__name__}: {str(err)[:300]}"
    path = os.path.join(workdir, f"{name}_b{batch}_{dtype}_{label}.so")
    export_kernel(kernel, path)
    return path, None


def main(argv=None):
    run_main(argv, __doc__, lambda spec, dtypes: [(dtype, label, config) for dtype in dtypes
                                                  for label, config in variants(spec, dtype)],
             summary, "image-blocks", "float32,float16")


def run_main(argv, doc: str, kernels, summary, result_name: str, dtypes: str) -> None:
    """The command line of an investigation over the layer sets: ``add_arguments`` and
    ``--dtypes`` (default ``dtypes``); runs ``kernels(spec, dtypes)`` (``run``) and prints
    ``summary(rows)``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--dtypes", default=dtypes)
    args = parser.parse_args(argv)
    rows = run(args, lambda spec: kernels(spec, args.dtypes.split(",")), result_name)
    print(summary(rows))


def untuned_kernels(spec, dtypes) -> list:
    """[(dtype, "untuned", GpuConfig)]: the knobs a user gets for ``spec`` in float32, then in
    each of ``dtypes`` (the shipped record or the heuristic), the kernels an investigation
    compares its variants with."""
    import tvm

    from escoin_tvm.kernels.conv2d.knobs import untuned_config

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    return [(dtype, "untuned", untuned_config(spec, target, dtype))
            for dtype in ("float32", *dtypes)]


def add_arguments(parser) -> None:
    """The options of a run over the layer sets (``run``)."""
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--layers", default="", help="only these layers")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))


def run(args, kernels, result_name: str):
    """Builds ``kernels(spec)`` -- (dtype, label, GpuConfig) triples -- for every layer of both
    layer sets at ``args.batch`` in parallel workers, then times each from CUDA graphs and
    checks it against cuDNN fp32 (TF32 off). Writes and returns one row per kernel."""
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    workdir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"escoin_{result_name}")
    os.makedirs(workdir, exist_ok=True)
    jobs = []
    for layer_set, layers in LAYER_SETS.items():
        for seed, (name, chw, wshape, stride, pad, groups) in enumerate(layers):
            if args.layers and name not in args.layers.split(","):
                continue
            spec = Conv2dSpec.create((args.batch, *chw), wshape, stride=stride, padding=pad,
                                     groups=groups)
            for dtype, label, config in kernels(spec):
                jobs.append((name, args.batch, chw, wshape, stride, pad, groups, seed,
                             args.sparsity, dtype, label, dict(vars(config)), workdir))
    started = time.time()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        built = list(pool.map(build, jobs, chunksize=2))
    print(f"built {len(jobs)} kernels in {time.time() - started:.0f} s", flush=True)

    import torch
    import torch.nn.functional as F
    import tvm

    from escoin_tvm.kernels.conv2d.operator import kernel_input_shape
    from escoin_tvm.support.timing import graph_time

    torch.backends.cudnn.allow_tf32 = False
    dev = tvm.cuda(0)
    path_out = result_path(result_name)
    refs, rows = {}, []
    with open(path_out, "w") as log:
        log.write(json.dumps({"environment": environment(), "args": vars(args)}) + "\n")
        for job, (path, error) in zip(jobs, built):
            name, batch, chw, wshape, stride, pad, groups, seed, sparsity, dtype, label, knobs = \
                job[:12]
            row = {"layer": name, "batch": batch, "dtype": dtype, "variant": label,
                   "config": knobs}
            if path is None:
                row["error"] = error
            else:
                if name not in refs:
                    x = torch.randn(batch, *chw, device="cuda")
                    w = torch.from_numpy(pruned_weight(wshape, sparsity, seed)).cuda()
                    refs[name] = (x, F.conv2d(x, w, None, stride, pad, 1, groups))
                x, ref = refs[name]
                spec = Conv2dSpec.create(x.shape, wshape, stride=stride, padding=pad,
                                         groups=groups)
                given = (x if dtype == "float32" else x.to(getattr(torch, dtype)))
                xt = tvm.runtime.from_dlpack(given.reshape(kernel_input_shape(spec)).contiguous())
                mod, consts = load_kernel(path, dev)
                yt = tvm.runtime.empty(tuple(ref.shape), dtype, dev)
                try:
                    row["seconds"] = graph_time(lambda: mod["main"](xt, *consts, yt),
                                                tvm_stream=True)
                    torch.cuda.synchronize()
                    out = torch.from_dlpack(yt).float()
                    row["max_rel_err"] = float((out - ref).abs().max() /
                                               ref.abs().max().clamp_min(1e-30))
                except Exception as err:  # report, keep going
                    row["error"] = f"{type(err).__name__}: {str(err)[-300:]}"
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            shown = f"{row['seconds'] * 1e6:9.1f} us  err {row['max_rel_err']:.1e}" \
                if "seconds" in row else row["error"][:100]
            print(f"{name:24s} {dtype:8s} {label:14s} {shown}", flush=True)
    print(f"\nresults: {path_out}\n")
    return rows


def summary(rows) -> str:
    """Per layer and dtype: untuned, best unblocked, best blocked (us); geomean ratios."""
    lines = ["| layer | dtype | untuned | best plain | best blocked | blocked/plain |",
             "|---|---|---|---|---|---|"]
    ratios = {}
    keys = sorted({(r["layer"], r["dtype"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for layer, dtype in keys:
        timed = [r for r in rows if (r["layer"], r["dtype"]) == (layer, dtype) and "seconds" in r]
        plain = [r["seconds"] for r in timed if not r["config"]["block_images"] or
                 r["config"]["images_per_thread"] == 1]
        blocked = [r["seconds"] for r in timed if r["config"]["block_images"] and
                   r["config"]["images_per_thread"] > 1]
        untuned = [r["seconds"] for r in timed if r["variant"] == "untuned"]
        if not plain or not blocked:
            continue
        ratio = min(plain) / min(blocked)
        ratios.setdefault(dtype, []).append(ratio)
        lines.append(f"| {layer} | {dtype} | {untuned[0] * 1e6:.1f} | {min(plain) * 1e6:.1f} | "
                     f"{min(blocked) * 1e6:.1f} | {ratio:.2f}x |")
    for dtype, values in ratios.items():
        lines.append(f"\n{dtype}: blocked speedup over the best plain variant, geomean "
                     f"{geomean(values):.2f}x over {len(values)} layers")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
