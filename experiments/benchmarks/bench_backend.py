"""The ``escoin`` torch.compile backend against torch.compile's own, both with
``mode="reduce-overhead"`` (CUDA graphs): what a PyTorch user gains by adding
``backend="escoin"``.

For each network (torchvision architecture, random weights, convolutions magnitude-pruned to
each sparsity), batch and precision, one process compiles the same pruned model twice:
  dense    torch.compile(model, mode="reduce-overhead"): inductor, cuDNN, cuBLAS
  escoin   torch.compile(model, backend="escoin", mode="reduce-overhead"): each candidate layer
           timed on the device against PyTorch's operator, the faster kept; the rest inductor
Precisions: "tf32" is fp32 in PyTorch's default settings (cuDNN may use TF32), "fp16" the model
in fp16 channels-last. The compiled models are timed in the same process, alternately, with the
GPU otherwise idle, in ``--rounds`` rounds (the order of the models turns each round); each round
times 50 calls each alone (CUDA events around the call, then a synchronisation: ``*_ms`` is the
median over rounds of each round's median) and 50 calls back to back (``*_loop_ms``: the host's
work overlaps the GPU's). ``rounds_ms`` keeps every round. The headline ``speedup`` is paired:
the median over rounds of each round's dense / escoin single-call time (``paired_ratio``), so a
slow spell of the host, which lands on every model timed in that round, divides out;
``median_speedup`` is the ratio of the medians, ``loop_speedup`` that of the loops.
``--control [N]`` compiles the dense model N more times (1 if N is not given) and times them
with the others: ``controls`` (dense / each further compile, paired as ``speedup``) is the spread
between compiles of one graph, the noise a speed-up must be read against (``control`` and
``loop_control``: the first of them as ratios of medians). Which estimator spreads identical
compiles least is measured by ``experiments.investigations.timing_estimators``. Inductor's
counters (CUDA-graph recordings, skips) are kept per
compile and over the timing. Compile times are first compiles (a fresh CUDA binary cache,
unless ESCOIN_TVM_CACHE_DIR names one). Each output is checked against eager PyTorch on the
same model, dtype and settings (``rel_err``: max abs difference over max abs reference) and
against the model in float32 with TF32 off (``rel_err_fp32``).

Usage: python -m experiments.benchmarks.bench_backend [--networks alexnet,googlenet,resnet50,vgg16]
    [--batches 1,16] [--sparsities 0.9] [--precisions tf32,fp16] [--deadline 540] [--control [N]]
       python -m experiments.benchmarks.bench_backend --report experiments/results/backend-...jsonl[,...]
           [--second experiments/results/backend-...jsonl[,...]]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import numpy as np

from experiments.benchmarks.bench_networks import (example, pruned_model, reference_output,
                                                   relative_error)
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


def alternate_rounds(fns: dict, rounds: int, repeats: int = 50, loop: bool = True) -> dict:
    """{name: {"call": [...], "loop": [...]}}: seconds per call of each callable, one value per
    round, the rounds alternating between the callables (each round starting one callable
    later, so that none is always timed first). "call": the median of ``repeats`` calls each
    timed alone (CUDA events around the call, then a synchronisation: the latency a caller
    waiting for each result sees, the host's work before the launch included); "loop": the same
    number of calls back to back, per call (the host's work overlaps the GPU's, so a difference
    in "call" that "loop" does not show is a difference on the host; timed only if ``loop``)."""
    from escoin_tvm.support.timing import call_time, median_time

    times = {name: {"call": [], "loop": []} if loop else {"call": []} for name in fns}
    names = list(fns)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            times[name]["call"].append(median_time(fns[name], "cuda", warmup=5,
                                                   repeats=repeats))
            if loop:
                times[name]["loop"].append(call_time(fns[name], "cuda", warmup=0,
                                                     calls=repeats, repeats=1))
    return times


def paired_ratio(numerator: list, denominator: list) -> float:
    """The median over rounds of ``numerator[i] / denominator[i]``: two models' times from the
    same rounds of ``alternate_rounds``, compared round by round. Both are timed within each
    round, so what slows a whole round (the host busy elsewhere, the clocks) slows both and
    divides out, where a ratio of the two medians keeps it."""
    return float(np.median(np.asarray(numerator) / np.asarray(denominator)))


def alternate_times(fns: dict, rounds: int, repeats: int = 50) -> dict:
    """{name: seconds}: each callable's single-call median per round (``alternate_rounds``),
    the median of its rounds."""
    return {name: float(np.median(values["call"]))
            for name, values in alternate_rounds(fns, rounds, repeats, loop=False).items()}


def no_grad_calls(fns: dict, x) -> dict:
    """Each compiled model as a call on ``x`` under ``torch.no_grad()``."""
    import torch

    def call(fn):
        def once():
            with torch.no_grad():
                return fn(x)
        return once

    return {name: call(fn) for name, fn in fns.items()}


def time_compiled(fns: dict, x, rounds: int) -> dict:
    """{name: seconds} of each compiled model called on ``x`` under ``torch.no_grad()``,
    alternately (``alternate_times``)."""
    return alternate_times(no_grad_calls(fns, x), rounds)


def inductor_counters() -> dict:
    """A copy of inductor's counters (CUDA-graph recordings, skips, re-records)."""
    import torch

    return dict(torch._dynamo.utils.counters["inductor"])


def counter_change(before: dict, after: dict) -> dict:
    """The counters that moved from ``before`` to ``after``, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def run_case(network: str, batch: int, sparsity: str, precision: str, rounds: int,
             control: int = 0) -> dict:
    import torch

    from escoin_tvm.torch_compile import backend as escoin_backend

    torch._dynamo.reset()
    # float32 with TF32 off (before ``prepared`` puts PyTorch's default settings back): the
    # reference an fp16 output is also compared with, where the same-dtype one may overflow
    reference32 = reference_output(network, batch, sparsity)
    model, x = prepared(network, batch, sparsity, precision)
    with torch.no_grad():
        reference = model(x).float().cpu().numpy()
    row = {"network": network, "batch": batch, "sparsity": sparsity, "precision": precision,
           "reference_finite": bool(np.isfinite(reference).all())}
    compiled = {}
    variants = [("dense", {}), ("escoin", {"backend": "escoin"})]
    again = [f"dense_again{'' if k == 1 else f'_{k}'}" for k in range(1, control + 1)]
    for name, kwargs in variants + [(name, {}) for name in again]:
        reports = len(escoin_backend.REPORTS)
        counters = inductor_counters()
        start = time.time()
        fn = torch.compile(copy.deepcopy(model), mode="reduce-overhead", **kwargs)
        with torch.no_grad():
            for _ in range(3):  # the first calls compile, then record the CUDA graph
                out = fn(x)
            out = out.double().cpu().numpy()
            row[f"{name}_rel_err"] = relative_error(out, reference)
            row[f"{name}_rel_err_fp32"] = relative_error(out, reference32)
        row[f"{name}_compile_s"] = time.time() - start
        row[f"{name}_inductor_counters"] = counter_change(counters, inductor_counters())
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

    counters = inductor_counters()
    rounds_s = alternate_rounds(no_grad_calls(compiled, x), rounds)
    row["timing_inductor_counters"] = counter_change(counters, inductor_counters())
    row["rounds_ms"] = {name: {kind: [t * 1e3 for t in values] for kind, values in kinds.items()}
                        for name, kinds in rounds_s.items()}
    times = {name: {kind: float(np.median(values)) for kind, values in kinds.items()}
             for name, kinds in rounds_s.items()}
    for name in compiled:
        row[f"{name}_ms"] = times[name]["call"] * 1e3
        row[f"{name}_loop_ms"] = times[name]["loop"] * 1e3
    paired = ratios(row)
    row.update(speedup=paired["speedup"],
               median_speedup=times["dense"]["call"] / times["escoin"]["call"],
               loop_speedup=times["dense"]["loop"] / times["escoin"]["loop"])
    if control:
        row.update(control=times["dense"]["call"] / times["dense_again"]["call"],
                   loop_control=times["dense"]["loop"] / times["dense_again"]["loop"],
                   controls=paired["controls"])
    del compiled
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return row


def ratios(row: dict) -> dict:
    """A row's speed-up, the first dense compile against each control compile, and the escoin
    graph against each dense compile (the first, then the controls), paired round by round
    (``paired_ratio``) from the row's rounds wherever it keeps them (a stored ``speedup`` may be
    a ratio of medians); a row without rounds gives its stored ratios of medians, with
    ``paired`` False."""
    rounds = row.get("rounds_ms")
    if not rounds:
        stored = row.get("controls", [row["control"]] if "control" in row else [])
        return {"paired": False, "speedup": row["speedup"], "controls": stored,
                "against": [row["speedup"]] + [row["speedup"] / c for c in stored]}
    calls = {name: kinds["call"] for name, kinds in rounds.items()}
    dense = ["dense"] + [name for name in calls if name.startswith("dense_again")]
    return {"paired": True, "speedup": paired_ratio(calls["dense"], calls["escoin"]),
            "controls": [paired_ratio(calls["dense"], calls[name]) for name in dense[1:]],
            "against": [paired_ratio(calls[name], calls["escoin"]) for name in dense]}


def _spread(paired: dict) -> str:
    """The control columns: dense / each further compile, and the escoin graph against the
    slowest and the fastest of the dense compiles."""
    controls, against = paired["controls"], paired["against"]
    if not controls:
        return "- | - | "
    return (f"{min(controls):.2f}-{max(controls):.2f}x ({len(controls)}) | "
            f"{min(against):.2f}-{max(against):.2f}x | ")


def result_rows(paths: str) -> list:
    """Every case row of result files (comma-separated), in file order, each with ``gpu``: the
    short name of the GPU its file was measured on (``None`` where the file does not say)."""
    rows = []
    for path in paths.split(","):
        gpu = None
        for line in open(path):
            row = json.loads(line)
            if "environment" in row:
                gpu = gpu_short_name(row["environment"].get("gpu"))
            elif "network" in row:
                rows.append({**row, "gpu": gpu})
    return rows


def report(paths: str) -> str:
    """A markdown table of result files (comma-separated), and the geometric mean and the
    slowest speed-up per precision. Speed-ups are paired round by round (``ratios``); one
    marked "m" is a ratio of medians, from a file that kept no rounds."""
    rows = sorted(result_rows(paths), key=_case)
    lines = ["| network | sparsity | batch | precision | dense ro ms | escoin ro ms | speed-up | "
             "ratio of medians | dense / dense again | escoin / each dense | Escoin layers | "
             "max rel err (dense / escoin) | loop speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    speedups = {}
    for r in rows:
        paired = ratios(r)
        speedups.setdefault(r["precision"], []).append(paired["speedup"])
        mark = "" if paired["paired"] else " m"
        medians = r.get("median_speedup", r["dense_ms"] / r["escoin_ms"])
        lines.append(f"| {r['network']} | {r['sparsity']} | {r['batch']} | {r['precision']} | "
                     f"{r['dense_ms']:.3f} | {r['escoin_ms']:.3f} | "
                     f"{paired['speedup']:.2f}x{mark} | {medians:.2f}x | {_spread(paired)}"
                     f"{r['escoin_layers']}/{r['candidates']} | "
                     f"{r['dense_rel_err']:.1e} / {r['escoin_rel_err']:.1e}"
                     + (f" (fp32: {r['escoin_rel_err_fp32']:.1e})"
                        if "escoin_rel_err_fp32" in r else "") + " | "
                     + (f"{r['loop_speedup']:.2f}x |" if "loop_speedup" in r else "- |"))
    for precision, picked in sorted(speedups.items()):
        lines.append(f"\n{precision}: geomean {geomean(picked):.3f}x over {len(picked)} cases, "
                     f"slowest {min(picked):.3f}x")
    return "\n".join(lines)


def _case(row: dict) -> tuple:
    return row["network"], row["sparsity"], row["batch"], row["precision"]


def two_runs(first: str, second: str) -> str:
    """A markdown table of two runs of the same cases side by side (each comma-separated result
    files): per run the paired speed-up ("m": a ratio of medians, from a file without rounds),
    the spread of the dense compiles and the layers on Escoin, the GPU where it is not the
    first run's; then the slowest case of each run."""
    runs = [{_case(row): (row, ratios(row)) for row in result_rows(paths)}
            for paths in (first, second)]
    usual = max({row["gpu"] for run in runs for row, _ in run.values()},
                key=lambda g: sum(row["gpu"] == g for row, _ in runs[0].values()))

    def cells(found):
        if found is None:
            return "not run | - | -"
        row, paired = found
        spread = (f"{min(paired['controls']):.2f}-{max(paired['controls']):.2f}x"
                  if paired["controls"] else "-")
        return (f"{paired['speedup']:.3f}x{'' if paired['paired'] else ' m'} | {spread} | "
                f"{row['escoin_layers']}/{row['candidates']}"
                + ("" if row["gpu"] == usual else f" ({row['gpu']})"))

    lines = ["| network | sparsity | batch | precision | run 1 speed-up | run 1 dense / dense "
             "again | run 1 layers | run 2 speed-up | run 2 dense / dense again | run 2 layers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in sorted(set(runs[0]) | set(runs[1])):
        lines.append("| " + " | ".join(str(part) for part in case) + " | "
                     + " | ".join(cells(run.get(case)) for run in runs) + " |")
    for number, run in enumerate(runs, 1):
        slowest = min(run, key=lambda case: run[case][1]["speedup"])
        lines.append(f"\nrun {number}: {len(run)} cases, slowest {' '.join(map(str, slowest))} "
                     f"at {run[slowest][1]['speedup']:.3f}x")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="alexnet,googlenet,resnet50,vgg16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsities", default="0.9")
    parser.add_argument("--precisions", default="tf32,fp16")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--control", nargs="?", type=int, const=1, default=0, metavar="N",
                        help="also time N more compiles of the dense model (the noise floor; "
                        "1 if N is not given)")
    parser.add_argument("--deadline", type=float, default=0, help="seconds after which no new "
                        "case starts (0: none)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--report", default=None,
                        help="print the table of result files (comma-separated)")
    parser.add_argument("--second", default=None, help="with --report: result files of a "
                        "second run of the same cases, to print beside the first")
    args = parser.parse_args(argv)
    if args.report:
        print(two_runs(args.report, args.second) if args.second else report(args.report))
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
