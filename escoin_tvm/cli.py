"""The ``escoin`` command: compile, run, inspect exported models, and the built-in demo."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .errors import EscoinError, first_line


def _load_pt2(path):
    import torch

    if not os.path.isfile(path):
        raise EscoinError(f"no such model file: {path!r}")
    try:
        return torch.export.load(path)
    except Exception as err:
        raise EscoinError(f"{path!r} is not a model saved with torch.export.save "
                          f"({type(err).__name__}: {first_line(err)})") from None


def cmd_compile(args):
    from .compiler import compile as compile_model
    from .runtime import check_output_path

    check_output_path(args.output, ".so", "-o/--output is the shared library to write")
    exported = _load_pt2(args.model)
    compiled = compile_model(exported, None, target=args.target, sparsity_threshold=args.threshold,
                             tuning_log=args.tuning_log, dispatch_by=args.dispatch_by,
                             cuda_graph=args.cuda_graph, progress=False if args.quiet else None,
                             batch_sizes=_batch_sizes(args.batch_sizes))
    compiled.export_library(args.output)
    if not args.quiet:
        print(compiled.report())
        print(f"wrote {args.output}")


def _batch_sizes(text):
    """``--batch-sizes 1,8,16`` as a list of ints (None when not given)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise EscoinError(f"--batch-sizes takes batch sizes separated by commas (1,8,16), got "
                          f"{text!r}") from None


def cmd_tune(args):
    from .tuning import format_summary
    from .tuning.relax_integration import tune

    exported = _load_pt2(args.model)
    print(f"tuning the Escoin kernels of {args.model} for {args.target}, {args.trials} trials "
          f"each, log {args.log}" + (f", measured through the RPC tracker {args.rpc_tracker} "
                                     f"(key {args.rpc_key})" if args.rpc_tracker else ""))
    try:
        results = tune(exported, None, log=args.log, target=args.target, trials=args.trials,
                       sparsity_threshold=args.threshold, trials_per_iter=args.trials_per_iter,
                       rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key)
    except KeyboardInterrupt:
        return 130
    print(format_summary(results))
    print(f"compile with: escoin compile {args.model} -o model.so --target {args.target} "
          f"--tuning-log {args.log}")


def cmd_run(args):
    from .runtime import check_output_path, load

    if args.output:
        check_output_path(args.output, ".npy", "-o/--output is the .npy file to write")
    module = load(args.module, device=args.device)
    if not os.path.isfile(args.input):
        raise EscoinError(f"no such input file: {args.input!r}")
    try:
        x = np.load(args.input, allow_pickle=False)
    except Exception as err:
        raise EscoinError(f"{args.input!r} is not a .npy array ({first_line(err)})") from None
    if not isinstance(x, np.ndarray):  # np.load opens any zip (.npz, .pt2) as an archive
        x.close()
        raise EscoinError(f"{args.input!r} is not a .npy array (it is an archive of several "
                          "files; save the input with numpy.save)")
    out = module(x)
    outputs = out if isinstance(out, (tuple, list)) else [out]
    for i, o in enumerate(outputs):
        o = np.asarray(o)
        print(f"output {i}: shape {o.shape}, mean {o.mean():.6g}, min {o.min():.6g}, max {o.max():.6g}")
    if args.output:
        np.save(args.output, np.asarray(outputs[0]))
        print(f"wrote {args.output}")


def cmd_info(args):
    from .runtime import load, read_metadata, report_of

    # read from beside the library, so that it needs no runtime for the module's target (a
    # CUDA module on a machine without a GPU); modules exported before that are loaded
    meta = read_metadata(args.module) or load(args.module).metadata
    print(f"target: {meta['target_json']}")
    print(f"inputs: {', '.join('x'.join(map(str, s)) + ' ' + d for s, d in meta['inputs'])}")
    print(f"sparsity threshold: {meta['threshold']}")
    print(report_of(meta))


