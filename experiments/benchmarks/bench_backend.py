"""The ``escoin`` torch.compile backend against torch.compile's own, both with
``mode="reduce-overhead"`` (CUDA graphs): what a PyTorch user gains by adding
``backend="escoin"``.

For each network (torchvision architecture, random weights, convolutions magnitude-pruned to
each sparsity), batch and precision, one process compiles the same pruned model twice:
  dense    torch.compile(model, mode="reduce-overhead"): inductor, cuDNN, cuBLAS
  escoin   torch.compile(model, backend="escoin", mode="reduce-overhead"): each candidate layer
           timed on the device against PyTorch's operator, the faster kept; the rest inductor
Precisions: "tf32" is fp32 in PyTorch's default settings (cuDNN may use TF32), "fp16" the model
in fp16 channels-last. Both compiled models are timed in the same process, alternately (CUDA
events around each call, median of each of ``--rounds`` rounds of 50, the median of those;
the order of the models turns each round), with the GPU otherwise idle. ``--control`` compiles
the dense model a second time and times it with the others: ``control`` (dense / dense again)
is the spread between two compiles of one graph, the noise a speed-up must be read against. Compile times are first compiles (a fresh CUDA binary cache,
unless ESCOIN_TVM_CACHE_DIR names one). Each output is checked against eager PyTorch on the
same model, dtype and settings (``rel_err``: max abs difference over max abs reference).

Usage: python -m experiments.benchmarks.bench_backend [--networks alexnet,googlenet,resnet50,vgg16]
    [--batches 1,16] [--sparsities 0.9] [--precisions tf32,fp16] [--deadline 540] [--control]
       python -m experiments.benchmarks.bench_backend --report experiments/results/backend-...jsonl[,...]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import numpy as np

from experiments.benchmarks.bench_networks import example, pruned_model, relative_error
from experiments.common import RESULTS, environment, geomean, gpu_short_name, result_path


def prepared(network: str, batch: int, sparsity: str, precision: str):
    """(model, input) on the GPU in the precision, with PyTorch's default TF32 settings."""
    import torch

    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False
    model, x = pruned_model(network, sparsity).cuda(), example(batch).cuda()
    if precision == "fp16":
        model = model.half().to(memory_format=torch.channels_last)
        x = x.half().to(memory_format=torch.channels_last)
    return model, x


def alternate_times(fns: dict, rounds: int, repeats: int = 50) -> dict:
    """{name: seconds}: each callable's median over ``repeats`` calls, the rounds alternating
    between the callables (each round starting one callable later, so that none is always
    timed first), the median of its rounds."""
    from escoin_tvm.support.timing import median_time

    times = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            times[name].append(median_time(fns[name], "cuda", warmup=5, repeats=repeats))
    return {name: float(np.median(values)) for name, values in times.items()}


def time_compiled(fns: dict, x, rounds: int) -> dict:
    """{name: seconds} of each compiled model called on ``x`` under ``torch.no_grad()``,
    alternately (``alternate_times``)."""
    import torch

    def call(fn):
        def once():
            with torch.no_grad():
                return fn(x)
        return once

    return alternate_times({name: call(fn) for name, fn in fns.items()}, rounds)


def run_case(network: str, batch: int, sparsity: str, precision: str, rounds: int,
             control: bool = False) -> dict:
    import torch

    from escoin_tvm.torch_compile import backend as escoin_backend

    torch._dynamo.reset()
    model, x = prepared(network, batch, sparsity, precision)
    with torch.no_grad():
        reference = model(x).float().cpu().numpy()
    row = {"network": network, "batch": batch, "sparsity": sparsity, "precision": precision}
    compiled = {}
    variants = [("dense", {}), ("escoin", {"backend": "escoin"})]
    for name, kwargs in variants + ([("dense_again", {})] if control else []):
        reports = len(escoin_backend.REPORTS)
        start = time.time()
        fn = torch.compile(copy.deepcopy(model), mode="reduce-overhead", **kwargs)
        with torch.no_grad():
            for _ in range(3):  # the first calls compile, then record the CUDA graph
                out = fn(x)
            row[f"{name}_rel_err"] = relative_error(out.float().cpu().numpy(), reference)
        row[f"{name}_compile_s"] = time.time() - start
        if name == "escoin":
            graphs = escoin_backend.REPORTS[reports:]
            decisions = [d for report in graphs for d in report.layers]
            row["candidates"] = len(decisions)
            row["escoin_layers"] = sum(d.kernel != "dense" for d in decisions)
            row["whole_graph"] = [report.whole_graph for report in graphs]
            row["layers"] = [{"name": d.name, "kernel": d.kernel, "escoin_us": d.escoin_us,
                              "dense_us": d.dense_us, "sparsity": d.sparsity,
                              "reason": d.reason}
                             for d in decisions]
        compiled[name] = fn

    times = time_compiled(compiled, x, rounds)
    row.update(dense_ms=times["dense"] * 1e3, escoin_ms=times["escoin"] * 1e3,
               speedup=times["dense"] / times["escoin"])
    if control:
        row.update(dense_again_ms=times["dense_again"] * 1e3,
                   control=times["dense"] / times["dense_again"])
    del compiled
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return row


