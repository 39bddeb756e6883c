"""Whether a torchvision model with random weights, pruned, stays within fp16's range: under
torchvision's own initialisation and under the He initialisation the benchmarks draw
(``bench_networks.torchvision_model``). For each: the largest convolution output and the
network's output in float32, whether the fp16 output is finite, and its error against float32
(max abs difference over max abs reference). Runs on the CPU.

Usage: python -m experiments.investigations.fp16_range [--networks inception_v3,densenet121]
    [--sparsity 0.9]
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np

from experiments.benchmarks.bench_networks import example, relative_error, torchvision_model
from experiments.common import result_path


def measure(model, x) -> dict:
    import torch

    largest = []
    hooks = [m.register_forward_hook(lambda m, i, o: largest.append(float(o.abs().max())))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        out32 = model(x).double().numpy()
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        out16 = copy.deepcopy(model).half()(x.half()).double().numpy()
    finite = bool(np.isfinite(out16).all())
    return {"largest_conv_output": max(largest), "output_max": float(np.abs(out32).max()),
            "fp16_finite": finite,
            "fp16_rel_err": relative_error(out16, out32) if finite else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="inception_v3,densenet121,convnext_tiny")
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args(argv)
    from escoin_tvm import prune

    out = result_path("fp16-range", gpu="cpu")
    with out.open("w") as sink:
        for network in args.networks.split(","):
            for he_init in (False, True):
                model = prune.magnitude(torchvision_model(network, he_init), args.sparsity,
                                        layers="conv").eval()
                row = {"network": network, "init": "he" if he_init else "torchvision",
                       "sparsity": args.sparsity, **measure(model, example(1))}
                sink.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
