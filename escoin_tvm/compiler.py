"""``escoin_tvm.compile``: a PyTorch model in, a runnable (and exportable) module out.

    torch.export -> Relax, parameters as constants (frontend.py)
    -> FoldBatchnormToConv2D + FoldConstant
    -> the Escoin pass (transform/): sparse convolutions -> Escoin kernels
    -> TVM's default pipeline for the target, with the skinny-matmul rule on CUDA (pipeline.py)
    -> a Relax VM executable, wrapped with its metadata (runtime.py)
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from typing import Optional, Sequence

import tvm
from tvm import relax

from . import batch_variants
from .errors import ArgumentError, EscoinError
from .kernels.eligibility import DEFAULT_SPARSITY_THRESHOLD, checked_threshold
from .frontend import conv_layer_names, linear_layer_names, prepare, quiet_torch
from .kernels.cuda_cache import cached_cuda_compiles
from .pipeline import relax_pipeline
from .runtime import METADATA_FUNC, METADATA_VERSION, CompiledModule, metadata_function
from .support import dtypes, tir_pipeline
from .support.progress import CompileProgress
from .support.target import TargetLike, device_for, is_gpu, resolve_target
from .support.tvm_logs import without_tvm_noise
from .transform import SparseConv2dDispatch, SparseLinearDispatch

def dispatch(mod, exported, target, threshold: float, **options):
    """Folds batch norms into the convolutions and runs the Escoin passes (convolutions, then
    linear layers). Returns (Relax module, the convolution pass, the linear pass), each pass
    with its report (and the convolution pass with its kernels)."""
    from .workarounds import fold_batch_norms, trivial_reductions_to_multiply

    escoin = SparseConv2dDispatch(target, threshold, conv_layer_names(exported), **options)
    linear = SparseLinearDispatch(target, threshold, linear_layer_names(exported),
                                  measure=options.get("measure"),
                                  report_only=options.get("report_only", False),
                                  tuning_log=options.get("tuning_log"))
    # constants folded first: a weight computed from constants (a layer pruned with
    # torch.nn.utils.prune: weight_orig * weight_mask) becomes one, and its batch norm folds
    passes = [relax.transform.FoldConstant(), fold_batch_norms,
              relax.transform.FoldBatchnormToConv2D(), relax.transform.FoldConstant(), escoin,
              linear]
    if is_gpu(target):
        passes.append(trivial_reductions_to_multiply)
    try:
        with without_tvm_noise():
            mod = tvm.transform.Sequential(passes)(mod)
    except Exception:
        for done in (escoin, linear):
            if done.error is not None:  # ours, as TVM's pass machinery re-raised it
                raise done.error from None
        raise
    return mod, escoin, linear


def _out_spec(exported) -> Optional[str]:
    """The model's output structure, serialised (``runtime`` rebuilds it from this)."""
    import torch

    if exported.call_spec.out_spec is None:
        return None
    with quiet_torch():
        return torch.utils._pytree.treespec_dumps(exported.call_spec.out_spec)


def check_tuning_log_argument(tuning_log, name: str = "tuning_log") -> None:
    """Refuses, naming the argument, a ``tuning_log`` that is neither a path nor a TuningLog."""
    from .tuning.log import TuningLog

    if not isinstance(tuning_log, (str, os.PathLike, TuningLog)):
        raise ArgumentError(f"{name} must be the path of a tuning log (a folder written by "
                            f"escoin_tvm.tune) or a TuningLog, got {tuning_log!r}")


def open_tuning_log(tuning_log, target):
    """``(TuningLog, foreign)`` for ``tuning_log`` (a path or a TuningLog), checked, ``foreign``
    when it was recorded for other targets only (already warned about); ``(None, False)`` for
    None."""
    if tuning_log is None:
        return None, False
    from .tuning.log import TuningLog

    check_tuning_log_argument(tuning_log)
    log = tuning_log if isinstance(tuning_log, TuningLog) else TuningLog(tuning_log)
    return log, log.warn_if_foreign(target)


