"""The vector-sparse convolution in a Relax module: what the Relax pass emits for a matched
conv2d and its epilogue (``relax_call``), and the kernel's record. The family has no tuning
space yet: its kernels take the default config (``schedule_gpu.default_config``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from tvm import relax, s_tir

from ...support import tir_pipeline
from ..conv_spec import Conv2dSpec
from ..epilogue import Epilogue
from ..family import Lowered, epilogue_arguments, relax_function
from .operator import vector_sparse_conv2d_primfunc
from .schedule_gpu import GPU_GROUP, MMA, default_config, schedule_gpu
from .weight_format import VectorSparseWeight


@dataclass
class VectorSparseKernel:
    """A kernel the pass generated."""

    layer: str
    spec: Conv2dSpec
    weight: VectorSparseWeight
    epilogue: Epilogue

    def task(self, target):
        """None: the family has no tuning task yet (tuning skips its kernels)."""
        return None


def relax_call(builder, data, conv: relax.Call, bias: Optional[np.ndarray], residual,
               epilogue: Epilogue, name: str, input_shape, target,
               config_for: Optional[Callable] = None, tuning_log=None) -> Lowered:
    """The call_tir that computes ``conv`` (a Relax conv2d with a constant weight the
    family's ``problem`` took) and its epilogue on tensor cores, with the weight's blocks as
    constants. ``config_for`` and ``tuning_log`` are the Escoin family's; this one has
    defaults only."""
    weight = conv.args[1].value.numpy()
    spec = Conv2dSpec.of_call(conv, input_shape)
    encoded = VectorSparseWeight.from_dense(weight, spec, GPU_GROUP, MMA)
    config = default_config(spec, encoded.offsets.shape[1])
    encoded = encoded.padded_to(config.k_tile)
    func = vector_sparse_conv2d_primfunc(spec, encoded.blocks, encoded.offsets.shape[1],
                                         encoded.group, epilogue, encoded.dtype, config.m_tile,
                                         config.image_block, encoded.in_place)
    mod = tir_pipeline.with_warp_fragments(schedule_gpu(
        s_tir.Schedule(func), spec, config, encoded.dtype, encoded.in_place).mod)
    gvar = builder.add_func(relax_function(mod), "escoin_vector_conv2d")
    args = [data, *(relax.const(a) for a in (encoded.offsets, encoded.values, encoded.slots))]
    args += epilogue_arguments(bias, residual, spec.out_channels)
    call = relax.call_tir(gvar, args, relax.TensorType(spec.output_shape, encoded.dtype))
    return Lowered(call, VectorSparseKernel(name, spec, encoded, epilogue), "default",
                   dict(vars(config)), epilogue.name)


def torch_kernel(layer, shape: tuple, device):
    """The kernel of a torch.compile backend layer (its frozen weight, bias, geometry and
    ReLU) for inputs of ``shape`` on ``device``."""
    from .kernel import build_vector_sparse_conv2d

    return build_vector_sparse_conv2d(layer.weight, shape, bias=layer.bias, stride=layer.stride,
                                      padding=layer.padding, dilation=layer.dilation,
                                      groups=layer.groups, relu=layer.relu,
                                      target=layer.target, device=device)
