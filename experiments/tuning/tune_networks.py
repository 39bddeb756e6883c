"""Tuning the Escoin kernels of whole pruned networks (the "tuned" variant of bench_networks).

For each network and batch (bench_networks' pruned models and inputs), extracts the tasks that
``escoin_tvm.compile`` would generate and tunes them into one log (escoin_tvm.tuning.tune_tasks:
MetaSchedule evolutionary search, XGBoost cost model), the heaviest kernels first (non-zeros x
output pixels), so that a deadline cuts the lightest. Writes one JSON line per task: trials,
tuning time, knobs, and the kernel timed the same way (time_evaluator, median of 5 x 100 runs)
with the schedule an untuned compile gives it (pre-tuned or default) and with the tuned one.
Then: ``bench_networks.py --tuning-log LOG`` times the tuned variant of the whole network.

Usage: python -m experiments.tuning.tune_networks --networks alexnet --batches 1 --trials 32 \
           --log tuning_logs/networks-H100 [--deadline 420]
"""
from __future__ import annotations

import argparse
import json
import time


from experiments.common import RESULTS, environment, gpu_short_name, result_path
from experiments.benchmarks.bench_networks import example, pruned_model


def work(task) -> int:
    """Multiply-adds of the task's kernel: its cost order."""
    spec = task.spec
    return task.weight.nnz * spec.batch * spec.out_h * spec.out_w


def kernel_seconds(task, target, tuned=None) -> float:
    """Median time of the task's kernel as the compiler builds it, untuned or with ``tuned`` =
    the config of a tuning record, on random data."""
    import numpy as np
    import tvm

    from escoin_tvm.kernels.conv2d.kernel import scheduled_module
    from escoin_tvm.kernels.conv2d.operator import kernel_input_shape

    mod, weight_arrays, _ = scheduled_module(task.spec, task.weight, task.epilogue, target,
                                             tuned, tuned is not None)
    lib, dev, rng = tvm.compile(mod, target=target).mod, tvm.cuda(0), np.random.default_rng(0)
    spec = task.spec
    arrays = [rng.standard_normal(kernel_input_shape(spec)), *weight_arrays]
    if task.epilogue.bias:
        arrays.append(rng.standard_normal(spec.out_channels))
    if task.epilogue.residual:
        arrays.append(rng.standard_normal(spec.output_shape))
    args = [tvm.runtime.tensor(a.astype(np.float32) if a.dtype == np.float64 else a, dev)
            for a in arrays] + [tvm.runtime.empty(spec.output_shape, "float32", dev)]
    timer = lib.time_evaluator("main", dev, number=100, repeat=5)
    return float(np.median(timer(*args).results))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="alexnet")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--sparsity", default="0.9")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--log", default="tuning_logs/networks")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--deadline", type=float, default=0, help="stop starting tasks after "
                        "this many seconds (0: no limit)")
    args = parser.parse_args(argv)

    from escoin_tvm.kernels.conv2d.knobs import schedule_source
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.tuning import TuningLog, tune_tasks
    from escoin_tvm.tuning.relax_integration import extract_tasks

    target = resolve_target("cuda")
    log = TuningLog(args.log, create=True)
    env = environment()
    out = result_path("tuning-networks", gpu=gpu_short_name(env["gpu"]), out=args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with out.open("w") as sink:
        sink.write(json.dumps({"environment": env, "trials": args.trials, "sparsity": args.sparsity,
                               "log": args.log}) + "\n")
        for network in args.networks.split(","):
            for batch in map(int, args.batches.split(",")):
                tasks = extract_tasks(pruned_model(network, args.sparsity), (example(batch),), target)
                for task in sorted(tasks, key=work, reverse=True):
                    if args.deadline and time.time() - started > args.deadline:
                        print(f"deadline reached, skipping {network} b{batch} {task.name}")
                        continue
                    t0 = time.time()
                    result = tune_tasks([task], log=log, target=target, trials=args.trials,
                                        trials_per_iter=args.trials_per_iter)[0]
                    row = {"network": network, "batch": batch, "sparsity": args.sparsity,
                           "task": task.name, "layers": task.layers, "macs": work(task),
                           "trials": result.trials, "new_trials": result.new_trials,
                           "best_us": result.best_seconds * 1e6 if result.best_seconds else None,
                           "tuning_s": time.time() - t0, "config": result.config,
                           "schedule_untuned": schedule_source(task.spec, target),
                           "untuned_us": kernel_seconds(task, target) * 1e6}
                    tuned = log.best(task.workload, target, task.decode)
                    if tuned is not None:
                        row["tuned_us"] = kernel_seconds(task, target, tuned[0]) * 1e6
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    print(json.dumps(row), flush=True)
    print(f"wrote {out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
