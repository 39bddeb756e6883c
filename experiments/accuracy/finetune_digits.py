"""What the vector structure costs in accuracy, measured small: a CNN trained on scikit-learn's
digits (1,797 8x8 images that ship inside the package: no download), its convolutions pruned
per layer by magnitude (unstructured) or in vectors of 16 output channels (``prune.vectors``,
what the tensor-core kernels take), then fine-tuned with the zeros kept.

For each seed: the dense model is trained (Adam, ``--epochs``), then for each method and
sparsity a copy is pruned (``--min-params 300`` leaves the first convolution dense), its test
accuracy read before and after ``--finetune`` epochs of
training in which every step re-applies the pruning mask. CPU; about a minute.

Usage: python -m experiments.accuracy.finetune_digits [--seeds 0,1,2] [--sparsities 0.8,0.9,0.95]
       (needs scikit-learn: pip install scikit-learn)
Writes JSON lines to experiments/results/ and prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics

from experiments.common import environment, result_path


def data(seed: int):
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return (x[train], y[train]), (x[test], y[test])


def network():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16, 10))


def train(model, train_set, epochs: int, seed: int, masks=None, lr: float = 1e-3):
    import torch

    torch.manual_seed(seed)
    x, y = train_set
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for weight, mask in masks:
                        weight.mul_(mask)
    model.eval()
    return model


def accuracy(model, test_set) -> float:
    import torch

    x, y = test_set
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(argv=None):
    import torch

    from escoin_tvm import prune

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sparsities", default="0.8,0.9,0.95")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune", type=int, default=10)
    parser.add_argument("--min-params", type=int, default=0, help="leave convolutions with "
                        "fewer weights dense (300: the first, 1 -> 32 channels, as is usual)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    keep = args.min_params
    methods = {"unstructured": lambda m, s: prune.magnitude(m, s, min_params=keep),
               "vectors of 16": lambda m, s: prune.vectors(m, s, group=16, min_params=keep)}
    sparsities = [float(s) for s in args.sparsities.split(",")]
    path = result_path("accuracy-digits", gpu="cpu", out=args.out)
    rows = []
    with open(path, "w") as f:
        f.write(json.dumps({"environment": environment(), "args": vars(args)}) + "\n")
        for seed in (int(s) for s in args.seeds.split(",")):
            train_set, test_set = data(seed)
            torch.manual_seed(seed)
            dense = train(network(), train_set, args.epochs, seed)
            base = accuracy(dense, test_set)
            for sparsity in sparsities:
                for name, method in methods.items():
                    model = method(copy.deepcopy(dense), sparsity)
                    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
                    masks = [(m.weight, (m.weight != 0).float()) for m in convs]
                    zeros = sum(int((m.weight == 0).sum()) for m in convs) / \
                        sum(m.weight.numel() for m in convs)
                    pruned = accuracy(model, test_set)
                    tuned = accuracy(train(model, train_set, args.finetune, seed, masks,
                                           lr=3e-4), test_set)
                    row = {"seed": seed, "method": name, "sparsity": sparsity,
                           "conv_zeros": zeros, "dense": base, "pruned": pruned,
                           "finetuned": tuned}
                    f.write(json.dumps(row) + "\n")
                    rows.append(row)
                    print(row, flush=True)
    print("\n| sparsity | method | dense | pruned | fine-tuned | (test accuracy, mean over "
          "seeds; min-max) |")
    print("|---|---|---|---|---|---|")
    for sparsity in sparsities:
        for name in methods:
            picked = [r for r in rows if r["sparsity"] == sparsity and r["method"] == name]

            def cell(key):
                values = [r[key] for r in picked]
                return (f"{statistics.mean(values):.3f} ({min(values):.3f}-"
                        f"{max(values):.3f})")
            print(f"| {sparsity} | {name} | {cell('dense')} | {cell('pruned')} | "
                  f"{cell('finetuned')} | |")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
