"""The convolution kernel in a Relax module: what the Relax pass emits for a matched conv2d
and its epilogue, and the record a tuning task is made from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from tvm import relax

from ..family import Lowered, epilogue_arguments, relax_function
from .kernel import schedule_choice, scheduled_module
from .operator import Epilogue, kernel_input_shape, reads_in_place
from ..conv_spec import Conv2dSpec
from .tuning_space import Task
from .weight_format import EscoinWeight


@dataclass
class EscoinKernel:
    """A kernel the pass generated (what tuning extracts as a task)."""

    layer: str
    spec: Conv2dSpec
    weight: EscoinWeight
    epilogue: Epilogue

    def task(self, target) -> Task:
        """The kernel's tuning task (without layers: the caller adds those sharing it)."""
        return Task(self.spec, self.epilogue, self.weight, target)


def relax_call(builder, data, conv: relax.Call, bias: Optional[np.ndarray], residual,
               epilogue: Epilogue, name: str, input_shape, target,
               config_for: Optional[Callable] = None, tuning_log=None) -> Lowered:
    """What computes ``conv`` (a Relax conv2d with a constant weight) + epilogue with an Escoin
    kernel: a strided slice of the input first when the layer is a strided 1x1 convolution
    (``Conv2dSpec.subsampled``), a copy-free flattening reshape when the kernel reads its input
    in place (both emitted), then the kernel's call_tir (returned, not emitted). ``bias`` is
    the per-channel bias the epilogue adds, ``residual`` the Relax expression it adds."""
    weight = conv.args[1].value.numpy()
    spec = Conv2dSpec.of_call(conv, input_shape)
    stride_one = spec.subsampled()
    if stride_one is not None:
        data = builder.emit(relax.op.strided_slice(
            data, axes=[2, 3], begin=[0, 0], end=[spec.height, spec.width],
            strides=list(spec.stride)), "subsampled")
        spec = stride_one
    escoin_weight = EscoinWeight.from_dense(weight, spec)
    config, tuned, schedule = schedule_choice(spec, escoin_weight, epilogue, target,
                                              config_for(spec) if config_for else None,
                                              tuning_log)
    mod, arrays, config = scheduled_module(spec, escoin_weight, epilogue, target, config, tuned)
    gvar = builder.add_func(relax_function(mod), "escoin_conv2d")
    if reads_in_place(spec):
        data = builder.emit(relax.op.reshape(data, kernel_input_shape(spec)), "input")
    args = [data, *(relax.const(a) for a in arrays)]
    args += epilogue_arguments(bias, residual, spec.out_channels)
    call = relax.call_tir(gvar, args, relax.TensorType(spec.output_shape, escoin_weight.dtype))
    return Lowered(call, EscoinKernel(name, spec, escoin_weight, epilogue), schedule,
                   dict(vars(config)), epilogue.name)


def torch_kernel(layer, shape: tuple, device):
    """The kernel of a torch.compile backend layer (``torch_compile.ops.SparseLayer``: its
    frozen weight, bias, geometry and ReLU) for inputs of ``shape`` on ``device``, with the
    knobs of the layer's tuning log where it has them (else the shipped or heuristic ones)."""
    from .kernel import build_sparse_conv2d

    config, tuned = None, False
    if layer.tuning_log is not None:
        spec = Conv2dSpec.create(shape, layer.weight.shape, stride=layer.stride,
                                 padding=layer.padding, dilation=layer.dilation,
                                 groups=layer.groups)
        epilogue = Epilogue(bias=layer.bias is not None, relu=layer.relu)
        config, tuned, _ = schedule_choice(spec, EscoinWeight.from_dense(layer.weight, spec),
                                           epilogue, layer.target, None, layer.tuning_log)
    return build_sparse_conv2d(layer.weight, shape, bias=layer.bias, stride=layer.stride,
                               padding=layer.padding, dilation=layer.dilation,
                               groups=layer.groups, relu=layer.relu, target=layer.target,
                               config=config, tuned=tuned, device=device)
