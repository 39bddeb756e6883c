"""Tuning tasks: the distinct Escoin kernels of a model (convolutions and linear layers), as
the compiler generates them."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import List, Optional, Union

import numpy as np
import tvm
import tvm_ffi

from ..operator import Epilogue, ell_arrays
from ..spec import Conv2dSpec
from ..target import TargetLike, resolve_target
from ..weight_format import EscoinWeight
from ..kernel import tuned_extents, untuned_config
from .linear_space import LinearTask
from .space import (decode_config, design_spaces, representable, space_generator,
                    tuned_row_length, workload)


@dataclass
class Task:
    """One kernel to tune for ``target``: a convolution geometry, its epilogue and its padded row
    length. Layers that share all three share the task (and its tuning records)."""

    spec: Conv2dSpec
    epilogue: Epilogue
    weight: EscoinWeight  # the first layer's: its ELL arrays are the measurement's arguments
    target: tvm.target.Target
    layers: List[str] = field(default_factory=list)

    @property
    def row_length(self) -> int:
        return tuned_row_length(self.weight, self.spec, self.target)

    @property
    def name(self) -> str:
        more = f" (+{len(self.layers) - 1})" if len(self.layers) > 1 else ""
        return self.layers[0] + more

    @cached_property
    def workload(self) -> tvm.IRModule:
        return workload(self.spec, self.row_length, self.epilogue, self.target, self.dtype)

    @property
    def dtype(self) -> str:
        return self.weight.dtype

    def arguments(self, seed: int = 0) -> "KernelArguments":
        multiple = tuned_extents(self.spec, self.target, self.dtype)[1]
        offsets, values = ell_arrays(self.spec, self.weight, multiple)
        return KernelArguments({1: offsets, 2: values}, seed)

    # the template's space for this task (``linear_space.LinearTask`` has the same methods)
    def untuned_config(self):
        return untuned_config(self.spec, self.target, self.dtype)

    def representable(self, config) -> bool:
        return representable(self.spec, self.target, config, self.dtype)

    def design_spaces(self, fixed=None):
        return design_spaces(self.spec, self.target, fixed=fixed, dtype=self.dtype)

    def decode(self, trace):
        return decode_config(trace, self.target)

    def space_generator(self, seed: int = 0):
        return space_generator(self.spec, self.target, seed, self.dtype)


class KernelArguments:
    """MetaSchedule's ``f_alloc_argument`` for an Escoin kernel (local and RPC runners): the
    kernel's real ELL arrays, because random offsets would read out of bounds; random data and
    bias. Pickled to the runner's worker process."""

    def __init__(self, fixed: dict, seed: int = 0):
        self.fixed, self.seed = fixed, seed

    def __call__(self, *args):  # (device, args_info, repeat) or (session, device, args_info, repeat)
        device, args_info, repeat = args[-3:]
        rng = np.random.default_rng(self.seed)
        result = []
        for _ in range(repeat):
            tensors = []
            for index, (_kind, dtype, shape) in enumerate(args_info):
                host = self.fixed.get(index)
                if host is None:
                    host = rng.standard_normal(shape).astype(dtype)
                tensor = tvm.runtime.empty(shape, dtype, device)
                tensor.copyfrom(host)
                tensors.append(tensor)
            result.append(tensors)
        return result


def extract_tasks(model, example_inputs, target: TargetLike = "cuda",
                  sparsity_threshold: Optional[float] = None) -> List[Task]:
    """The Escoin kernels ``escoin_tvm.compile`` would generate for this model, one task per
    distinct kernel, in program order."""
    from ..compiler import DEFAULT_SPARSITY_THRESHOLD, dispatch
    from ..frontend import prepare

    target = resolve_target(target)
    threshold = DEFAULT_SPARSITY_THRESHOLD if sparsity_threshold is None else sparsity_threshold
    exported, _example, mod = prepare(model, example_inputs, target)
    _mod, escoin, linear = dispatch(mod, exported, target, float(threshold))
    tasks = {}
    for kernel in escoin.kernels:
        key = (kernel.spec, kernel.epilogue, kernel.weight.dtype,
               tuned_row_length(kernel.weight, kernel.spec, target))
        if key not in tasks:
            tasks[key] = Task(kernel.spec, kernel.epilogue, kernel.weight, target)
        tasks[key].layers.append(kernel.layer)
    for kernel in linear.kernels:
        task = LinearTask(kernel.batch, kernel.weight, kernel.bias, kernel.relu, target)
        key = tvm_ffi.structural_hash(task.workload)  # same shapes, epilogue and row length
        tasks.setdefault(key, task).layers.append(kernel.layer)
    return list(tasks.values())


AnyTask = Union[Task, LinearTask]
