"""How a graph's Escoin kernels compile fastest: as one module, in parts in threads, or in
worker processes.

The torch.compile backend compiles a graph's candidate kernels together (``build_together``):
a CUDA compile has a fixed cost that one module for several kernels pays once. This times, for the first L convolutions of a network
(``escoin_tvm.models``, random weights pruned to 90%, one batch and dtype), the kernels'
scheduled TIR compiled
  joint       as one module in this process;
  threads     as P modules of about L/P kernels each, in P threads of this process;
  processes   as the same P modules, each compiled by one of P worker processes (spawned, the
              module passed as TVM's JSON), which leaves the CUDA binaries in a fresh disk cache
              (``cuda_cache``); then in this process again, each CUDA compile a cache hit: what a
              backend that farms its CUDA compiles out would pay, the pool's start included;
  shipped     as ``build_together.compile_kernels`` compiles them (what the backend does now:
              parts of up to ``PART_KERNELS`` kernels in parallel threads).
Making the kernels (scheduling) is timed apart, once; each stage gets a fresh cache folder (the
joint and thread stages an empty one, so they run the compiler). The kernels of the process
and shipped stages are then checked against cuDNN fp32 with TF32 off.

Usage: python -m experiments.investigations.parallel_compile [--network resnet50] [--batch 16]
    [--dtype float32] [--layers 0] [--workers 8] [--stages joint,threads,processes,shipped]
    [--out experiments/results]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from unittest import mock

from experiments.investigations.build_time import (add_layer_arguments, conv_layers,
                                                   max_error_against_cudnn, sparse_layer,
                                                   write_results)


def chunks(items, parts: int):
    """``items`` in about ``parts`` consecutive runs of nearly equal length."""
    from escoin_tvm.kernels.build_together import parts as runs

    return runs(items, -(-len(items) // max(1, parts)))


def compile_in_worker(module_json: str, target: str, cache: str) -> float:
    """Compiles a module in a worker process with the CUDA binary cache in ``cache``; seconds."""
    os.environ["ESCOIN_TVM_CACHE_DIR"] = cache
    import tvm

    from escoin_tvm.kernels.build_together import compile_module

    start = time.perf_counter()
    compile_module(tvm.ir.load_json(module_json), parse_target(target))
    return time.perf_counter() - start


def parse_target(text: str):
    from escoin_tvm.support.target import resolve_target

    return resolve_target(json.loads(text) if text.startswith("{") else text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_arguments(parser)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--target", default="cuda", help="'cuda' (the GPU's architecture) or a "
                        "TVM target JSON, for a dry run without a GPU")
    parser.add_argument("--stages", default="joint,threads,processes,shipped")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)

    import torch
    import tvm

    from escoin_tvm.kernels import build_together

    target = parse_target(args.target)
    on_gpu = torch.cuda.is_available() and args.target == "cuda"
    device = torch.device("cuda", torch.cuda.current_device() if on_gpu else 0)
    layers = conv_layers(args.network, args.batch, args.layers)

    def make_kernels():
        """The kernels of the layers, scheduled and not compiled."""
        made = []
        with mock.patch.object(build_together, "compile_kernels",
                               lambda kernels, on_compiled=None: made.extend(kernels)):
            with build_together.compile_together():
                for name, weight, shape, module in layers:
                    sparse_layer(name, weight, module, args.dtype, target).kernel(shape, device)
        return made

    def fresh_cache(label):
        folder = tempfile.mkdtemp(prefix=f"escoin-{label}-")
        os.environ["ESCOIN_TVM_CACHE_DIR"] = folder
        return folder

    def bind(kernels, executable, names):
        for kernel, name in zip(kernels, names):
            kernel.bind(executable, name)

    summary = {"kind": "summary", "network": args.network, "batch": args.batch,
               "dtype": args.dtype, "layers": len(layers), "workers": args.workers,
               "target": str(target)}
    start = time.perf_counter()
    make_kernels()
    summary["make_kernels_s"] = time.perf_counter() - start

    stages = args.stages.split(",")
    if "joint" in stages:
        fresh_cache("joint")
        kernels = make_kernels()
        start = time.perf_counter()
        build_together.compile_part(kernels)
        summary["joint_s"] = time.perf_counter() - start

    if "threads" in stages:
        fresh_cache("threads")
        groups = chunks(make_kernels(), args.workers)
        start = time.perf_counter()
        with ThreadPoolExecutor(len(groups)) as pool:
            list(pool.map(build_together.compile_part, groups))
        summary["threads_s"] = time.perf_counter() - start

    if "processes" in stages:
        cache = fresh_cache("processes")
        groups = chunks(make_kernels(), args.workers)
        modules = [build_together.joint_module(group) for group in groups]
        start = time.perf_counter()
        with ProcessPoolExecutor(len(groups),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            worker_s = list(pool.map(compile_in_worker, [tvm.ir.save_json(m) for m, _ in modules],
                                     [args.target] * len(modules), [cache] * len(modules)))
        summary["processes_workers_s"] = time.perf_counter() - start
        summary["processes_each_worker_s"] = worker_s
        start = time.perf_counter()
        for group, (mod, names) in zip(groups, modules):
            bind(group, build_together.compile_module(mod, target), names)
        summary["processes_main_s"] = time.perf_counter() - start
        summary["processes_s"] = summary["processes_workers_s"] + summary["processes_main_s"]
        if on_gpu:
            summary["processes_max_rel_error"] = max_error_against_cudnn(
                layers, [k for group in groups for k in group], device, args.dtype)

    if "shipped" in stages:
        fresh_cache("shipped")
        kernels = make_kernels()
        start = time.perf_counter()
        build_together.compile_kernels(kernels)
        summary["shipped_s"] = time.perf_counter() - start
        summary["shipped_parts"] = len(build_together.parts(kernels))
        if on_gpu:
            summary["shipped_max_rel_error"] = max_error_against_cudnn(layers, kernels, device,
                                                                       args.dtype)
    print(json.dumps(summary), flush=True)
    write_results("parallel-compile", [summary], args.out)


if __name__ == "__main__":
    main()
