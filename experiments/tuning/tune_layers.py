"""Tuning the Escoin template on the benchmark layers: tuned vs untuned schedules.

For each layer and batch (sparsity 0.9, the layer benchmark's random pruned weights), runs a
MetaSchedule tuning job (escoin_tvm.tuning.tune_tasks: evolutionary search, XGBoost cost model)
into one log (each trial timed from a CUDA graph: ``tuning.evaluator``), then times on the GPU
the way bench_layers.py does (``timing.graph_time``: 20 calls in a CUDA graph, median of 50
replays):
  - default: the heuristic default config (what an unknown shape gets),
  - pretuned: the config shipped in schedules/ (the earlier grid sweep), if any,
  - tuned: the best record of the log,
checks the tuned kernel against cuDNN fp32 (TF32 off), and writes one JSON line per task with
the best-so-far curve over the trials (to find the trials needed to get within 5% of the best).

With ``--merge schedules/pretuned-sm_90.json`` it also writes ``<out>/pretuned-<arch>.json``: that
table with the tuned knobs of every layer whose tuned kernel beat the table's config timed in
the same run by more than 2% (the format of schedules/, for shipping tuning results as the
untuned defaults; merge_tuned.py does the same from the JSON lines of earlier runs).

Usage: python -m experiments.tuning.tune_layers --trials 64 --log tuning_logs/layers-H100 \
           --out experiments/results [--deadline 480] [--batches 1,16] [--layers a,b] [--merge T]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


from experiments.benchmarks.layers import pruned_weight
from experiments.common import RESULTS, environment, gpu_short_name, result_path
from experiments.benchmarks.layers import LAYER_SETS
from experiments.tuning.merge_tuned import winning_records


def kernel_seconds(kernel, x) -> float:
    """The kernel timed as bench_layers.py times it, on the torch tensor ``x``."""
    import tvm

    from escoin_tvm.kernels.conv2d.operator import kernel_input_shape
    from escoin_tvm.support.timing import graph_time

    constants = [tvm.runtime.tensor(a, kernel.device) for a in kernel.host_constants]
    data = tvm.runtime.from_dlpack(x.reshape(kernel_input_shape(kernel.spec)))
    out = tvm.runtime.empty(kernel.spec.output_shape, "float32", kernel.device)
    return graph_time(lambda: kernel.executable.mod["main"](data, *constants, out),
                      tvm_stream=True)


def tune_one(task, log, target, trials: int, trials_per_iter: int):
    """Tunes ``task`` into ``log``: (the job's result, its seconds, the mean run time of each
    record it appended in trial order, the log's best (config, record) for the task or None)."""
    from escoin_tvm.tuning import tune_tasks
    from escoin_tvm.tuning.log import RECORDS

    path = log.path / RECORDS
    before = len(path.read_text().splitlines()) if path.exists() else 0
    started = time.time()
    result = tune_tasks([task], log=log, target=target, trials=trials,
                        trials_per_iter=trials_per_iter)[0]
    seconds = time.time() - started
    curve = [float(np.mean(json.loads(line)[1][1]))
             for line in path.read_text().splitlines()[before:]]
    return result, seconds, curve, log.best(task.workload, target, task.decode)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--layers", default="")
    parser.add_argument("--layer-set", default="benchmark", choices=("benchmark", "unseen"),
                        help="the benchmark's 15 layers, or shapes from other networks")
    parser.add_argument("--log", default="tuning_logs/layers")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--deadline", type=float, default=0, help="stop starting tasks after "
                        "this many seconds (0: no limit)")
    parser.add_argument("--merge", default="", help="a pre-tuned table to merge the tuned knobs "
                        "into (see above)")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import escoin_tvm
    from escoin_tvm.kernels.conv2d.operator import Epilogue
    from escoin_tvm.kernels import knob_table
    from escoin_tvm.kernels.conv2d import knobs as conv_knobs
    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config
    from escoin_tvm.kernels.conv_spec import Conv2dSpec
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.kernels.conv2d.tuning_space import Task
    from escoin_tvm.tuning import TuningLog
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    torch.backends.cudnn.allow_tf32 = False
    target = resolve_target("cuda")
    env = environment()
    log = TuningLog(args.log, create=True)
    out = result_path("tuning", gpu=gpu_short_name(env["gpu"]), out=args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.layers.split(",")))
    started = time.time()
    tuned_records = []
    with out.open("w") as sink:
        sink.write(json.dumps({"environment": env, "trials": args.trials,
                               "sparsity": args.sparsity}) + "\n")
        cases = [(batch, seed, layer) for batch in map(int, args.batches.split(","))
                 for seed, layer in enumerate(LAYER_SETS[args.layer_set])
                 if not wanted or layer[0] in wanted]
        for batch, seed, (name, chw, wshape, stride, pad, groups) in cases:
            if args.deadline and time.time() - started > args.deadline:
                print(f"deadline reached, skipping {name} b{batch}")
                continue
            dense = pruned_weight(wshape, args.sparsity, seed)
            spec = Conv2dSpec.create((batch, *chw), wshape, stride=stride, padding=pad,
                                     groups=groups)
            task = Task(spec, Epilogue(), EscoinWeight.from_dense(dense, spec), target,
                        [f"{name}_b{batch}"])
            result, tuning_s, curve, tuned = tune_one(task, log, target, args.trials,
                                                      args.trials_per_iter)
            configs = {"default": (default_gpu_config(spec), False),
                       "pretuned": (conv_knobs.lookup(spec, "sm_90"), False),
                       "tuned": (tuned[0] if tuned else None, True)}
            x = torch.randn(batch, *chw, device="cuda")
            reference = F.conv2d(x, torch.from_numpy(dense).cuda(), stride=stride,
                                 padding=pad, groups=groups)
            row = {"layer": name, "batch": batch, "sparsity": args.sparsity,
                   "trials": result.trials, "new_trials": result.new_trials,
                   "tuning_s": tuning_s, "curve_s": curve, "configs": {}}
            for label, (config, is_tuned) in configs.items():
                if config is None:
                    continue
                kernel = escoin_tvm.build_sparse_conv2d(
                    dense, (batch, *chw), stride=stride, padding=pad, groups=groups,
                    target=target, config=config, tuned=is_tuned)
                row[f"{label}_us"] = kernel_seconds(kernel, x) * 1e6
                row["configs"][label] = dict(vars(kernel.config))
                err = float((kernel(x) - reference).abs().max() / reference.abs().max())
                row[f"{label}_rel_err"] = err
            finite = [t for t in curve if t < 1e9]
            if finite:
                best = min(finite)
                running = np.minimum.accumulate([t if t < 1e9 else np.inf for t in curve])
                row["trials_to_5pct"] = int(np.argmax(running <= best * 1.05)) + 1
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            tuned_records += winning_records([dict(row, run=out.name)])
            print(f"{name} b{batch}: default {row.get('default_us', 0):.1f} us, pretuned "
                  f"{row.get('pretuned_us', float('nan')):.1f} us, tuned "
                  f"{row.get('tuned_us', float('nan')):.1f} us ({result.trials} trials, "
                  f"{tuning_s:.0f} s, within 5% after {row.get('trials_to_5pct')}), "
                  f"err {row.get('tuned_rel_err', float('nan')):.1e}", flush=True)
    print(f"wrote {out}")
    if args.merge:
        arch = str(target.attrs.get("arch", "sm_90"))
        knob_table.write_table(out.parent / f"pretuned-{arch}.json", {conv_knobs.SECTION: conv_knobs.merge(tuned_records, args.merge, replace=True)}, arch=arch,
                             gpu=env["gpu"],
                             sparsity=args.sparsity, source="experiments/tuning/tune_layers.py (merged)",
                             date=env["date"])


if __name__ == "__main__":
    main()
