"""Does TVM's CUDA-graph rewrite (PassContext relax.backend.use_cuda_graph) cut escoin-tvm's
whole-network latency? Times the same compiled networks with and without it, checks the outputs.
Usage: python experiments/debug/cuda_graph_trial.py [--out DIR]"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_networks import example, pruned_model, reference_output, relative_error  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--cases", default="resnet50:1,resnet50:16,googlenet:1,alexnet:16")
    args = parser.parse_args()
    import torch
    import tvm

    import escoin_tvm

    path = Path(args.out) / f"cuda-graph-{torch.cuda.get_device_name(0).split()[1]}-" \
                            f"{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    for case in args.cases.split(","):
        network, batch = case.split(":")
        batch = int(batch)
        ref = reference_output(network, batch, "0.9")
        row = {"network": network, "batch": batch, "sparsity": 0.9}
        for graph in (False, True):
            with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": graph}):
                compiled = escoin_tvm.compile(pruned_model(network, "0.9"), (example(batch),),
                                              target="cuda")
            err = relative_error(compiled(example(batch).numpy()), ref)
            row["graph" if graph else "plain"] = {"latency_ms": compiled.time(20, 5) * 1e3,
                                                  "rel_err": err}
        print(json.dumps(row), flush=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
