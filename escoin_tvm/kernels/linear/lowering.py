"""The sparse linear kernel in a Relax module: what the Relax pass emits for a matched Linear
and its epilogue, and the record a tuning task is made from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from tvm import relax

from ..family import Lowered, relax_function
from .kernel import linear_schedule_choice, scheduled_linear_module
from .tuning_space import LinearTask
from .weight_format import SparseLinearWeight


@dataclass(frozen=True)
class LinearKernel:
    """A layer the pass put on a sparse linear kernel: what a tuning task needs of it."""

    layer: str
    batch: int
    weight: SparseLinearWeight
    bias: bool
    relu: bool

    def task(self, target) -> LinearTask:
        """The kernel's tuning task (without layers: the caller adds those sharing it)."""
        return LinearTask(self.batch, self.weight, self.bias, self.relu, target)


def relax_call(builder, data, matmul: relax.Call, bias: Optional[np.ndarray], relu: bool,
               name: str, input_shape, target, tuning_log=None) -> Lowered:
    """The call_tir that computes ``matmul`` (x times a constant transposed weight) + bias +
    ReLU with a sparse linear kernel."""
    weight = SparseLinearWeight.from_dense(matmul.args[1].value.numpy().T)
    batch, has_bias = input_shape[0], bias is not None
    config, tuned, schedule = linear_schedule_choice(batch, weight, has_bias, relu, target,
                                                     tuning_log)
    mod, columns, values, config = scheduled_linear_module(batch, weight, has_bias, relu, target,
                                                           config, tuned)
    gvar = builder.add_func(relax_function(mod), "escoin_linear")
    args = [data, relax.const(columns), relax.const(values)]
    if bias is not None:  # the epilogue adds it in float32
        args.append(relax.const(bias.reshape(-1).astype("float32")))
    call = relax.call_tir(gvar, args, relax.TensorType((batch, weight.shape[0]), weight.dtype))
    epilogue = "+".join(p for p, on in (("bias", has_bias), ("relu", relu)) if on)
    return Lowered(call, LinearKernel(name, batch, weight, has_bias, relu), schedule,
                   dict(vars(config)), epilogue)


def torch_kernel(layer, shape: tuple, device):
    """The kernel of a torch.compile backend layer (``torch_compile.ops.SparseLinearLayer``)
    for inputs of ``shape`` on ``device``, with the knobs of the layer's tuning log where it
    has them (else the shipped or heuristic ones)."""
    from .kernel import build_sparse_linear

    config, tuned = None, False
    if layer.tuning_log is not None:
        config, tuned, _ = linear_schedule_choice(
            shape[0], SparseLinearWeight.from_dense(layer.weight), layer.bias is not None,
            layer.relu, layer.target, layer.tuning_log)
    return build_sparse_linear(layer.weight, shape[0], bias=layer.bias, relu=layer.relu,
                               target=layer.target, config=config, tuned=tuned, device=device)
