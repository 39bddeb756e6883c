"""Where the escoin torch.compile backend's compile time goes, layer by layer, on a GPU.

For each convolution of a network (``escoin_tvm.models``: torchvision's architectures, random
weights pruned to 90%) at one batch and dtype, the backend's own steps are timed: building the
kernel (TVM's passes, of which the CUDA compiler's share is measured apart by wrapping TVM's
compile callback), the first call (module load and constants upload), and measured dispatch (``backend._time_layers``: the
kernel and PyTorch's convolution, each in a CUDA graph). Then the same builds again with the
CUDA compiler TVM_CUDA_COMPILE_MODE names (nvrtc is TVM's default, nvcc the other), the
default builds in a thread pool, to see whether any of them parallelise, and all the builds in
one ``compile_together`` block (one module, one CUDA compile: what the backend does). The CUDA binary cache
is off throughout (``cuda_cache.py``): every build runs the compiler.

Usage: python -m experiments.investigations.build_time [--network resnet50] [--batch 16]
    [--dtype float32] [--layers 0] [--threads 8] [--out experiments/results]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from experiments.benchmarks.layers import conv_inputs
from experiments.common import environment, result_path


def conv_layers(network: str, batch: int, limit: int):
    """[(name, weight OIHW numpy pruned to 90%, input shape, conv module)] in graph order."""
    import torch

    from escoin_tvm import models
    from escoin_tvm.prune import prune_array

    model = models.build(network).eval()
    shapes = {name: shape for name, (shape, _) in
              conv_inputs(model, torch.randn(batch, 3, 224, 224)).items()}
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups == 1:
            weight = prune_array(module.weight.detach().numpy(), 0.9)
            layers.append((name, weight, shapes[name], module))
    return layers[:limit] if limit else layers


def add_layer_arguments(parser) -> None:
    """The options that pick the layers: network, batch, dtype, how many."""
    parser.add_argument("--network", default="resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--layers", type=int, default=0, help="first N convolutions (0: all)")


def sparse_layer(name, weight, module, dtype: str, target):
    """The backend's SparseLayer of a convolution (no bias, no ReLU), its weight in ``dtype``."""
    from escoin_tvm.support import dtypes
    from escoin_tvm.torch_compile import ops

    return ops.SparseLayer(name, weight.astype(dtypes.numpy_dtype(dtype)), None, module.stride,
                           (module.padding[0], module.padding[1]) * 2, module.dilation, 1,
                           False, target)


def max_error_against_cudnn(layers, kernels, device, dtype: str) -> float:
    """The largest relative error (max abs difference over max abs reference) of the kernels
    against cuDNN fp32 with TF32 off, each on random input of its layer's shape."""
    import torch

    from escoin_tvm.support import dtypes

    torch.backends.cudnn.allow_tf32 = False  # the reference in fp32
    errors = []
    for (_, weight, shape, module), kernel in zip(layers, kernels):
        x = torch.randn(shape, device=device, dtype=dtypes.torch_dtype(dtype))
        ref = torch.nn.functional.conv2d(x.float(), torch.from_numpy(weight).to(device).float(),
                                         None, module.stride, module.padding, module.dilation)
        errors.append(float((kernel.run_torch(x).float() - ref).abs().max() / ref.abs().max()))
    return max(errors)


def write_results(kind: str, rows, out: str) -> None:
    """``rows`` as a JSON-lines result file ``<out>/<kind>-<gpu>-<time>.jsonl``, after a line of
    the environment; prints where."""
    path = result_path(kind, out=out)
    with open(path, "w") as f:
        f.write(json.dumps({"kind": "environment", **environment()}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print("wrote", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_arguments(parser)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    os.environ["ESCOIN_TVM_CACHE_DIR"] = "off"  # every build runs the CUDA compiler

    import torch
    import tvm.support.nvcc as nvcc

    from escoin_tvm.support import dtypes
    from escoin_tvm.kernels.build_together import compile_together
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.torch_compile import backend

    cuda_seconds = []
    original = nvcc.compile_cuda

    def timed_compile(*a, **k):
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            cuda_seconds.append(time.perf_counter() - start)

    nvcc.compile_cuda = timed_compile
    target = resolve_target("cuda")
    device = torch.device("cuda", torch.cuda.current_device())
    dtype = dtypes.torch_dtype(args.dtype)

    def layer_of(name, weight, module):
        return sparse_layer(name, weight, module, args.dtype, target)

    layers = conv_layers(args.network, args.batch, args.layers)
    rows = []
    for name, weight, shape, module in layers:
        layer = layer_of(name, weight, module)
        cuda_seconds.clear()
        start = time.perf_counter()
        kernel = layer.kernel(shape, device)
        build = time.perf_counter() - start
        x = torch.randn(shape, device=device, dtype=dtype)
        start = time.perf_counter()
        kernel.run_torch(x)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        start = time.perf_counter()
        (escoin_s,), dense_s = backend._time_layers([layer], shape, device)
        timing = time.perf_counter() - start
        rows.append({"layer": name, "shape": shape, "build_s": build,
                     "cuda_compile_s": sum(cuda_seconds), "cuda_compiles": len(cuda_seconds),
                     "first_call_s": first, "time_both_s": timing,
                     "escoin_us": escoin_s * 1e6, "dense_us": dense_s * 1e6})
        print(json.dumps(rows[-1]), flush=True)

    summary = {"kind": "summary", "network": args.network, "batch": args.batch,
               "dtype": args.dtype, "layers": len(rows),
               **{key: sum(r[key] for r in rows)
                  for key in ("build_s", "cuda_compile_s", "first_call_s", "time_both_s")}}
    default_mode = os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc")
    other = "nvcc" if default_mode == "nvrtc" else "nvrtc"
    os.environ["TVM_CUDA_COMPILE_MODE"] = other
    cuda_seconds.clear()
    start = time.perf_counter()
    for name, weight, shape, module in layers:
        layer_of(name, weight, module).kernel(shape, device)
    summary[f"build_{other}_s"] = time.perf_counter() - start
    summary[f"cuda_compile_{other}_s"] = sum(cuda_seconds)
    os.environ["TVM_CUDA_COMPILE_MODE"] = default_mode
    start = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(lambda l: layer_of(l[0], l[1], l[3]).kernel(l[2], device), layers))
    summary[f"build_{args.threads}_threads_s"] = time.perf_counter() - start
    cuda_seconds.clear()
    start = time.perf_counter()
    with compile_together():
        together = [layer_of(name, weight, module).kernel(shape, device)
                    for name, weight, shape, module in layers]
    summary["build_together_s"] = time.perf_counter() - start
    summary["cuda_compile_together_s"] = sum(cuda_seconds)
    summary["together_max_rel_error"] = max_error_against_cudnn(layers, together, device,
                                                                args.dtype)
    print(json.dumps(summary), flush=True)
    write_results("build-time", rows + [summary], args.out)


if __name__ == "__main__":
    main()
