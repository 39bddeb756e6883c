"""Tuning a model's kernels: its tuning tasks as ``escoin_tvm.compile`` generates its Escoin
kernels, and the job that tunes them (as MetaSchedule's ``relax_integration.py`` extracts the
tasks of a Relax module). This module sits above the compiler: it runs the compiler's dispatch
to find the kernels, and each kernel gives its own family's task."""
from __future__ import annotations

from typing import List, Optional

import tvm_ffi

from ..compiler import dispatch
from ..errors import EscoinError
from ..frontend import prepare
from ..kernels.eligibility import DEFAULT_SPARSITY_THRESHOLD
from ..support.target import TargetLike, resolve_target
from .job import TaskResult, tune_tasks
from .tasks import TuningTask


def extract_tasks(model, example_inputs, target: TargetLike = "cuda",
                  sparsity_threshold: Optional[float] = None) -> List[TuningTask]:
    """The Escoin kernels ``escoin_tvm.compile`` would generate for this model, one task per
    distinct kernel (per workload: layers with the same one share its records), in program
    order."""
    target = resolve_target(target)
    threshold = DEFAULT_SPARSITY_THRESHOLD if sparsity_threshold is None else sparsity_threshold
    exported, _example, mod = prepare(model, example_inputs, target)
    _mod, *passes = dispatch(mod, exported, target, float(threshold))
    tasks = {}
    for kernel in (kernel for done in passes for kernel in done.kernels):
        task = kernel.task(target)
        if task is None:  # a family without a tuning space
            continue
        tasks.setdefault(tvm_ffi.structural_hash(task.workload), task).layers.append(kernel.layer)
    return list(tasks.values())


def tune(model, example_inputs, *, log, target: TargetLike = "cuda", trials: int = 64,
         sparsity_threshold: Optional[float] = None, **options) -> List[TaskResult]:
    """Tunes every Escoin kernel of ``model`` until ``log`` holds ``trials`` records for each
    (on ``target``); returns one TaskResult per task. ``compile(..., tuning_log=log)`` then
    uses the best records. ``options`` go to ``tuning.job.tune_tasks``."""
    target = resolve_target(target)
    tasks = extract_tasks(model, example_inputs, target, sparsity_threshold)
    if not tasks:
        raise EscoinError("the model has no convolution or linear layer that runs on an Escoin "
                          "kernel: nothing to tune")
    return tune_tasks(tasks, log=log, target=target, trials=trials, **options)