def cmd_bench(args):
    """Compiles a .pt2 model, checks it against PyTorch in float64 and times it against the
    dense PyTorch paths on this device (``comparison``)."""
    import torch

    from .comparison import error_against_float64, time_against_dense
    from .compiler import compile as compile_model
    from .frontend import example_zeros
    from .support import dtypes
    from .support.target import has_gpu

    exported = _load_pt2(args.model)
    if args.dtype is not None:
        dtypes.check(args.dtype, "--dtype")
    inputs = example_zeros(exported)
    if len(inputs) != 1 or not inputs[0].is_floating_point():
        raise EscoinError(f"escoin bench times models of one floating-point input; {args.model} "
                          f"takes {len(inputs)} ({', '.join(str(x.dtype) for x in inputs)})")
    device = "cuda" if has_gpu() and args.target != "llvm" else "cpu"
    target = "cuda" if device == "cuda" else "llvm"
    dtype = args.dtype or dtypes.name_of(inputs[0].dtype)
    model = exported.module().to(dtypes.torch_dtype(dtype))
    x = torch.randn(inputs[0].shape).to(dtypes.torch_dtype(dtype))
    print(f"escoin bench: {args.model}, input {'x'.join(map(str, x.shape))} {dtype}, on the "
          f"{device.upper()} (target {target})")
    if dtype != dtypes.name_of(inputs[0].dtype):  # the program again, in the asked dtype
        exported = torch.export.export(model, (x,))
    compiled = compile_model(exported, None, target=target, dispatch_by=args.dispatch_by,
                             sparsity_threshold=args.threshold, tuning_log=args.tuning_log,
                             progress=None)
    print(compiled.report())
    err = error_against_float64(compiled, model, x, device)
    print(f"\nmax error relative to the largest output, against the same weights in float64: "
          f"{err:.2e}")
    time_against_dense(compiled, model, x, device, dtype, print, rounds=args.rounds)


def cmd_demo(args):
    from .demo import run

    return run(args.model, args.sparsity, args.batch, args.size, args.target, args.dtype,
               args.prune, args.structure)


def build_parser():
    parser = argparse.ArgumentParser(prog="escoin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="compile a model saved with torch.export.save")
    p.add_argument("model", help="MODEL.pt2")
    p.add_argument("-o", "--output", required=True, help="shared library to write (model.so)")
    p.add_argument("--target", default="cuda", help="cuda (default) or llvm")
    p.add_argument("--threshold", type=float, default=None, help="sparsity threshold")
    p.add_argument("--tuning-log", default=None, help="a log written by 'escoin tune'")
    p.add_argument("--cuda-graph", action="store_true", help="replay the kernels as CUDA graphs "
                   "(less launch overhead, mostly at batch 1)")
    p.add_argument("--dispatch-by", default="threshold", choices=("threshold", "measure", "none"),
                   help="threshold (default): sparse enough layers go to Escoin kernels; "
                   "measure: also time each such layer both ways on the device and keep the "
                   "faster; none: plain TVM")
    p.add_argument("--batch-sizes", default=None, help="1,8,16: one module that serves each "
                   "of these batch sizes (the .pt2 exported with a dynamic batch, "
                   "torch.export.Dim)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (no "
                   "progress bar, no report)")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("tune", help="tune a model's Escoin kernels with MetaSchedule")
    p.add_argument("model", help="MODEL.pt2")
    p.add_argument("--log", required=True, help="tuning log directory (resumed if it exists), "
                   "e.g. tuning_logs/resnet50-h100")
    p.add_argument("--target", default="cuda", help="cuda (default) or llvm")
    p.add_argument("--trials", type=int, default=64, help="trials per kernel (default 64)")
    p.add_argument("--trials-per-iter", type=int, default=16)
    p.add_argument("--threshold", type=float, default=None, help="sparsity threshold")
    p.add_argument("--rpc-tracker", default=None, help="HOST:PORT of a TVM RPC tracker")
    p.add_argument("--rpc-key", default=None, help="device key registered with the tracker")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("run", help="run an exported module on a .npy input")
    p.add_argument("module")
    p.add_argument("--input", required=True, help="x.npy")
    p.add_argument("-o", "--output", help="write the (first) output to this .npy")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the module's "
                   "first device)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("info", help="print an exported module's per-layer report")
    p.add_argument("module")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("bench", help="compile a .pt2 model, check it, and time it against the "
                       "dense PyTorch paths on this device")
    p.add_argument("model", help="MODEL.pt2")
    p.add_argument("--target", default="auto", help="auto (GPU if there is one) or llvm")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: the "
                   "model's)")
    p.add_argument("--dispatch-by", default="threshold", choices=("threshold", "measure", "none"))
    p.add_argument("--threshold", type=float, default=None, help="sparsity threshold")
    p.add_argument("--tuning-log", default=None, help="a log written by 'escoin tune'")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds, taken in turn")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("demo", help="compile and run a pruned ResNet-50 (the main job)")
    p.add_argument("--model", default="resnet50", help="resnet50, resnet18, alexnet, vgg11, "
                   "vgg16 or googlenet")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=0, help="input size (default 224 on a GPU, "
                   "112 on the CPU)")
    p.add_argument("--target", default="auto", help="auto (GPU if there is one), cuda or llvm")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    p.add_argument("--prune", default="conv", help="what is pruned: conv (default), linear or "
                   "all")
    p.add_argument("--structure", default="unstructured", help="unstructured (default) or "
                   "vectors: groups of 16 output channels sharing their zero taps, which the "
                   "tensor-core kernels take (GPU, float16 or bfloat16)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except EscoinError as err:
        print(f"escoin: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
