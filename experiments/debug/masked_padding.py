"""Padding by masked reads instead of a padded copy: worth it? For each benchmark layer (all have
padding) times the shipped knobs two ways: the default kernel (a first kernel writes the
zero-padded input, the convolution reads it) and a masked one (``scheduled_module(masked=True)``:
the convolution reads the unpadded input and checks each tap's row and column against its
bounds; one kernel, no copy, a few integer instructions per non-zero and row).

Usage (GPU): python experiments/debug/masked_padding.py [--batches 1,16] [--layers a,b]
Timing as bench_layers.py (CUDA graph of 20 calls, median of 50 replays / 20); every output
checked against cuDNN fp32.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from bench_layers import graph_time, pruned_weight  # noqa: E402
from layers import LAYERS  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    import tvm

    from escoin_tvm.kernel import scheduled_module
    from escoin_tvm.operator import Epilogue, kernel_input_shape
    from escoin_tvm.spec import Conv2dSpec
    from escoin_tvm.weight_format import EscoinWeight

    torch.backends.cudnn.allow_tf32 = False
    dev = tvm.cuda(0)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    print(f"# {torch.cuda.get_device_name()}, sparsity {args.sparsity}, shipped knobs, us")
    print(f"{'layer':22s} batch  padded  masked  speedup")
    for batch in map(int, args.batches.split(",")):
        for seed, (name, chw, wshape, stride, pad, groups) in enumerate(LAYERS):
            if args.layers and name not in args.layers.split(","):
                continue
            weight = pruned_weight(wshape, args.sparsity, seed)
            spec = Conv2dSpec.create((batch, *chw), wshape, stride=stride, padding=pad,
                                     groups=groups)
            escoin_weight = EscoinWeight.from_dense(weight, spec)
            x = torch.randn(batch, *chw, device="cuda")
            ref = F.conv2d(x, torch.from_numpy(weight).cuda(), None, stride, pad, 1, groups)
            times = []
            for masked in (False, True):
                mod, arrays, _ = scheduled_module(spec, escoin_weight, Epilogue(), target,
                                                  masked=masked)
                exe = tvm.compile(mod, target=target)
                xt = tvm.runtime.from_dlpack(x.reshape(kernel_input_shape(spec, masked)))
                out = tvm.runtime.empty(spec.output_shape, "float32", dev)
                consts = [tvm.runtime.tensor(a, dev) for a in arrays]
                t = graph_time(lambda: exe["main"](xt, *consts, out), tvm_stream=True)
                torch.cuda.synchronize()
                err = float((torch.from_dlpack(out) - ref).abs().max() / ref.abs().max())
                if err > 1e-4:
                    raise SystemExit(f"WRONG RESULT {name} b{batch} masked={masked}: {err:.2e}")
                times.append(t * 1e6)
            print(f"{name:22s} {batch:5d} {times[0]:7.1f} {times[1]:7.1f}  {times[0] / times[1]:5.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
