"""What the backend's whole-graph check does to the compiled model, under CUDA graphs
(``mode="reduce-overhead"``): one network, batch and precision compiled three ways in one
process, timed alternately as ``bench_backend`` times them:
  dense     torch.compile(model, mode="reduce-overhead")
  layers    backend="escoin", options whole_graph=False: the layers measured one by one
  checked   backend="escoin", the default: the layers measured, then the graph as a whole

Usage: python -m experiments.benchmarks.bench_whole_graph [--network tv:densenet121]
    [--batch 1] [--sparsity 0.9] [--precision tf32]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

from experiments.benchmarks.bench_backend import prepared, time_compiled
from experiments.benchmarks.bench_networks import relative_error
from experiments.common import environment, gpu_short_name, result_path, RESULTS

VARIANTS = {
    "dense": {},
    "layers": {"backend": "escoin",
               "options": {"mode": "reduce-overhead", "whole_graph": False}},
    "checked": {"backend": "escoin", "options": {"mode": "reduce-overhead"}},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="tv:densenet121")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sparsity", default="0.9")
    parser.add_argument("--precision", default="tf32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    import torch

    from escoin_tvm.torch_compile import backend as escoin_backend

    os.environ.setdefault("ESCOIN_TVM_CACHE_DIR", tempfile.mkdtemp(prefix="escoin-cache-"))
    torch._dynamo.config.recompile_limit = 256
    model, x = prepared(args.network, args.batch, args.sparsity, args.precision)
    with torch.no_grad():
        reference = model(x).float().cpu().numpy()
    row = {"network": args.network, "batch": args.batch, "sparsity": args.sparsity,
           "precision": args.precision}
    compiled = {}
    for name, kwargs in VARIANTS.items():
        reports = len(escoin_backend.REPORTS)
        start = time.time()
        mode = {} if "options" in kwargs else {"mode": "reduce-overhead"}
        fn = torch.compile(copy.deepcopy(model), **mode, **kwargs)
        with torch.no_grad():
            for _ in range(3):
                out = fn(x)
        row[f"{name}_rel_err"] = relative_error(out.float().cpu().numpy(), reference)
        row[f"{name}_compile_s"] = time.time() - start
        graphs = escoin_backend.REPORTS[reports:]
        row[f"{name}_escoin_layers"] = sum(d.kernel != "dense" for g in graphs for d in g.layers)
        row[f"{name}_whole_graph"] = [g.whole_graph for g in graphs]
        compiled[name] = fn
    with torch.no_grad():  # a few calls each after all compiles: re-recordings and skips show
        for _ in range(3):
            for fn in compiled.values():
                fn(x)
    row["cudagraph_skips"] = dict(torch._dynamo.utils.counters["inductor"])
    times = time_compiled(compiled, x, args.rounds)
    row.update({f"{name}_ms": t * 1e3 for name, t in times.items()})
    env = environment()
    out = result_path("whole-graph", gpu=gpu_short_name(env["gpu"]), out=args.out)
    out.write_text(json.dumps({"environment": env, "args": vars(args)}) + "\n"
                   + json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
