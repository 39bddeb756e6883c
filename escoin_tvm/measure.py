"""Per-layer dispatch by measurement: one convolution timed both ways on the target's device.

Both sides are built as one-operator Relax modules and timed through the Relax VM with TVM's
time_evaluator, so they carry the same call overhead: the Escoin kernel exactly as the pass
generates it (same schedule choice), and TVM's dense conv2d with its default GPU schedule
(dlight) or CPU schedule, which is what the layer runs on if it stays dense.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Tuple

import numpy as np
import tvm
from tvm import relax

from .target import device_for, require_device


class LayerTimer:
    """``timer(conv_call, escoin_pass) -> (escoin seconds, dense seconds)`` for a Relax conv2d
    call with a constant weight. Results are cached per layer geometry and weights."""

    def __init__(self, target, number: int = 20, repeat: int = 3):
        self.target = target
        self.device = device_for(target)
        require_device(self.device)
        self.number, self.repeat = number, repeat
        self._cache: Dict[tuple, Tuple[float, float]] = {}

    def __call__(self, conv: relax.Call, make_escoin_pass) -> Tuple[float, float]:
        data, weight = conv.args
        shape = tuple(int(d) for d in data.ty.shape)
        attrs = conv.attrs
        value = weight.value.numpy()
        key = (shape, value.shape, tuple(attrs.strides), tuple(attrs.padding),
               tuple(attrs.dilation), int(attrs.groups), hashlib.sha1(value.tobytes()).hexdigest())
        if key not in self._cache:
            mod = self._single_conv(shape, value, attrs)
            escoin = make_escoin_pass()(mod)
            self._cache[key] = (self._time(escoin, shape), self._time(mod, shape))
        return self._cache[key]

    @staticmethod
    def _single_conv(shape, weight: np.ndarray, attrs) -> tvm.IRModule:
        builder = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "float32"))
        with builder.function("main", [x]):
            with builder.dataflow():
                out = builder.emit_output(relax.op.nn.conv2d(
                    x, relax.const(weight), strides=attrs.strides, padding=attrs.padding,
                    dilation=attrs.dilation, groups=attrs.groups))
            builder.emit_func_output(out)
        return builder.get()

    def _time(self, mod: tvm.IRModule, shape) -> float:
        with self.target:
            executable = tvm.compile(mod, target=self.target)
        vm = relax.VirtualMachine(executable, self.device)
        x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"),
                               self.device)
        timer = vm.time_evaluator("main", self.device, number=self.number, repeat=self.repeat)
        return float(np.median(timer(x).results))
