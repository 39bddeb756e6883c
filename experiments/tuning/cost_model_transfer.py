"""How well the tuning job's XGBoost cost model, trained on the other kernels' records, ranks a
kernel it has not seen (leave one kernel out), on real tuning logs; against a random ranking.

For each kernel (workload) of the logs: a fresh model trained on the records of every other
layer (the same layer at another batch is left out too), then asked to rank this kernel's
measured candidates. Reported per kernel: the Spearman
correlation of predicted score and measured speed, and how far from the kernel's best measured
time the model's top-ranked candidate is (random: the median candidate). No GPU needed: the
measurements are the logs'.

Usage: python -m experiments.tuning.cost_model_transfer tuning_logs/layers-H100 [more logs] \
           [--target '{"kind": "cuda", "arch": "sm_90"}'] [--out experiments/results/X.txt]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np



def kernel_key(mod) -> tuple:
    """The kernel's buffer shapes (batch first)."""
    from tvm.s_tir import meta_schedule as ms

    return tuple(tuple(int(d) for d in info.shape)
                 for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


def same_layer(a: tuple, b: tuple) -> bool:
    """Same input and output shapes but for the batch (the benchmark prunes a layer's weights
    alike at every batch)."""
    return a[0][1:] == b[0][1:] and a[-1][1:] == b[-1][1:]


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--target", default='{"kind": "cuda", "arch": "sm_90"}')
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.tuning import TuningLog
    from escoin_tvm.tuning.context import tune_context
    from escoin_tvm.tuning.cost_model import logged_samples, new_model

    target = resolve_target(json.loads(args.target))
    samples = {}  # layer key: (workload module, candidates, results)
    for log in args.logs:
        found, _skipped = logged_samples(TuningLog(log), target)
        for workload, (candidates, results) in found.items():
            key = kernel_key(workload.mod)
            mod, c, r = samples.get(key, (workload.mod, [], []))
            samples[key] = (mod, c + candidates, r + results)  # one kernel in several logs
    contexts = {k: tune_context(v[0], target) for k, v in samples.items()}
    lines, rhos, gaps, random_gaps = [], [], [], []
    for held_out, (_mod, candidates, results) in samples.items():
        seconds = np.array([np.mean([float(t) for t in r.run_secs]) for r in results])
        ok = seconds < 1e9
        if ok.sum() < 4:
            continue
        model = new_model(warmup=0)
        for other, (_m, c, r) in samples.items():
            if not same_layer(other, held_out):  # the layer at another batch is left out too
                model.update(contexts[other], c, r)
        score = model.predict(contexts[held_out], candidates)
        speed = np.where(ok, 1 / seconds, 0)
        rho = spearman(score[ok], speed[ok])
        best = seconds[ok].min()
        top = seconds[int(np.argmax(np.where(ok, score, -np.inf)))] / best
        median = float(np.median(seconds[ok])) / best
        rhos.append(rho)
        gaps.append(top)
        random_gaps.append(median)
        lines.append(f"{'x'.join(map(str, held_out[0]))} -> {'x'.join(map(str, held_out[-1]))}: "
                     f"{ok.sum():3d} candidates, Spearman "
                     f"{rho:+.2f}, model's top pick {top:.2f}x the best (median candidate "
                     f"{median:.2f}x)")
    lines.append(f"\n{len(rhos)} kernels: median Spearman {np.median(rhos):+.2f} (random: 0); the "
                 f"model's top pick is the best or within 5% of it on {sum(g <= 1.05 for g in gaps)}"
                 f"/{len(gaps)} kernels, geomean {np.exp(np.mean(np.log(gaps))):.2f}x the best "
                 f"(median candidate: {np.exp(np.mean(np.log(random_gaps))):.2f}x)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"# {' '.join(sys.argv)}\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
