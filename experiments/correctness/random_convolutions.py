"""The long correctness run: many random convolutions, each compiled into an Escoin kernel and
checked against PyTorch in float64 (error within 1e-5 x sum |w||x| per output, the tests'
tolerance, plus the rounding of a half-precision output and of its half sums), on the CPU or
on the GPU.

Configurations: batch 1-4, up to 48 channels, groups and depthwise (with channel multipliers),
kernels 1-7 on each side (non-square), stride 1-3, dilation 1-3, asymmetric padding 0-3,
sparsity 0 to 1, weights scaled by 1e-3 to 1e3, float32, float16 or bfloat16, bias and ReLU or
not, inputs as numpy arrays or torch tensors, contiguous or not (a strided view), and in a
fifth of the padded convolutions a few NaN, +Inf and -Inf inputs. On the GPU also random
schedule knobs, with register tiles that need not divide the output, images blocked or not,
half sums where they apply, and (``--corrupt``) CUDA binary cache entries damaged at random
between builds. Convolutions whose kernel does not fit their padded input are drawn again.

Expected values follow the sparse kernels' semantics: a non-finite input reaches the outputs of
its non-zero weights only (NaN, or +-Inf by the signs of its products, NaN where they meet);
an output beyond the half dtype's range is expected non-finite, as the dense layer's is. (A
convolution without padding reads its input in place, where an Inf may turn NaN: those get no
special inputs; ``docs/design.md``.) Writes one JSON line per mismatch and a summary line with
the counts per dtype, special inputs and corrupted cache entries.

Usage: python -m experiments.correctness.random_convolutions --count 10000 [--target llvm|cuda]
           [--seed 0] [--workers 2] [--corrupt]
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
DTYPES = ("float32", "float32", "float16", "bfloat16")
ROUNDOFF = {"float32": 0.0, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
LARGEST = {"float32": 3.4e38, "float16": 65504.0, "bfloat16": 3.38e38}


def draw(rng: np.random.Generator, target: str) -> dict:
    """One random configuration (a spec that is valid, with its data and knobs)."""
    from escoin_tvm import ShapeError
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

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
        dtype = str(rng.choice(DTYPES))
        if config is not None and dtype != "float32" and rng.random() < 0.5:
            from escoin_tvm.kernels.conv2d.schedule_gpu import with_half_sums

            config = with_half_sums(spec, config, dtype) or config
        return {"spec": spec, "config": config, "dtype": dtype,
                "sparsity": float(rng.choice([0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0])),
                "scale": float(rng.choice([1e-3, 1.0, 1e3])), "bias": bool(rng.random() < 0.5),
                "relu": bool(rng.random() < 0.5), "torch": bool(rng.random() < 0.5),
                "strided": bool(rng.random() < 0.3),
                "special": any(spec.padding) and bool(rng.random() < 0.2),
                "seed": int(rng.integers(2**31))}


def reference(x, w, b, spec, relu, absolute=False):
    """The convolution in float64 of finite ``x``; with ``absolute``, of |x| and |w| (the
    scale of its rounding error)."""
    import torch

    x, w = torch.from_numpy(x).double(), torch.from_numpy(w).double()
    b = None if b is None else torch.from_numpy(b).double()
    if absolute:
        x, w, b = x.abs(), w.abs(), None if b is None else b.abs()
    out = _conv(x, w, b, spec)
    return (torch.relu(out) if relu and not absolute else out).numpy()


def _conv(x, w, b, spec):
    import torch.nn.functional as F

    top, left, bottom, right = spec.padding
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=spec.stride,
                    dilation=spec.dilation, groups=spec.groups)


def special_reference(x, w, spec, relu):
    """Where non-finite inputs reach through non-zero weights: NaN (a NaN, or +Inf and -Inf
    products meeting), +Inf or -Inf (after the ReLU: -Inf is 0); NaN-free elsewhere (None
    where the input is finite)."""
    import torch

    x, w = torch.from_numpy(x).double(), torch.from_numpy(w).double()
    if torch.isfinite(x).all():
        return None

    def reached(inputs, weights):
        return _conv(inputs.double(), weights.double(), None, spec) > 0

    pos = reached(x == float("inf"), w > 0) | reached(x == -float("inf"), w < 0)
    neg = reached(x == float("inf"), w < 0) | reached(x == -float("inf"), w > 0)
    nan = reached(x.isnan(), w != 0) | (pos & neg)
    out = torch.full(pos.shape, float("nan"), dtype=torch.float64)
    out[~nan & pos] = float("inf")
    out[~nan & neg] = 0.0 if relu else -float("inf")
    out[~(nan | pos | neg)] = 1.0  # finite: compared with the finite reference
    return out.numpy()


def corrupt_cache_entry(rng) -> str:
    """Damages one entry of the CUDA binary cache at random (truncates, flips a byte, empties
    it, or puts another entry's bytes under its name); what it did, or "" without entries."""
    from escoin_tvm.kernels.cuda_cache import cache_dir

    folder = cache_dir()
    entries = sorted(folder.glob("*.bin")) if folder is not None and folder.is_dir() else []
    if not entries:
        return ""
    entry = entries[int(rng.integers(len(entries)))]
    data = entry.read_bytes()
    how = str(rng.choice(["truncate", "flip", "empty", "swap"]))
    if how == "truncate":
        data = data[:max(0, len(data) - int(rng.integers(1, 64)))]
    elif how == "flip" and data:
        at = int(rng.integers(len(data)))
        data = data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]
    elif how == "empty":
        data = b""
    else:
        data = entries[int(rng.integers(len(entries)))].read_bytes()
    entry.write_bytes(data)
    return how


