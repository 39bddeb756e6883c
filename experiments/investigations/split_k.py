"""Are the batch-1 kernels latency-bound on their serial walk of the non-zeros? Times the
shipped knobs of each benchmark layer with each row's non-zeros split over 1, 2, 4, 8 thread
blocks (``schedule_gpu(split_k=...)``: rfactor, plus a second kernel that sums the partials).

At batch 1 a 14x14 layer with 256 output channels has about 50K outputs, so about 12 warps per
SM of an H100, each walking ~270 non-zeros in chunks whose loads wait on L2 one chunk at a time.

Usage (GPU): python -m experiments.investigations.split_k [--batch 1] [--layers a,b]
Timing as bench_layers.py (CUDA graph of 20 calls, median of 50 replays / 20).
"""
from __future__ import annotations

import argparse


from experiments.benchmarks.layers import pruned_weight
from escoin_tvm.support.timing import graph_time
from experiments.benchmarks.layers import LAYERS


def build(spec, weight, config, split):
    import tvm

    from escoin_tvm.kernels.conv2d.kernel import scheduled_module
    from escoin_tvm.kernels.conv2d.operator import Epilogue
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    mod, (offsets, values), _ = scheduled_module(spec, EscoinWeight.from_dense(weight, spec),
                                                 Epilogue(), target, config, split_k=split)
    return tvm.compile(mod, target=target), offsets, values


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--splits", default="1,2,4,8")
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    import tvm

    from escoin_tvm.kernels.conv2d.knobs import untuned_config
    from escoin_tvm.kernels.conv2d.operator import kernel_input_shape
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    torch.backends.cudnn.allow_tf32 = False
    dev = tvm.cuda(0)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    splits = [int(s) for s in args.splits.split(",")]
    print(f"{'layer':22s} b{args.batch}  " + "  ".join(f"split {s:d}" for s in splits) + "  (us)")
    for seed, (name, chw, wshape, stride, pad, groups) in enumerate(LAYERS):
        if args.layers and name not in args.layers.split(","):
            continue
        weight = pruned_weight(wshape, args.sparsity, seed)
        spec = Conv2dSpec.create((args.batch, *chw), wshape, stride=stride, padding=pad,
                                 groups=groups)
        config = untuned_config(spec, target)
        x = torch.randn(args.batch, *chw, device="cuda")
        ref = F.conv2d(x, torch.from_numpy(weight).cuda(), None, stride, pad, 1, groups)
        xt = tvm.runtime.from_dlpack(x.reshape(kernel_input_shape(spec)))
        times = []
        for split in splits:
            exe, offsets, values = build(spec, weight, config, split)
            out = tvm.runtime.empty(spec.output_shape, "float32", dev)
            consts = [tvm.runtime.tensor(offsets, dev), tvm.runtime.tensor(values, dev)]
            t = graph_time(lambda: exe["main"](xt, *consts, out), tvm_stream=True)
            torch.cuda.synchronize()
            err = float((torch.from_dlpack(out) - ref).abs().max() / ref.abs().max())
            if err > 1e-4:
                raise SystemExit(f"WRONG RESULT {name} split {split}: max rel err {err:.2e}")
            times.append(t * 1e6)
        print(f"{name:22s}     " + "  ".join(f"{t:7.1f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
