"""What a call costs beyond its kernel: the one-kernel API and the torch.compile backend's
operator at batch 1, against the kernel's own time and cuDNN's call.

For a few benchmark layers at 90% (batch 1, fp32):
  kernel_us        the kernel alone (20 calls in one CUDA graph, per call)
  call_us          ``kernel(x)`` on a CUDA torch tensor, called back to back from Python (CUDA
                   events around 200 calls, per call, the median of 5 such loops): what a
                   user's loop pays
  op_us            ``torch.ops.escoin.sparse_conv2d`` (the backend's operator), the same way
  cudnn_call_us    ``torch.nn.functional.conv2d`` (TF32) called the same way, for scale
  overhead_us      call_us - kernel_us
and where a call's host time goes, the same way:
  bare_us          the compiled function itself on torch tensors, output given (tvm_ffi's
                   argument conversion, its stream lookup and the launch)
  stream_ctx_us    the same inside ``tvm_ffi.use_torch_stream()`` (what the call used to add)
  torch_launch_us  ``torch.add(x, 1, out=y)``: the cheapest PyTorch launch on this host
The outputs of the call and the operator are checked against PyTorch (TF32 off).

Usage: python -m experiments.benchmarks.bench_calls [--layers a,b]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from experiments.common import RESULTS, environment, result_path

DEFAULT_LAYERS = "googlenet_4a_5x5,resnet50_layer4_3x3,alexnet_conv3,resnet50_layer2_3x3"


def loop_time(fn) -> float:
    """Seconds per call of ``fn`` called back to back (``timing.call_time``: CUDA events around
    loops of 200 calls, the median of 5 loops)."""
    from escoin_tvm.support.timing import call_time

    return call_time(fn, "cuda", calls=200, repeats=5)


def measure(name, chw, wshape, stride, padding, groups, seed):
    import torch
    import tvm_ffi

    from escoin_tvm import build_sparse_conv2d
    from escoin_tvm.support.timing import graph_time
    from escoin_tvm.torch_compile import ops
    from experiments.benchmarks.layers import pruned_weight

    weight = pruned_weight(wshape, 0.9, seed)
    kernel = build_sparse_conv2d(weight, (1, *chw), stride=stride, padding=padding,
                                 groups=groups, target="cuda", device="cuda")
    x = torch.randn(1, *chw, device="cuda")
    w = torch.from_numpy(weight).cuda()
    torch.backends.cudnn.allow_tf32 = False
    ref = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    out = kernel(x)
    layer = ops.register(ops.SparseLayer(name, weight, None, (stride, stride), (padding,) * 4,
                                         (1, 1), groups, False, kernel.target))
    op_out = torch.ops.escoin.sparse_conv2d(x, layer)
    error = max(float((o - ref).abs().max() / ref.abs().max()) for o in (out, op_out))
    torch.backends.cudnn.allow_tf32 = True
    constants, given, y = kernel._torch_constants_on(x.device), torch.empty_like(out), x.clone()
    data = x.view(kernel.data_shape)

    def in_stream_context():
        with tvm_ffi.use_torch_stream():
            kernel.function(data, *constants, given)
    row = {
        "layer": name, "batch": 1, "sparsity": 0.9, "dtype": "float32",
        "kernel_us": graph_time(lambda: kernel(x), tvm_stream=True) * 1e6,
        "call_us": loop_time(lambda: kernel(x)) * 1e6,
        "op_us": loop_time(lambda: torch.ops.escoin.sparse_conv2d(x, layer)) * 1e6,
        "cudnn_call_us": loop_time(lambda: torch.nn.functional.conv2d(
            x, w, stride=stride, padding=padding, groups=groups)) * 1e6,
        "bare_us": loop_time(lambda: kernel.function(data, *constants, given)) * 1e6,
        "stream_ctx_us": loop_time(in_stream_context) * 1e6,
        "torch_launch_us": loop_time(lambda: torch.add(x, 1, out=y)) * 1e6,
        "max_rel_error": error,
    }
    row["overhead_us"] = row["call_us"] - row["kernel_us"]
    return row


def main(argv=None):
    from experiments.benchmarks.layers import LAYERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=DEFAULT_LAYERS)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    wanted = args.layers.split(",")
    path = result_path("calls", out=args.out)
    with open(path, "w") as f:
        f.write(json.dumps(environment()) + "\n")
        for seed, (name, chw, wshape, stride, padding, groups) in enumerate(LAYERS):
            if name in wanted:
                row = measure(name, chw, wshape, stride, padding, groups, seed)
                f.write(json.dumps(row) + "\n")
                print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()), flush=True)
    with open(path) as f:
        overheads = [json.loads(line)["overhead_us"] for line in f.readlines()[1:]]
    print(f"median overhead: {np.median(overheads):.2f} us")
    print(path)


if __name__ == "__main__":
    main()
