"""Does TVM's CUDA-graph rewrite (PassContext relax.backend.use_cuda_graph) cut escoin-tvm's
whole-network latency? Times the same compiled networks with and without it, checks the outputs.
Usage: python -m experiments.investigations.cuda_graph_trial [--out DIR]"""
import argparse
import json



from experiments.benchmarks.bench_networks import (example, pruned_model, reference_output,
                                                   relative_error)
from experiments.common import RESULTS, result_path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--cases", default="resnet50:1,resnet50:16,googlenet:1,alexnet:16")
    args = parser.parse_args()
    import tvm

    import escoin_tvm

    path = result_path("cuda-graph", out=args.out)
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
