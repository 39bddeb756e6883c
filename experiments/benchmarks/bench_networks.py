"""Whole-network inference of pruned CNNs: escoin-tvm against what a PyTorch user would run.

For each network (torchvision architecture, random weights, convolutions magnitude-pruned to
each sparsity, or to Deep Compression's published per-layer sparsities: "dc") and batch, at
224x224, one run measures the end-to-end latency (median after warm-up) of:
  graph_fp32     PyTorch, every launch captured in one CUDA graph (``timing.graph_time``), fp32
                 with TF32 off
  graph_tf32     the same in PyTorch's default (cuDNN may use TF32)
  graph_fp16     the same in fp16 channels-last
  compile_ro_tf32  torch.compile(mode="reduce-overhead"), PyTorch's default TF32 settings
  compile_ro_fp16  the same in fp16 channels-last
  backend_ro_tf32  torch.compile(backend="escoin", mode="reduce-overhead"): sparse layers on
                 Escoin kernels where they measure faster, the rest inductor (TF32 default)
  backend_ro_fp16  the same in fp16
  eager_fp32     PyTorch eager, fp32, TF32 off (a secondary column: launch-bound at batch 1)
A sparsity with a "+fc" suffix (--whole) prunes the fully-connected layers too, which escoin-tvm
then runs on its sparse linear kernel. A "v" prefix ("v0.9") prunes in vectors of 16 output
channels (``prune.vectors``), which the fp16 variants run on the tensor-core family.
  eager_tf32     PyTorch eager, PyTorch's default (cuDNN may use TF32)
  eager_fp16     PyTorch eager, fp16 channels-last
  torch_compile  torch.compile, default mode, fp32 (TF32 off)
  tvm_dense      TVM 0.27 compiling the same model without the Escoin pass (dispatch_by="none")
  escoin         escoin-tvm, threshold dispatch, pre-tuned/default schedules (untuned)
  escoin_fp16    the same model in fp16 (Escoin kernels in fp16, float32 sums)
  escoin_graph   the same compiled with cuda_graph=True (TVM's CUDA-graph rewrite; --graph)
  escoin_measured  escoin-tvm with per-layer dispatch by measurement (selected networks)
  escoin_tuned   escoin-tvm with --tuning-log (if given and it has records)
The torch.compile and eager variants are timed with CUDA events around each call (median of 30); TVM
modules with time_evaluator (20 x 5 runs, median). Every escoin-tvm output is checked against
PyTorch fp32 (TF32 off) in the same run (``rel_err``; fp16 variants round every layer). TVM compiles
run in parallel worker processes while torch.compile warms up; all timing happens afterwards with
the GPU otherwise idle.

A network named ``tv:NAME`` is torchvision's ``NAME`` (random weights), where torchvision is
installed: networks the project did not write (ResNeXt-50, MobileNetV2, DenseNet-121...).

Usage: python -m experiments.benchmarks.bench_networks [--networks alexnet,googlenet,resnet50,vgg16]
    [--batches 1,16] [--sparsities 0.9] [--sweep resnet50:1:0.7,0.8,0.95] [--dc alexnet,vgg16]
    [--measured resnet50:1] [--out experiments/results] [--workers 12] [--deadline 540]
Vector-pruned networks on the tensor-core family: --sparsities v0.9 --dc "" --whole ""
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from experiments.common import RESULTS


SIZE = 224


def pruned_model(network: str, sparsity):
    """The network with its convolutions pruned to ``sparsity`` (a number, or "dc" for Deep
    Compression's per-layer rates); a "+fc" suffix prunes its fully-connected layers too. A
    fresh copy each call; building and pruning (seconds for VGG-16) happen once per process."""
    return copy.deepcopy(_pruned_model(network, str(sparsity)))


@functools.cache
def _pruned_model(network: str, sparsity: str):
    from escoin_tvm import models, prune

    if network.startswith("tv:"):  # a torchvision architecture (on machines that have it)
        model = torchvision_model(network[3:])
    else:
        model = models.build(network, seed=0)
    sparsity = str(sparsity)
    layers = "all" if sparsity.endswith("+fc") else "conv"
    sparsity = sparsity.removesuffix("+fc")
    if sparsity == "dc":
        prune.deep_compression(model, network, layers=layers)
    elif sparsity.startswith("v"):  # "v0.9": in vectors of 16 output channels (tensor cores)
        prune.vectors(model, float(sparsity[1:]), group=16, layers=layers)
    else:
        prune.magnitude(model, float(sparsity), layers=layers)
    return model.eval()


def torchvision_model(name: str, he_init: bool = True):
    """torchvision's architecture ``name`` with random weights (seed 0) and random batch-norm
    statistics. ``he_init``: convolution and linear weights drawn to keep activations at scale
    (He et al.), as trained networks do; some of torchvision's own initialisations grow them
    layer by layer until fp16 overflows (Inception-v3's normal of std 0.1:
    ``experiments/investigations/fp16_range.py``)."""
    import torch
    import torchvision

    from escoin_tvm import models

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    if he_init:
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return models.with_random_batch_norms(model)


def example(batch: int):
    import torch

    return torch.from_numpy(np.random.default_rng(batch).standard_normal(
        (batch, 3, SIZE, SIZE)).astype(np.float32))


def compile_job(job):
    """Worker: compile one TVM variant and export it."""
    network, batch, sparsity, variant, workdir, tuning_log = job
    import escoin_tvm


    start = time.time()
    dispatch = "none" if variant == "tvm_dense" else "threshold"
    model, x = pruned_model(network, sparsity), example(batch)
    if variant == "escoin_fp16":
        model, x = model.half(), x.half()
    compiled = escoin_tvm.compile(model, (x,), target="cuda",
                                  dispatch_by=dispatch, cuda_graph=variant == "escoin_graph",
                                  tuning_log=tuning_log if variant == "escoin_tuned" else None)
    path = os.path.join(workdir, f"{network}-b{batch}-{sparsity}-{variant}.so")
    compiled.export_library(path)
    return job, path, time.time() - start


def torch_variants(network, batch, sparsity, skip=()):
    """Callables of the PyTorch variants on the GPU (dense kernels: their time does not depend
    on the sparsity), less the families in ``skip`` ("eager", "compile")."""
    import torch

    # Every network's models share their forward's code object, so each torch.compile variant
    # (dtype, batch, backend) is a recompile of the same frame: past Dynamo's default limit of 8
    # the rest would silently run eagerly.
    torch._dynamo.config.recompile_limit = 256

    model = pruned_model(network, sparsity).cuda()
    x = example(batch).cuda()
    half = pruned_model(network, sparsity).cuda().half().to(memory_format=torch.channels_last)
    xh = x.half().to(memory_format=torch.channels_last)

    def tf32(flag):
        torch.backends.cudnn.allow_tf32 = flag
        torch.backends.cuda.matmul.allow_tf32 = flag

    def run(fn, allow_tf32=False):
        def call():
            tf32(allow_tf32)
            with torch.no_grad():
                return fn()
        return call

    variants = {}
    if "eager" not in skip:
        variants.update(eager_fp32=run(lambda: model(x)), eager_tf32=run(lambda: model(x), True),
                        eager_fp16=run(lambda: half(xh)))
    if "compile" not in skip:
        compiled = torch.compile(model)
        ro_tf32 = torch.compile(copy.deepcopy(model), mode="reduce-overhead")
        ro_fp16 = torch.compile(copy.deepcopy(half), mode="reduce-overhead")
        backend_tf32 = torch.compile(copy.deepcopy(model), backend="escoin",
                                     mode="reduce-overhead")
        backend_fp16 = torch.compile(copy.deepcopy(half), backend="escoin",
                                     mode="reduce-overhead")
        variants.update(torch_compile=run(lambda: compiled(x)),
                        compile_ro_tf32=run(lambda: ro_tf32(x), True),
                        compile_ro_fp16=run(lambda: ro_fp16(xh), True),
                        backend_ro_tf32=run(lambda: backend_tf32(x), True),
                        backend_ro_fp16=run(lambda: backend_fp16(xh), True))
    return variants


def graph_variants(network, batch, sparsity):
    """{variant: seconds} of dense PyTorch with its launches captured in one CUDA graph."""
    import torch

    from escoin_tvm.support.timing import graph_time

    model = pruned_model(network, sparsity).cuda()
    x = example(batch).cuda()
    half = copy.deepcopy(model).half().to(memory_format=torch.channels_last)
    xh = x.half().to(memory_format=torch.channels_last)
    times = {}
    for variant, fn, tf32 in (("graph_fp32", lambda: model(x), False),
                              ("graph_tf32", lambda: model(x), True),
                              ("graph_fp16", lambda: half(xh), True)):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad():
            times[variant] = graph_time(fn)
    return times


def reference_output(network, batch, sparsity) -> np.ndarray:
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        return pruned_model(network, sparsity).cuda()(example(batch).cuda()).cpu().numpy()


def relative_error(out, reference) -> float:
    out, reference = np.asarray(out, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.abs(out - reference).max() / max(np.abs(reference).max(), 1e-30))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="alexnet,googlenet,resnet50,vgg16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsities", default="0.9")
    parser.add_argument("--sweep", default="", help="NET:BATCH:S1,S2 extra sparsities, ';'-separated")
    parser.add_argument("--dc", default="alexnet,vgg16", help="networks also run at Deep "
                        "Compression's per-layer sparsities (batch 1)")
    parser.add_argument("--whole", default="alexnet,vgg16", help="networks also run with their "
                        "fully-connected layers pruned too (first sparsity and Deep Compression's, "
                        "batch 1 and the first batch above it)")
    parser.add_argument("--measured", default="resnet50:1", help="NET:BATCH compiled with "
                        "dispatch by measurement (at the first sparsity), ';'-separated")
    parser.add_argument("--tuning-log", default=None)
    parser.add_argument("--graph", action="store_true", help="also escoin_graph (CUDA graphs) "
                        "for each network and batch at the first sparsity")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 4) - 4))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--deadline", type=float, default=0)
    parser.add_argument("--skip", default="", help="variant families left out, comma-separated: "
                        "eager, compile (torch.compile and the escoin backend), tvm_dense")
    args = parser.parse_args(argv)
    started = time.time()

    import torch

    import escoin_tvm
    from experiments.common import environment, gpu_short_name, result_path
    from escoin_tvm.support.timing import median_time

    networks = args.networks.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    sparsities = args.sparsities.split(",")
    cases = [(n, b, s) for n in networks for b in batches for s in sparsities]
    for item in filter(None, args.sweep.split(";")):
        n, b, ss = item.split(":")
        cases += [(n, int(b), s) for s in ss.split(",") if (n, int(b), s) not in cases]
    cases += [(n, 1, "dc") for n in filter(None, args.dc.split(",")) if n in networks]
    cases += [(n, b, s) for n in filter(None, args.whole.split(",")) if n in networks
              for b in batches[:2] for s in (f"{sparsities[0]}+fc", "dc+fc")]
    measured = [(n, int(b)) for n, b in (m.split(":") for m in filter(None, args.measured.split(";")))]

    env = environment()
    out = result_path("networks", gpu=gpu_short_name(env["gpu"]), out=args.out)
    sink = out.open("w")

    def emit(row):
        sink.write(json.dumps(row) + "\n")
        sink.flush()
        print(json.dumps({k: v for k, v in row.items() if k != "layers"}), flush=True)

    emit({"environment": env, "size": SIZE, "cases": cases})
    workdir = tempfile.mkdtemp(prefix="escoin-networks-")
    jobs = [(n, b, s, "escoin", workdir, None) for n, b, s in cases]
    skip = set(filter(None, args.skip.split(",")))
    if "tvm_dense" not in skip:
        jobs += [(n, b, sparsities[0], "tvm_dense", workdir, None)
                 for n in networks for b in batches]
    jobs += [(n, b, s, "escoin_fp16", workdir, None) for n, b, s in cases
             if s == sparsities[0] or s.endswith("+fc")]
    if args.graph:
        jobs += [(n, b, sparsities[0], "escoin_graph", workdir, None) for n in networks for b in batches]
    if args.tuning_log:
        jobs += [(n, b, s, "escoin_tuned", workdir, args.tuning_log) for n, b, s in cases]
    pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"))
    futures = [pool.submit(compile_job, job) for job in jobs]

    # While TVM compiles: build the PyTorch variants and warm them up (torch.compile compiles).
    torch_runs, references = {}, {}
    for n in networks:
        for b in batches:
            torch_runs[n, b] = torch_variants(n, b, sparsities[0], skip)
            for fn in torch_runs[n, b].values():
                fn()
    for n, b, s in cases:
        references[n, b, s] = reference_output(n, b, s)
    # Graph replays launch once from the host, so the compiles in the workers don't disturb them.
    for n in networks:
        for b in batches:
            for variant, seconds in graph_variants(n, b, sparsities[0]).items():
                emit({"network": n, "batch": b, "sparsity": sparsities[0], "variant": variant,
                      "latency_ms": seconds * 1e3})
    torch.cuda.synchronize()
    built = []
    for future in futures:
        try:
            built.append(future.result())
        except Exception as err:  # keep going: a failed compile is a result too
            print(f"compile failed: {type(err).__name__}: {err}", flush=True)
    pool.shutdown()
    print(f"compiled {len(built)}/{len(jobs)} TVM modules at {time.time() - started:.0f} s", flush=True)

    # Timing, GPU otherwise idle.
    for (n, b), runs in torch_runs.items():
        for variant, fn in runs.items():
            emit({"network": n, "batch": b, "sparsity": sparsities[0], "variant": variant,
                  "latency_ms": median_time(fn, "cuda", warmup=5, repeats=30) * 1e3})
    for (n, b, s, variant, _, _), path, compile_s in built:
        module = escoin_tvm.load(path)
        row = {"network": n, "batch": b, "sparsity": s, "variant": variant,
               "latency_ms": module.time(number=20, repeat=5) * 1e3, "compile_s": compile_s,
               "escoin_layers": sum(l["kernel"] == "escoin" for l in module.layers),
               "convs": len(module.layers)}
        if (n, b, s) in references:
            x = example(b).half() if variant == "escoin_fp16" else example(b)
            row["rel_err"] = relative_error(module(x.cuda()).float().cpu().numpy(), references[n, b, s])
        emit(row)
        os.remove(path)
    for n, b in measured:
        if args.deadline and time.time() - started > args.deadline:
            print(f"deadline: skipping measured dispatch of {n} b{b}", flush=True)
            continue
        start = time.time()
        compiled = escoin_tvm.compile(pruned_model(n, sparsities[0]), (example(b),), target="cuda",
                                      dispatch_by="measure", sparsity_threshold=0.0)
        row = {"network": n, "batch": b, "sparsity": sparsities[0], "variant": "escoin_measured",
               "latency_ms": compiled.time(number=20, repeat=5) * 1e3,
               "compile_s": time.time() - start, "layers": compiled.layers,
               "escoin_layers": sum(l["kernel"] == "escoin" for l in compiled.layers),
               "convs": len(compiled.layers)}
        if (n, b, sparsities[0]) in references:
            row["rel_err"] = relative_error(compiled(example(b).numpy()),
                                            references[n, b, sparsities[0]])
        emit(row)
    print(f"wrote {out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
