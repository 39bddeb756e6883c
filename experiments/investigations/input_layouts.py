"""Does the alignment of the gathered input rows matter? A/B of three input layouts for the same
Escoin kernel (same knobs, same weights), on the benchmark layers.

Each non-zero makes a warp read 32 consecutive floats of the padded input at
``offset + y*Wp + x0``: with a random offset the read straddles two 128-byte lines. Layouts:
  padded   today's: the input zero-padded, row pitch Wp
  pitched  the same with the row pitch rounded up to 32 floats (only taps with s = 0 aligned)
  shifted  one copy of the padded input per filter column s, shifted left by s*dilation (and
           subsampled by the column stride), row pitch rounded up: every warp read is aligned

Usage (GPU): python -m experiments.investigations.input_layouts [--layers a,b] [--batches 1,16]
"""
from __future__ import annotations

import argparse

import numpy as np


from experiments.benchmarks.layers import pruned_weight
from experiments.benchmarks.layers import LAYERS


def aligned(width):
    from escoin_tvm.kernels.conv2d.schedule_gpu import pow2_at_least
    unit = pow2_at_least(width, 32)
    return -(-width // unit) * unit


def geometry(spec, layout):
    """(copies, pitch, tap strides (c, r, s), pixel strides (y, x), copy width)."""
    hp, wp = spec.padded_h, spec.padded_w
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    if layout == "padded":
        return 1, wp, (hp * wp, dh * wp, dw), (sh * wp, sw), wp
    if layout == "pitched":
        pitch = aligned(wp)
        return 1, pitch, (hp * pitch, dh * pitch, dw), (sh * pitch, sw), wp
    pitch, s_ = aligned(spec.out_w), spec.kernel_w
    return s_, pitch, (s_ * hp * pitch, dh * pitch, hp * pitch), (sh * pitch, 1), spec.out_w


def build(spec, weight, config, layout):
    import tvm
    from tvm import s_tir, te, tirx

    from escoin_tvm.kernels.conv2d.schedule_gpu import schedule_gpu

    n_, c_, h_, w_ = spec.input_shape
    top, left = spec.padding[0], spec.padding[1]
    hp = spec.padded_h
    copies, pitch, (pc, pr, ps), (py, px), width = geometry(spec, layout)
    sw, dw = spec.stride[1], spec.dilation[1]
    images = -(-n_ // config.images_per_thread) * config.images_per_thread
    rows = -(-spec.out_h // config.rows_per_thread) * config.rows_per_thread
    flat = (c_ + 1) * pc + (rows - spec.out_h) * py

    # ELL rows (padding entries -> the zero channel c_)
    k_, cg, kh, kw = weight.shape
    dense = weight.reshape(k_, -1)
    lengths = (dense != 0).sum(1)
    width_ell = -(-max(1, lengths.max()) // config.chunk) * config.chunk
    offsets = np.full((k_, width_ell), c_ * pc, np.int32)
    values = np.zeros((k_, width_ell), np.float32)
    for k in range(k_):
        cols = np.nonzero(dense[k])[0]
        c, rem = np.divmod(cols, kh * kw)
        r, s = np.divmod(rem, kw)
        c = c + (k // (k_ // spec.groups)) * cg
        offsets[k, :cols.size] = c * pc + r * pr + s * ps
        values[k, :cols.size] = dense[k, cols]

    data = te.placeholder(spec.input_shape, "float32", name="data")
    off_t = te.placeholder(offsets.shape, "int32", name="offsets")
    val_t = te.placeholder(values.shape, "float32", name="values")

    def source(n, f):
        c = f // (copies * hp * pitch)
        s = f // (hp * pitch) % copies
        yy = f % (hp * pitch) // pitch - top
        col = f % pitch
        xx = (col * sw + s * dw if layout == "shifted" else col) - left
        inside = tirx.all(c < c_, col < width, yy >= 0, yy < h_, xx >= 0, xx < w_)
        if images > n_:
            inside, n = tirx.all(n < n_, inside), tirx.min(n, n_ - 1)
        return tirx.if_then_else(inside, data[n, c, yy, xx], tirx.const(0.0, "float32"))

    padded = te.compute((images, flat), source, name="data_pad")
    j = te.reduce_axis((0, width_ell), name="j")
    conv = te.compute((images, k_, rows, spec.out_w), lambda n, k, y, x: te.sum(
        val_t[k, j] * padded[n, off_t[k, j] + y * py + x * px], axis=j), name="sparse_conv")
    out = te.compute(spec.output_shape, lambda n, k, y, x: conv[n, k, y, x], name="epilogue")
    func = te.create_prim_func([data, off_t, val_t, out])
    sch = schedule_gpu(s_tir.Schedule(func), config)
    return tvm.compile(sch.mod, target=tvm.target.Target({"kind": "cuda", "arch": "sm_90"})), \
        offsets, values


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--samples", type=int, default=0,
                        help="also the best of this many random knob sets per layout")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    import tvm

    from escoin_tvm.kernels.conv2d.knobs import untuned_config
    from experiments.tuning.sweep_configs import candidate_configs
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    torch.backends.cudnn.allow_tf32 = False
    dev = tvm.cuda(0)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    print(f"{'layer':22s} {'b':>3s} " + " ".join(f"{l:>9s}" for l in ("padded", "pitched", "shifted"))
          + "  us (same knobs: the shipped ones)", flush=True)
    for seed, (name, chw, wshape, stride, pad, groups) in enumerate(LAYERS):
        if args.layers and name not in args.layers.split(","):
            continue
        weight = pruned_weight(wshape, args.sparsity, seed)
        for batch in (int(b) for b in args.batches.split(",")):
            spec = Conv2dSpec.create((batch, *chw), wshape, stride=stride, padding=pad, groups=groups)
            config = untuned_config(spec, target)
            x = torch.randn(batch, *chw, device="cuda")
            ref = F.conv2d(x, torch.from_numpy(weight).cuda(), None, stride, pad, 1, groups)

            def measure(layout, config):
                try:
                    exe, offsets, values = build(spec, weight, config, layout)
                except Exception:  # a knob set the template cannot take
                    return float("inf")
                args_ = [tvm.runtime.from_dlpack(x), tvm.runtime.tensor(offsets, dev),
                         tvm.runtime.tensor(values, dev),
                         tvm.runtime.empty(spec.output_shape, "float32", dev)]
                exe["main"](*args_)
                err = float((torch.from_dlpack(args_[-1]) - ref).abs().max() / ref.abs().max())
                assert err < 1e-4, (name, batch, layout, config, err)
                timer = exe.mod.time_evaluator("main", dev, number=20, repeat=5, min_repeat_ms=10)
                return float(np.median(timer(*args_).results)) * 1e6

            times = [measure(layout, config) for layout in ("padded", "pitched", "shifted")]
            line = f"{name:22s} {batch:3d} " + " ".join(f"{t:9.1f}" for t in times)
            if args.samples:
                sample = candidate_configs(spec, args.samples, seed)[1:]
                line += "  best of %d: padded %.1f shifted %.1f" % (len(sample), *(
                    min(measure(layout, c) for c in sample) for layout in ("padded", "shifted")))
            print(line, flush=True)


if __name__ == "__main__":
    main()