def report(paths: str) -> str:
    """A markdown table of result files (comma-separated), and the geometric mean speed-up
    per precision."""
    rows = [json.loads(line) for path in paths.split(",") for line in open(path)]
    rows = sorted((r for r in rows if "network" in r), key=lambda r: (
        r["network"], r["sparsity"], r["batch"], r["precision"]))
    control = any("control" in r for r in rows)
    lines = ["| network | sparsity | batch | precision | dense ro ms | escoin ro ms | speed-up | "
             + ("dense / dense again | " if control else "")
             + "Escoin layers | max rel err (dense / escoin) |",
             "|---|---|---|---|---|---|---|" + ("---|" if control else "") + "---|---|"]
    for r in rows:
        spread = (f"{r['control']:.2f}x | " if "control" in r else "- | ") if control else ""
        lines.append(f"| {r['network']} | {r['sparsity']} | {r['batch']} | {r['precision']} | "
                     f"{r['dense_ms']:.3f} | {r['escoin_ms']:.3f} | {r['speedup']:.2f}x | "
                     f"{spread}{r['escoin_layers']}/{r['candidates']} | "
                     f"{r['dense_rel_err']:.1e} / {r['escoin_rel_err']:.1e} |")
    for precision in sorted({r["precision"] for r in rows}):
        picked = [r["speedup"] for r in rows if r["precision"] == precision]
        lines.append(f"\n{precision}: geomean {geomean(picked):.3f}x over {len(picked)} cases, "
                     f"slowest {min(picked):.3f}x")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="alexnet,googlenet,resnet50,vgg16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsities", default="0.9")
    parser.add_argument("--precisions", default="tf32,fp16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--control", action="store_true",
                        help="also time a second compile of the dense model (the noise floor)")
    parser.add_argument("--deadline", type=float, default=0, help="seconds after which no new "
                        "case starts (0: none)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--report", default=None,
                        help="print the table of result files (comma-separated)")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    started = time.time()
    import torch

    # compile times are first compiles: CUDA binaries cached by an earlier run are not reused
    # (what the cache saves a rerun is not part of this comparison)
    os.environ.setdefault("ESCOIN_TVM_CACHE_DIR", tempfile.mkdtemp(prefix="escoin-cache-"))
    # Every case is a recompile of the same forward: past Dynamo's default limit of 8 the
    # rest would silently run eagerly.
    torch._dynamo.config.recompile_limit = 256
    env = environment()
    out = result_path("backend", gpu=gpu_short_name(env["gpu"]), out=args.out)
    with out.open("w") as sink:
        sink.write(json.dumps({"environment": env, "args": vars(args)}) + "\n")
        for sparsity in args.sparsities.split(","):
            for network in args.networks.split(","):
                for batch in (int(b) for b in args.batches.split(",")):
                    for precision in args.precisions.split(","):
                        if args.deadline and time.time() - started > args.deadline:
                            print(f"deadline: skipping {network} b{batch} {sparsity} "
                                  f"{precision}", flush=True)
                            continue
                        row = run_case(network, batch, sparsity, precision, args.rounds,
                                       args.control)
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                        print(json.dumps({k: v for k, v in row.items() if k != "layers"}),
                              flush=True)
    print(report(str(out)))
    print(f"wrote {out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