def compile(model, example_inputs, *, target: TargetLike = "cuda",
            sparsity_threshold: Optional[float] = None, tuning_log=None,
            dispatch_by: str = "threshold", config_for=None,
            cuda_graph: bool = False, device=None,
            progress: Optional[bool] = None,
            batch_sizes: Optional[Sequence[int]] = None) -> CompiledModule:  # noqa: A001
    """Compiles ``model`` (a ``torch.nn.Module`` or a ``torch.export.ExportedProgram``) for
    inputs shaped like ``example_inputs``. Convolutions with constant weights at or above
    ``sparsity_threshold`` (default DEFAULT_SPARSITY_THRESHOLD) run on Escoin kernels, with the
    best schedules of ``tuning_log`` (a directory written by ``escoin_tvm.tune``) where it has
    them, else the pre-tuned or default ones. ``dispatch_by="measure"`` also times each such
    layer both ways on the target's device (which must be present) and keeps it sparse only
    where it is ``MEASURED_MARGIN`` (5%) faster;
    ``dispatch_by="none"`` leaves every layer dense (plain TVM, the baseline). ``cuda_graph``
    (CUDA only) has TVM capture the kernel sequence into CUDA graphs on the first call and
    replay them: less launch overhead, most useful at batch 1. ``device`` is where the module
    runs ("cuda:1", a torch.device, ...; the target's first device by default). ``progress``
    shows a progress bar on stderr (default: when stderr is a terminal). ``batch_sizes``
    (e.g. ``(1, 8, 16)``) compiles the model for each of those batch sizes into one module,
    which runs the one of its input's batch (``batch_variants.py``; the example inputs then give
    the other sizes, and an ExportedProgram must have a dynamic batch)."""
    target = resolve_target(target)
    run_on = device_for(target, device)
    cuda_graph = bool(cuda_graph) and is_gpu(target)
    threshold = DEFAULT_SPARSITY_THRESHOLD if sparsity_threshold is None else \
        checked_threshold(sparsity_threshold)
    if dispatch_by not in ("threshold", "measure", "none"):
        raise EscoinError(f"dispatch_by must be 'threshold', 'measure' or 'none', got "
                          f"{dispatch_by!r}")
    sizes = None if batch_sizes is None else batch_variants.checked(batch_sizes)
    log, foreign = open_tuning_log(tuning_log, target)
    shown = CompileProgress(progress, stages=3 if sizes is None else 2 * len(sizes) + 1)
    try:
        if sizes is None:
            variants = [(None, model, example_inputs)]
        else:
            source, examples = batch_variants.examples(model, example_inputs, sizes)
            variants = [(size, source, examples[size]) for size in sizes]
        measure = None
        if dispatch_by == "measure":
            from .measure import LayerTimer

            measure = LayerTimer(target)
        lowered = []  # (size, module, exported program, example, conv pass, linear pass)
        for size, source, inputs in variants:
            at = "" if size is None else f" (batch {size})"
            shown.stage("export and convert to Relax" + at)
            exported, example, mod = prepare(source, inputs, target)
            shown.stage("Escoin pass" + at, layers=len(conv_layer_names(exported)))
            mod, escoin, linear = dispatch(mod, exported, target, threshold,
                                           config_for=config_for, tuning_log=log,
                                           measure=measure, report_only=dispatch_by == "none",
                                           on_layer=shown.layer)
            lowered.append((size, mod, exported, example, escoin, linear))
        _, mod, exported, example, escoin, linear = lowered[0]
        passes = [escoin_pass for *_, escoin_pass, _ in lowered]
        if log is not None and not foreign and any(done.kernels for done in passes) and not any(
                d.schedule.startswith("tuned") for done in passes for d in done.report):
            warnings.warn(f"tuning log {log.path} has no records for this model's kernels on "
                          f"{target.kind.name}: they use the pre-tuned or default schedules")
        if dispatch_by != "none":
            _warn_about_dense_layers(escoin.report)
        metadata = _metadata(target, threshold, dispatch_by, cuda_graph, log, example, exported,
                             escoin, linear)
        if sizes is not None:
            mod = batch_variants.merge([(size, module) for size, module, *_ in lowered])
            metadata["variants"] = {
                str(size): _variant(batch_variants.function_name(i, size), example, escoin,
                                    linear)
                for i, (size, _, _, example, escoin, linear) in enumerate(lowered)}
        mod[METADATA_FUNC] = metadata_function(metadata)
        with shown.building("build with TVM") as instruments:
            executable = _build(mod, target, cuda_graph, stock=dispatch_by == "none",
                                instruments=instruments)
    finally:
        shown.close()
    return CompiledModule(executable, run_on, metadata)


