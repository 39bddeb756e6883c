"""The long correctness run: many random convolutions, each compiled into an Escoin kernel and
checked against PyTorch in float64 (error within 1e-5 x sum |w||x| per output, the tests'
tolerance), on the CPU or on the GPU.

Configurations: batch 1-4, up to 48 channels, groups and depthwise (with channel multipliers),
kernels 1-7 on each side (non-square), stride 1-3, dilation 1-3, asymmetric padding 0-3,
sparsity 0 to 1, weights scaled by 1e-3 to 1e3, bias and ReLU or not, inputs as numpy arrays or
torch tensors, contiguous or not (a strided view). On the GPU also random schedule knobs, with
register tiles that need not divide the output, and images blocked or not. Convolutions whose
kernel does not fit their padded input are drawn again. Writes one JSON line per mismatch and a summary line.

Usage: python -m experiments.correctness.random_convolutions --count 10000 [--target llvm|cuda]
           [--seed 0] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from experiments.common import environment, result_path

TOLERANCE = 1e-5


def draw(rng: np.random.Generator, target: str) -> dict:
    """One random configuration (a spec that is valid, with its data and knobs)."""
    from escoin_tvm import ShapeError
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
    from escoin_tvm.kernels.conv2d.spec import Conv2dSpec

    while True:
        depthwise = rng.random() < 0.2
        groups = int(rng.integers(2, 17)) if depthwise else int(rng.choice([1, 1, 1, 2, 3, 4]))
        cin_g = 1 if depthwise else int(rng.integers(1, max(2, 48 // groups) + 1))
        cout_g = int(rng.integers(1, 4)) if depthwise else int(rng.integers(1, max(2, 48 // groups) + 1))
        kernel = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
        shape = (int(rng.integers(1, 5)), cin_g * groups, int(rng.integers(1, 33)),
                 int(rng.integers(1, 33)))
        try:
            spec = Conv2dSpec.create(shape, (cout_g * groups, cin_g, *kernel),
                                     stride=tuple(int(s) for s in rng.integers(1, 4, 2)),
                                     padding=tuple(int(p) for p in rng.integers(0, 4, 4)),
                                     dilation=tuple(int(d) for d in rng.integers(1, 4, 2)),
                                     groups=groups)
        except ShapeError:
            continue
        config = None
        if target == "cuda" and rng.random() < 0.7:
            config = GpuConfig(threads_x=int(rng.choice([8, 16, 32])),
                               threads_y=int(rng.choice([1, 2, 4, 8])),
                               channel_threads=int(rng.choice([1, 2, 4])),
                               channel_steps=int(rng.choice([1, 2])),
                               rows_per_thread=int(rng.integers(1, 5)),
                               channels_per_thread=int(rng.integers(1, 5)),
                               images_per_thread=int(rng.integers(1, 4)),
                               chunk=int(rng.choice([4, 8, 16, 32])),
                               stage_weights=bool(rng.random() < 0.7),
                               unroll=bool(rng.random() < 0.7),
                               block_images=bool(rng.random() < 0.5))
        return {"spec": spec, "config": config,
                "sparsity": float(rng.choice([0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0])),
                "scale": float(rng.choice([1e-3, 1.0, 1e3])), "bias": bool(rng.random() < 0.5),
                "relu": bool(rng.random() < 0.5), "torch": bool(rng.random() < 0.5),
                "strided": bool(rng.random() < 0.3), "seed": int(rng.integers(2**31))}


def reference(x, w, b, spec, relu, absolute=False):
    import torch
    import torch.nn.functional as F

    x, w = torch.from_numpy(x).double(), torch.from_numpy(w).double()
    b = None if b is None else torch.from_numpy(b).double()
    if absolute:
        x, w, b = x.abs(), w.abs(), None if b is None else b.abs()
    top, left, bottom, right = spec.padding
    out = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=spec.stride,
                   dilation=spec.dilation, groups=spec.groups)
    return (torch.relu(out) if relu and not absolute else out).numpy()


def check(job) -> dict:
    """Worker: build, run and compare the configurations of one chunk."""
    import torch

    import escoin_tvm
    from escoin_tvm.prune import prune_array

    target, seed, count = job
    rng = np.random.default_rng(seed)
    mismatches, checked = [], 0
    for _ in range(count):
        c = draw(rng, target)
        spec, data = c["spec"], np.random.default_rng(c["seed"])
        weight = prune_array((data.standard_normal(spec.weight_shape) * c["scale"])
                             .astype(np.float32), c["sparsity"])
        bias = data.standard_normal(spec.out_channels).astype(np.float32) if c["bias"] else None
        x = data.standard_normal(spec.input_shape).astype(np.float32)
        kernel = escoin_tvm.build_sparse_conv2d(
            weight, spec.input_shape, bias=bias, stride=spec.stride, padding=spec.padding,
            dilation=spec.dilation, groups=spec.groups, relu=c["relu"], target=target,
            config=c["config"])
        given = x
        if c["strided"]:  # the same values in a non-contiguous view
            wide = np.zeros((*x.shape[:-1], x.shape[-1] * 2), np.float32)
            wide[..., ::2] = x
            given = wide[..., ::2]
        if c["torch"] or target == "cuda":
            given = torch.from_numpy(np.ascontiguousarray(given) if target == "cuda" else given)
            given = given.cuda() if target == "cuda" else given
            out = kernel(given).cpu().numpy()
        else:
            out = kernel(given)
        ref = reference(x, weight, bias, spec, c["relu"])
        scale = reference(x, weight, bias, spec, c["relu"], absolute=True)
        excess = np.abs(out.astype(np.float64) - ref) - (TOLERANCE * scale + 1e-6)
        checked += 1
        if out.shape != ref.shape or not np.isfinite(out).all() or excess.max() > 0:
            mismatches.append({"spec": str(spec), "config": str(c["config"]),
                               **{k: c[k] for k in ("sparsity", "scale", "bias", "relu",
                                                    "torch", "strided", "seed")},
                               "excess": float(excess.max())})
    return {"checked": checked, "mismatches": mismatches}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--target", default="llvm", choices=("llvm", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=50)
    args = parser.parse_args(argv)
    started = time.time()
    jobs = [(args.target, args.seed * 1_000_003 + i, min(args.chunk, args.count - start))
            for i, start in enumerate(range(0, args.count, args.chunk))]
    path = result_path("correctness", gpu=None if args.target == "cuda" else "cpu")
    checked, mismatches = 0, []
    with open(path, "w") as out, ProcessPoolExecutor(args.workers,
                                                     mp_context=get_context("spawn")) as pool:
        out.write(json.dumps({"environment": environment(), "args": vars(args)}) + "\n")
        for result in pool.map(check, jobs):
            checked += result["checked"]
            for mismatch in result["mismatches"]:
                out.write(json.dumps(mismatch) + "\n")
            mismatches += result["mismatches"]
            print(f"{checked}/{args.count} checked, {len(mismatches)} mismatches, "
                  f"{time.time() - started:.0f} s", flush=True)
        summary = {"summary": True, "target": args.target, "checked": checked,
                   "mismatches": len(mismatches), "seconds": round(time.time() - started)}
        out.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    print(f"wrote {path}")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    raise SystemExit(main())
