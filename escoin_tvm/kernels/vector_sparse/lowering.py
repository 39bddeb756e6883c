"""The vector-sparse kernels in a Relax module: what the Relax pass emits for a matched conv2d
and its epilogue (``relax_call``) or a matched linear layer (``linear_relax_call``), and the
kernel's record (its tuning task); and the kernel of a torch.compile backend layer
(``torch_kernel``, ``linear_torch_kernel``). All take the best record of a tuning log where it
has one for the kernel, else the default config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from tvm import relax

from ...support.target import is_gpu
from ..conv_spec import Conv2dSpec
from ..epilogue import Epilogue
from ..family import Lowered, epilogue_arguments, relax_function
from .kernel import schedule_choice, scheduled_module
from .operator import linear_spec
from .schedule_gpu import GPU_GROUP, MMA
from .tuning_space import VectorSparseTask
from .weight_format import VectorSparseWeight


@dataclass
class VectorSparseKernel:
    """A kernel the pass generated (what tuning extracts as a task)."""

    layer: str
    spec: Conv2dSpec
    weight: VectorSparseWeight  # its tap lists padded to the task's work
    epilogue: Epilogue

    linear: bool = False  # a linear layer's kernel (``spec`` its ``linear_spec``)

    def task(self, target) -> Optional[VectorSparseTask]:
        """The kernel's tuning task on a GPU target (without layers: the caller adds those
        sharing it); None elsewhere (the CPU schedule, for correctness, has no knobs)."""
        if not is_gpu(target):
            return None
        return VectorSparseTask(self.spec, self.epilogue, self.weight, target,
                                linear=self.linear)


def relax_call(builder, data, conv: relax.Call, bias: Optional[np.ndarray], residual,
               epilogue: Epilogue, name: str, input_shape, target,
               config_for: Optional[Callable] = None, tuning_log=None) -> Lowered:
    """The call_tir that computes ``conv`` (a Relax conv2d with a constant weight the
    family's ``problem`` took) and its epilogue on tensor cores, with the weight's blocks as
    constants. ``config_for`` is the Escoin family's knobs, not this one's; ``tuning_log``
    (a ``tuning.TuningLog``) gives tuned knobs where it has the kernel's workload."""
    weight = conv.args[1].value.numpy()
    spec = Conv2dSpec.of_call(conv, input_shape)
    encoded = VectorSparseWeight.from_dense(weight, spec, GPU_GROUP, MMA)
    config, tuned, source = schedule_choice(spec, encoded, epilogue, target, tuning_log)
    mod, encoded = scheduled_module(spec, encoded, epilogue, config, tuned)
    gvar = builder.add_func(relax_function(mod), "escoin_vector_conv2d")
    args = [data, *(relax.const(a) for a in (encoded.offsets, encoded.values, encoded.slots))]
    args += epilogue_arguments(bias, residual, spec.out_channels)
    call = relax.call_tir(gvar, args, relax.TensorType(spec.output_shape, encoded.dtype))
    return Lowered(call, VectorSparseKernel(name, spec, encoded, epilogue), source,
                   dict(vars(config)), epilogue.name)


def torch_kernel(layer, shape: tuple, device):
    """The kernel of a torch.compile backend layer (its frozen weight, bias, geometry and
    ReLU) for inputs of ``shape`` on ``device``, with the knobs of the layer's tuning log
    where it has them (the weight is encoded once, for the log's lookup and the kernel)."""
    from .kernel import VectorSparseConv2dKernel, build_vector_sparse_conv2d

    if layer.tuning_log is None or not is_gpu(layer.target):
        return build_vector_sparse_conv2d(layer.weight, shape, bias=layer.bias,
                                          stride=layer.stride, padding=layer.padding,
                                          dilation=layer.dilation, groups=layer.groups,
                                          relu=layer.relu, target=layer.target, device=device)
    spec = Conv2dSpec.create(shape, layer.weight.shape, stride=layer.stride,
                             padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    epilogue = Epilogue(bias=layer.bias is not None, relu=layer.relu)
    encoded = VectorSparseWeight.from_dense(layer.weight, spec, GPU_GROUP, MMA)
    config, tuned, _ = schedule_choice(spec, encoded, epilogue, layer.target, layer.tuning_log)
    return VectorSparseConv2dKernel(spec, encoded, layer.bias, epilogue, layer.target, device,
                                    config, tuned)


def _linear_weight(weight: np.ndarray, spec: Conv2dSpec) -> VectorSparseWeight:
    """A dense (out_features, in_features) weight in blocks of 16 output features, for the
    1 x 1 convolution ``spec`` (a ``linear_spec``)."""
    return VectorSparseWeight.from_dense(weight.reshape(*weight.shape, 1, 1), spec, GPU_GROUP,
                                         MMA)


def linear_relax_call(builder, data, matmul: relax.Call, bias: Optional[np.ndarray], relu: bool,
                      name: str, input_shape, target, tuning_log=None) -> Lowered:
    """The call_tir that computes ``matmul`` (x times a constant transposed weight) + bias +
    ReLU on tensor cores, as the 1 x 1 convolution whose pixels are the batch."""
    weight = matmul.args[1].value.numpy().T
    spec = linear_spec(int(input_shape[0]), weight.shape[1], weight.shape[0])
    epilogue = Epilogue(bias=bias is not None, relu=relu)
    encoded = _linear_weight(weight, spec)
    config, tuned, source = schedule_choice(spec, encoded, epilogue, target, tuning_log, True)
    mod, encoded = scheduled_module(spec, encoded, epilogue, config, tuned, True)
    gvar = builder.add_func(relax_function(mod), "escoin_vector_linear")
    args = [data, *(relax.const(a) for a in (encoded.offsets, encoded.values, encoded.slots))]
    args += epilogue_arguments(bias, None, spec.out_channels)
    call = relax.call_tir(gvar, args, relax.TensorType((spec.height, spec.out_channels),
                                                       encoded.dtype))
    return Lowered(call, VectorSparseKernel(name, spec, encoded, epilogue, linear=True), source,
                   dict(vars(config)), epilogue.name)


def linear_torch_kernel(layer, shape: tuple, device):
    """The kernel of a torch.compile backend linear layer (``torch_compile.ops.
    SparseLinearLayer``) for inputs of ``shape`` on ``device``, with the knobs of the layer's
    tuning log where it has them (the weight is encoded once, for the log's lookup and the
    kernel)."""
    from .kernel import VectorSparseLinearKernel, build_vector_sparse_linear

    if layer.tuning_log is None or not is_gpu(layer.target):
        return build_vector_sparse_linear(layer.weight, shape[0], bias=layer.bias,
                                          relu=layer.relu, target=layer.target, device=device)
    spec = linear_spec(int(shape[0]), layer.weight.shape[1], layer.weight.shape[0])
    encoded = _linear_weight(layer.weight, spec)
    config, tuned, _ = schedule_choice(spec, encoded, Epilogue(
        bias=layer.bias is not None, relu=layer.relu), layer.target, layer.tuning_log, True)
    return VectorSparseLinearKernel(int(shape[0]), encoded, layer.bias, layer.relu,
                                    layer.target, device, config, tuned)