def _variant(function: str, example, escoin, linear) -> dict:
    """What the metadata says of one batch size of a module that serves several: its Relax
    function, its inputs and its layers' reports."""
    return json.loads(json.dumps({"function": function, **_inputs_and_layers(example, escoin,
                                                                              linear)}))


def _inputs_and_layers(example, escoin, linear) -> dict:
    """The metadata's inputs ([shape, dtype] each) and the two passes' per-layer reports."""
    return {"inputs": [[list(x.shape), dtypes.name_of(x.dtype)] for x in example],
            "layers": [asdict(d) for d in escoin.report],
            "linear_layers": [asdict(d) for d in linear.report]}


def _warn_about_dense_layers(report) -> None:
    """One line when convolutions stay dense: they run on TVM's own code, untuned, which was
    2.5-9x slower than cuDNN on the GPU and far slower than PyTorch on the CPU
    (docs/performance.md). The torch.compile backend keeps such layers on PyTorch's kernels."""
    dense = [d for d in report if d.kernel == "dense"]
    timed = [d.dense_us for d in dense if d.dense_us]
    cost = f", measured at {sum(timed):.1f} us per call together" if timed else ""
    if dense:
        warnings.warn(f"{len(dense)} of {len(report)} convolutions stay dense and run on TVM's "
                      f"own untuned code{cost}, much slower than cuDNN or PyTorch's CPU kernels "
                      f"(the first: {dense[0].name}, {dense[0].reason}); for a model with many "
                      "such layers, torch.compile(model, backend='escoin') keeps them on "
                      "PyTorch's", stacklevel=3)


def _metadata(target, threshold, dispatch_by, cuda_graph, log, example, exported, escoin,
              linear) -> dict:
    """What an exported module carries about itself (``runtime.load`` reads it back)."""
    metadata = {
        "version": METADATA_VERSION,
        "target": str(target.kind.name),
        "target_json": str(target),
        "threshold": threshold,
        "dispatch_by": dispatch_by,
        "cuda_graph": cuda_graph,
        "tuning_log": str(log.path) if log is not None else None,
        "out_spec": _out_spec(exported),
        **_inputs_and_layers(example, escoin, linear),
    }
    return json.loads(json.dumps(metadata))  # the same plain form that load() reads back


def _build(mod, target, cuda_graph: bool, stock: bool, instruments=()):
    """TVM's build of the rewritten module, in the caller's pass context plus the CUDA-graph
    flag and ``instruments`` (the progress bar's)."""
    pipeline = relax_pipeline(target, stock=stock)
    outer = tvm.transform.PassContext.current()
    config = {**dict(outer.config), "relax.backend.use_cuda_graph": cuda_graph}
    with target, tvm.transform.PassContext(
            opt_level=outer.opt_level, config=config,
            instruments=list(outer.instruments) + list(instruments)), \
            without_tvm_noise(), cached_cuda_compiles():
        return tvm.compile(mod, target=target, relax_pipeline=pipeline,
                           tir_pipeline=tir_pipeline.NAME)
