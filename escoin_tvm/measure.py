"""Per-layer dispatch by measurement: one layer timed both ways on the target's device.

Both sides are one-operator Relax functions of one module, compiled together (one CUDA compile
per layer, not two) and timed through the Relax VM with TVM's time_evaluator, so they carry the
same call overhead: the Escoin kernel exactly as the pass generates it (same schedule choice),
and TVM's dense operator with its default GPU schedule (dlight) or CPU schedule, which is what
the layer runs on if it stays dense.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Tuple

import numpy as np
import tvm
from tvm import relax

from .support import dtypes
from .support.target import device_for, require_device

ESCOIN, DENSE = "escoin", "dense"  # the two sides' functions in the timed module


class LayerTimer:
    """``timer(call, make_escoin_pass, family) -> (escoin seconds, dense seconds)`` for a Relax
    conv2d or matmul call with a constant weight, each side the call alone in a module (the
    Escoin side rewritten by the pass ``make_escoin_pass()`` returns, which sends it to the
    kernel family named ``family``); ``timer.dense(call)`` -> the dense side's seconds alone,
    for a layer that stays dense (what it costs the model). Results are cached per family,
    operator, attributes, input shape and weights."""

    def __init__(self, target, number: int = 20, repeat: int = 3):
        self.target = target
        self.device = device_for(target)
        require_device(self.device)
        self.number, self.repeat = number, repeat
        self._cache: Dict[tuple, Tuple[float, float]] = {}
        self._dense_cache: Dict[tuple, float] = {}  # layers timed on the dense side alone

    def __call__(self, call: relax.Call, make_escoin_pass, family: str = ""
                 ) -> Tuple[float, float]:
        shape, dtype, key = self._key(call)
        key = (family, *key)
        if key not in self._cache:
            escoin = make_escoin_pass()(self._single(call, shape, dtype, ESCOIN))
            escoin[DENSE] = self._single(call, shape, dtype, DENSE)[DENSE]  # left as it is
            vm = self._vm(escoin)
            self._cache[key] = (self._time(vm, ESCOIN, shape, dtype),
                                self._time(vm, DENSE, shape, dtype))
        return self._cache[key]

    def dense(self, call: relax.Call) -> float:
        shape, dtype, key = self._key(call)
        if key not in self._dense_cache:
            vm = self._vm(self._single(call, shape, dtype, DENSE))
            self._dense_cache[key] = self._time(vm, DENSE, shape, dtype)
        return self._dense_cache[key]

    @staticmethod
    def _key(call: relax.Call):
        """The call's input shape and dtype, and its cache key."""
        data, weight = call.args
        shape, dtype = tuple(int(d) for d in data.ty.shape), str(data.ty.dtype)
        key = (str(call.op), str(call.attrs), shape, dtype,
               hashlib.sha1(weight.value.numpy().tobytes()).hexdigest())
        return shape, dtype, key

    @staticmethod
    def _single(call: relax.Call, shape, dtype: str, name: str) -> tvm.IRModule:
        """A module whose function ``name`` is the call alone."""
        builder = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, dtype))
        with builder.function(name, [x]):
            with builder.dataflow():
                out = builder.emit(relax.Call(call.op, [x, call.args[1]], call.attrs))
                if str(out.ty.dtype) != dtype:  # a half product computed to float32, as the
                    out = builder.emit(relax.op.astype(out, dtype))  # frontend gives it
                out = builder.emit_output(out)
            builder.emit_func_output(out)
        return builder.get()

    def _vm(self, mod: tvm.IRModule) -> relax.VirtualMachine:
        with self.target:
            executable = tvm.compile(mod, target=self.target)
        return relax.VirtualMachine(executable, self.device)

    def _time(self, vm: relax.VirtualMachine, name: str, shape, dtype: str) -> float:
        x = np.random.default_rng(0).standard_normal(shape).astype(dtypes.numpy_dtype(dtype))
        timer = vm.time_evaluator(name, self.device, number=self.number, repeat=self.repeat)
        return float(np.median(timer(tvm.runtime.tensor(x, self.device)).results))

