"""Which way of reading ``bench_backend``'s rounds tells two compiles of one graph apart least:
the estimator whose ratios between identical compiles stay closest to 1 is the one a speed-up can
be read from.

``bench_backend --control N`` compiles the dense model N more times; its control compiles are the
same graph as the first (inductor's FX-graph cache hands them the same code), so every ratio
between them is noise. For each result row that kept its rounds, this reads the ratios of the
first dense compile to each control under each estimator:
  median    ratio of the two medians over rounds (``bench_backend``'s ``*_ms``)
  paired    median over rounds of each round's ratio (``bench_backend.paired_ratio``)
  minimum   ratio of the two fastest rounds
each for single calls ("call") and back-to-back calls ("loop"), and writes per estimator their
range, the standard deviation of their logarithms and how many stray more than 3% from 1, and
the escoin graph's speed-up under each. Runs anywhere: it reads result files.

Usage: python -m experiments.investigations.timing_estimators
    experiments/results/backend-H100-...jsonl[,...] [--out experiments/results]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from experiments.benchmarks.bench_backend import paired_ratio, result_rows
from experiments.common import RESULTS, result_path

ESTIMATORS = {
    "median": lambda a, b: float(np.median(a) / np.median(b)),
    "paired": paired_ratio,
    "minimum": lambda a, b: float(np.min(a) / np.min(b)),
}
KINDS = ("call", "loop")
STRAY = 0.03  # a control ratio this far from 1 counts as a stray


def rows_with_controls(paths: str) -> list:
    """The result rows that kept their rounds and timed at least one control compile, each with
    the short name of the GPU its file was measured on (``bench_backend.result_rows``)."""
    return [row for row in result_rows(paths) if "dense_again" in row.get("rounds_ms", {})]


def controls(rows: list) -> dict:
    """{(estimator, kind): [dense / each control compile, over every row]}."""
    ratios = {(name, kind): [] for name in ESTIMATORS for kind in KINDS}
    for row in rows:
        rounds = row["rounds_ms"]
        again = [name for name in rounds if name.startswith("dense_again")]
        for (name, kind), found in ratios.items():
            found.extend(ESTIMATORS[name](rounds["dense"][kind], rounds[other][kind])
                         for other in again)
    return ratios


def spread(values: list) -> dict:
    logs = np.log(values)
    return {"n": len(values), "min": float(np.min(values)), "max": float(np.max(values)),
            "sd_log": float(np.std(logs)), "strays": int((np.abs(logs) > np.log1p(STRAY)).sum())}


def speedups(row: dict) -> dict:
    """The escoin graph against the first dense compile under each estimator."""
    rounds = row["rounds_ms"]
    return {f"{name}_{kind}": ESTIMATORS[name](rounds["dense"][kind], rounds["escoin"][kind])
            for name in ESTIMATORS for kind in KINDS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", help="bench_backend result files, comma-separated")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    paths = args.paths.split(",")
    rows = rows_with_controls(args.paths)
    if not rows:
        raise SystemExit(f"no row of {args.paths} kept its rounds with a control compile "
                         "(bench_backend --control)")
    gpus = "+".join(sorted({row["gpu"] for row in rows}))
    out = result_path("timing-estimators", gpu=gpus, out=args.out)
    with out.open("w") as sink:
        sink.write(json.dumps({"inputs": [Path(p).name for p in paths], "stray": STRAY}) + "\n")
        for (name, kind), values in controls(rows).items():
            summary = {"estimator": name, "kind": kind, **spread(values)}
            sink.write(json.dumps(summary) + "\n")
            print(f"{name:8s} {kind}: identical compiles {summary['min']:.3f}-"
                  f"{summary['max']:.3f}x, sd(log) {summary['sd_log']:.3f}, "
                  f"{summary['strays']}/{summary['n']} beyond {STRAY:.0%}")
        for row in rows:
            sink.write(json.dumps({key: row[key] for key in (
                "gpu", "network", "batch", "sparsity", "precision", "escoin_layers")}
                | speedups(row)) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
