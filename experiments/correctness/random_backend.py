"""The long correctness run of the torch.compile backend: random pruned models compiled with
``backend="escoin"`` and called again and again, each call checked against eager PyTorch.

A case is one model: 1-3 convolutions (with batch norm and ReLU or not, strides, padding,
groups) and a Linear or not, pruned to 50-95%, in float32, float16 or bfloat16, on the CPU or
the GPU, compiled with a random threshold, static or dynamic shapes; then 2-5 calls at random
batch sizes, and in some cases the weights changed in place between calls (the layers on
Escoin kernels keep the weights of the compile, the layers left to PyTorch read the changed
ones: the reference is the changed model with the taken layers' weights, and their folded batch
norms', put back; the calls that follow have the first one's shape, so that the graph of the
compile serves them: a new shape compiles a graph of the changed weights) or a model whose
weight is a call argument, given new values each call (its reference is each call's). Outputs must match
the reference within 1e-4 (float32, TF32 off on both sides) or 2e-2 (half) of the output's
largest magnitude, and be finite where it is. Writes one JSON line per mismatch and a summary line with the counts.

Usage: python -m experiments.correctness.random_backend --count 200 [--device cpu|cuda]
           [--seed 0] [--dispatch measure]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np

from experiments.common import environment, result_path

TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2}


def random_model(rng):
    """A small pruned CNN (and its input's channel count and size)."""
    import torch

    from escoin_tvm import prune

    layers, channels = [], int(rng.choice([3, 4, 8]))
    first, size = channels, int(rng.integers(9, 17))
    pixels = size  # the feature map's side as the layers shrink it
    for _ in range(int(rng.integers(1, 4))):
        out = int(rng.choice([8, 16, 24]))
        groups = int(rng.choice([1, 1, 2])) if channels % 2 == 0 and out % 2 == 0 else 1
        kernel, stride = int(rng.choice([1, 3, 5])), int(rng.choice([1, 1, 2]))
        padding = int(rng.integers(0, kernel // 2 + 1))
        if pixels + 2 * padding < kernel:
            break
        pixels = (pixels + 2 * padding - kernel) // stride + 1
        layers.append(torch.nn.Conv2d(channels, out, kernel, stride=stride, padding=padding,
                                      groups=groups, bias=bool(rng.random() < 0.7)))
        if rng.random() < 0.5:
            norm = torch.nn.BatchNorm2d(out)
            with torch.no_grad():
                norm.running_mean.uniform_(-0.1, 0.1)
                norm.running_var.uniform_(0.5, 1.5)
            layers.append(norm)
        if rng.random() < 0.6:
            layers.append(torch.nn.ReLU())
        channels = out
    linear = rng.random() < 0.4
    if linear:
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                   torch.nn.Linear(channels, int(rng.choice([10, 32])))]
    model = torch.nn.Sequential(*layers).eval()
    prune.magnitude(model, float(rng.choice([0.5, 0.8, 0.9, 0.95])), layers="all")
    return model, first, size


def close(out, ref, dtype: str) -> bool:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape or not bool(((out.isfinite()) | ~ref.isfinite()).all()):
        return False
    scale = float(ref[ref.isfinite()].abs().max()) if ref.isfinite().any() else 1.0
    both = ref.isfinite()
    return bool(((out - ref).abs()[both] <= TOLERANCE[dtype] * max(scale, 1e-3)).all())


def as_compiled(model, compiled_weights):
    """``model`` (a Sequential) as the compiled one computes it after its weights changed: the
    layers the last compile put on Escoin kernels (and the batch norms folded into them) with
    the weights of the compile, ``compiled_weights``, the rest with the changed ones."""
    from escoin_tvm.torch_compile import backend

    expected = copy.deepcopy(model)
    for decision in backend.REPORTS[-1].layers:
        if decision.kernel == "dense":
            continue
        index = int(decision.name.split(".")[-1])
        kept = [index] + ([index + 1] if "batch norm folded" in decision.epilogue else [])
        for i in kept:
            expected[i].load_state_dict(compiled_weights[i].state_dict())
    return expected


def run_case(rng, device: str, dispatch=None) -> dict:
    """One model, compiled and called; what was checked and what did not match. ``dispatch``
    goes to the backend's options (with "measure" the layers are timed, and the graph as a
    whole against the dense one)."""
    import torch
    import torch.nn.functional as F

    dtype = str(rng.choice(["float32", "float32", "float16", "bfloat16"]))
    torch_dtype = getattr(torch, dtype)
    dynamic = bool(rng.random() < 0.3)
    options = {"threshold": float(rng.choice([0.5, 0.7, 0.9]))}
    if dispatch is not None:
        options["dispatch"] = dispatch
    torch._dynamo.reset()
    from escoin_tvm.torch_compile import backend

    backend.REPORTS.clear()  # this case's graphs only
    calls, wrong, kind = 0, [], "model"
    if rng.random() < 0.15:  # the weight is a call argument: new values each call
        kind = "argument"

        def fn(x, w):
            return F.conv2d(x, w, padding=1)

        compiled = torch.compile(fn, backend="escoin", options=options, dynamic=dynamic)
        for _ in range(int(rng.integers(2, 5))):
            w = torch.from_numpy(rng.standard_normal((8, 4, 3, 3)).astype(np.float32))
            w[torch.rand(w.shape) < 0.9] = 0
            x = torch.randn(int(rng.choice([1, 2, 3])), 4, 8, 8)
            w, x = w.to(device, torch_dtype), x.to(device, torch_dtype)
            with torch.no_grad():
                calls += 1
                if not close(compiled(x, w), fn(x, w), dtype):
                    wrong.append(calls)
        return {"kind": kind, "dtype": dtype, "calls": calls, "wrong_calls": wrong}
    model, channels, size = random_model(rng)
    model = model.to(device, torch_dtype)
    compiled_weights = copy.deepcopy(model)
    compiled = torch.compile(model, backend="escoin", options=options, dynamic=dynamic)
    reference, batch = model, None
    for i in range(int(rng.integers(2, 6))):
        if kind != "changed weights" or batch is None:  # after a change, the same graph
            batch = int(rng.choice([1, 2, 3, 5]))
        x = torch.randn(batch, channels, size, size).to(device, torch_dtype)
        with torch.no_grad():
            calls += 1
            if not close(compiled(x), reference(x), dtype):
                wrong.append(calls)
            if i == 0 and rng.random() < 0.3:  # changed in place after the compile
                kind = "changed weights"
                for p in model.parameters():
                    p.mul_(1.5)
                reference = as_compiled(model, compiled_weights)
    return {"kind": kind, "dtype": dtype, "dynamic": dynamic, "calls": calls,
            "wrong_calls": wrong, "model": str(model) if wrong else "",
            "whole_graph": _verdicts()}


def _verdicts() -> list:
    """The whole-graph verdicts of the case's graphs: "escoin", "dense" or "not timed"."""
    from escoin_tvm.torch_compile import backend

    words = {"the Escoin layers run": "escoin", "every layer runs on PyTorch": "dense",
             "not timed": "not timed"}
    return [word for report in backend.REPORTS for phrase, word in words.items()
            if phrase in report.whole_graph]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dispatch", default=None, choices=("measure", "threshold"),
                        help="the backend's dispatch option (default: the backend's own)")
    args = parser.parse_args(argv)
    import torch

    import escoin_tvm  # noqa: F401  (registers the backend)

    # float32 compared in float32 (PyTorch's default TF32 convolutions round to 10 bits)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started, counts = time.time(), {"cases": 0, "calls": 0, "mismatches": 0}
    verdicts = {}  # whole-graph verdicts over all graphs
    kinds = {}
    path = result_path("correctness-backend", gpu=None if args.device == "cuda" else "cpu")
    with open(path, "w") as out:
        out.write(json.dumps({"environment": environment(), "args": vars(args)}) + "\n")
        for index in range(args.count):
            case = run_case(rng, args.device, args.dispatch)
            counts["cases"] += 1
            counts["calls"] += case["calls"]
            key = f"{case['kind']} {case['dtype']}"
            kinds[key] = kinds.get(key, 0) + 1
            for verdict in case.get("whole_graph", []):
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
            if case["wrong_calls"]:
                counts["mismatches"] += 1
                out.write(json.dumps({"case": index, **case}) + "\n")
            if (index + 1) % 25 == 0:
                print(f"{counts['cases']}/{args.count} models, {counts['calls']} calls, "
                      f"{counts['mismatches']} mismatches, {time.time() - started:.0f} s",
                      flush=True)
        summary = {"summary": True, "device": args.device, **counts, "kinds": kinds,
                   "whole_graph": verdicts, "seconds": round(time.time() - started)}
        out.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    print(f"wrote {path}")
    return 0 if not counts["mismatches"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