def check(job) -> dict:
    """Worker: build, run and compare the configurations of one chunk."""
    import torch

    import escoin_tvm
    from escoin_tvm.prune import prune_array

    from escoin_tvm.support import dtypes

    target, seed, count, corrupt = job
    rng = np.random.default_rng(seed)
    mismatches, counts = [], {"checked": 0, "special": 0, "corrupted": 0}
    for _ in range(count):
        c = draw(rng, target)
        if corrupt and rng.random() < 0.2 and corrupt_cache_entry(rng):
            counts["corrupted"] += 1
        spec, data, dtype = c["spec"], np.random.default_rng(c["seed"]), c["dtype"]
        half = dtypes.numpy_dtype(dtype)
        # the values the kernel sees, in its dtype, and as float64 for the reference
        weight = prune_array((data.standard_normal(spec.weight_shape) * c["scale"])
                             .astype(np.float32), c["sparsity"]).astype(half)
        bias = data.standard_normal(spec.out_channels).astype(np.float32) if c["bias"] else None
        x = data.standard_normal(spec.input_shape).astype(np.float32)
        if c["special"]:
            flat = x.reshape(-1)
            at = data.integers(flat.size, size=int(data.integers(1, 4)))
            flat[at] = data.choice([np.nan, np.inf, -np.inf], size=at.size)
        x = x.astype(half)
        kernel = escoin_tvm.build_sparse_conv2d(
            weight, spec.input_shape, bias=bias, stride=spec.stride, padding=spec.padding,
            dilation=spec.dilation, groups=spec.groups, relu=c["relu"], target=target,
            config=c["config"])
        given = x
        if c["strided"]:  # the same values in a non-contiguous view
            wide = np.zeros((*x.shape[:-1], x.shape[-1] * 2), half)
            wide[..., ::2] = x
            given = wide[..., ::2]
        if c["torch"] or target == "cuda" or dtype == "bfloat16":
            given = dtypes.to_torch(np.ascontiguousarray(given)) if dtype == "bfloat16" or \
                target == "cuda" else torch.from_numpy(given)
            given = given.cuda() if target == "cuda" else given
            out = dtypes.to_numpy(kernel(given).cpu())
        else:
            out = kernel(given)
        out = np.asarray(out).astype(np.float64)
        x64, w64 = x.astype(np.float64), weight.astype(np.float64)
        finite_x = np.nan_to_num(x64, nan=0.0, posinf=0.0, neginf=0.0)
        ref = reference(finite_x, w64, bias, spec, c["relu"])
        scale = reference(finite_x, w64, bias, spec, c["relu"], absolute=True)
        special = special_reference(x64, w64, spec, c["relu"])
        chunk = kernel.config.chunk if getattr(kernel.config, "half_sums", False) else 0
        roundoff = ROUNDOFF[dtype]
        allowed = (TOLERANCE + chunk * roundoff) * scale + roundoff * np.abs(ref) + 1e-6
        overflows = np.abs(ref) > LARGEST[dtype] * (1 - roundoff)  # beyond the dtype: Inf
        compared = ~overflows if special is None else ~overflows & (special == 1.0)
        excess = np.where(compared, np.abs(out - ref) - allowed, 0.0)
        wrong = out.shape != ref.shape or not np.isfinite(out[compared]).all() or \
            excess.max() > 0
        if special is not None:
            counts["special"] += 1
            nonfinite = ~compared & ~overflows
            wrong = wrong or not np.array_equal(out[nonfinite], special[nonfinite],
                                                equal_nan=True)
        counts["checked"] += 1
        if wrong:
            mismatches.append({"spec": str(spec), "config": str(c["config"]),
                               **{k: c[k] for k in ("dtype", "sparsity", "scale", "bias",
                                                    "relu", "torch", "strided", "special",
                                                    "seed")},
                               "excess": float(excess.max())})
    return {**counts, "mismatches": mismatches}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--target", default="llvm", choices=("llvm", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--corrupt", action="store_true",
                        help="damage CUDA binary cache entries at random between builds")
    args = parser.parse_args(argv)
    started = time.time()
    jobs = [(args.target, args.seed * 1_000_003 + i, min(args.chunk, args.count - start),
             args.corrupt) for i, start in enumerate(range(0, args.count, args.chunk))]
    path = result_path("correctness", gpu=None if args.target == "cuda" else "cpu")
    counts, mismatches = {"checked": 0, "special": 0, "corrupted": 0}, []
    with open(path, "w") as out, ProcessPoolExecutor(args.workers,
                                                     mp_context=get_context("spawn")) as pool:
        out.write(json.dumps({"environment": environment(), "args": vars(args)}) + "\n")
        for result in pool.map(check, jobs):
            for key in counts:
                counts[key] += result[key]
            for mismatch in result["mismatches"]:
                out.write(json.dumps(mismatch) + "\n")
            mismatches += result["mismatches"]
            print(f"{counts['checked']}/{args.count} checked ({counts['special']} with NaN/Inf "
                  f"inputs, {counts['corrupted']} cache entries damaged), {len(mismatches)} "
                  f"mismatches, {time.time() - started:.0f} s", flush=True)
        summary = {"summary": True, "target": args.target, **counts,
                   "mismatches": len(mismatches), "seconds": round(time.time() - started)}
        out.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    print(f"wrote {path}")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    raise SystemExit(main())
