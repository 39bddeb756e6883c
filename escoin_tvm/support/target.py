"""Compilation targets: what users may pass as ``target`` and how it maps to a TVM Target."""
from __future__ import annotations

import ctypes
import functools
import os
import warnings
from typing import Union

import tvm

from ..errors import ArgumentError, TargetError, first_line

SUPPORTED_KINDS = ("llvm", "cuda")
DEFAULT_CUDA_ARCH = "sm_90"  # Hopper, the GPU we tune for; used when no GPU is visible
# The limits MetaSchedule and our schedules check; TVM's bare {"kind": "cuda"} leaves them out.
CUDA_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
               "thread_warp_size": 32, "registers_per_block": 65536}

TargetLike = Union[str, dict, tvm.target.Target, None]
DLPACK_CPU, DLPACK_CUDA = 1, 2


def local_cuda_arch() -> Union[str, None]:
    """``sm_XY`` of GPU 0, or None when this machine has no usable CUDA GPU."""
    try:
        device = tvm.cuda(0)
        if not device.exist:
            return None
        return "sm_" + device.compute_version.replace(".", "")
    except Exception:  # no CUDA driver at all
        return None


@functools.lru_cache(maxsize=None)
def _announce_default_arch() -> None:
    """Says once per process that ``"cuda"`` without a visible GPU means sm_90."""
    warnings.warn(f"no GPU is visible: target 'cuda' compiles for {DEFAULT_CUDA_ARCH} (Hopper, "
                  "the architecture the shipped knobs are tuned for); to build for another GPU "
                  "pass its arch, e.g. {'kind': 'cuda', 'arch': 'sm_80'}", stacklevel=3)


def has_gpu() -> bool:
    return local_cuda_arch() is not None


def resolve_target(target: TargetLike) -> tvm.target.Target:
    """``"llvm"``/``"cpu"``, ``"cuda"`` (the local GPU's arch, else sm_90), a TVM tag such as
    ``"nvidia/nvidia-h100"``, a target dict or a Target -> a TVM Target of a supported kind."""
    if isinstance(target, tvm.target.Target):
        resolved = target
    elif target is None or target == "cpu":
        resolved = tvm.target.Target("llvm")
    elif target == "cuda":
        arch = local_cuda_arch()
        if arch is None:
            _announce_default_arch()
        resolved = tvm.target.Target({"kind": "cuda", "arch": arch or DEFAULT_CUDA_ARCH,
                                      **CUDA_LIMITS})
    elif isinstance(target, (str, dict)):
        if isinstance(target, dict) and target.get("kind") == "cuda":
            target = {**CUDA_LIMITS, **target}
        try:
            resolved = tvm.target.Target(target)
        except (ValueError, RuntimeError, TypeError) as err:
            raise TargetError(f"unknown target {target!r}: {first_line(err)} "
                              f"(use 'llvm', 'cuda' or a dict such as "
                              f"{{'kind': 'cuda', 'arch': 'sm_90'}})") from None
    else:
        raise TargetError(f"target must be a string, a dict or a tvm.target.Target, got {target!r}")
    if resolved.kind.name not in SUPPORTED_KINDS:
        raise TargetError(f"unsupported target kind {resolved.kind.name!r} (from {target!r}); "
                          f"escoin-tvm supports {', '.join(SUPPORTED_KINDS)}")
    return resolved


def is_gpu(target: tvm.target.Target) -> bool:
    return target.kind.name == "cuda"


def device_for(target: tvm.target.Target, device=None):
    """The TVM device code for ``target`` runs on: ``device`` (see ``resolve_device``), by
    default the first GPU for CUDA and the CPU otherwise."""
    return resolve_device(device, "cuda" if is_gpu(target) else "cpu")


def resolve_device(device, kind: str):
    """``device`` as a TVM device for code of ``kind`` ("cuda" or "cpu"): None (cuda:0 or the
    CPU), "cpu", "cuda", "cuda:N", a ``torch.device`` or a TVM device. A device of the other
    kind, or anything else, is refused naming the argument."""
    if device is None:
        return tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
    if isinstance(device, tvm.runtime.Device):
        dev_kind = {DLPACK_CPU: "cpu", DLPACK_CUDA: "cuda"}.get(device.dlpack_device_type())
        index = device.index
    else:
        text = str(device) if type(device).__name__ == "device" else device  # torch.device
        if not isinstance(text, str):
            raise ArgumentError(f"device must be 'cpu', 'cuda', 'cuda:N', a torch.device or a "
                                f"TVM device, got {device!r}")
        dev_kind, _, number = text.strip().lower().partition(":")
        if dev_kind not in ("cpu", "cuda") or (number and not number.isdigit()):
            raise ArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        index = int(number) if number else 0
    if dev_kind != kind:
        raise ArgumentError(f"device {device!r} cannot run code compiled for "
                            f"{'CUDA' if kind == 'cuda' else 'the CPU'}"
                            + ("; compile with target='llvm' for the CPU" if kind == "cuda" else
                               "; compile with target='cuda' for a GPU"))
    return tvm.cuda(index) if kind == "cuda" else tvm.cpu(index)


def require_device(device) -> None:
    """Fails clearly when code built for a GPU is run on a machine without one, or on a GPU
    that is not there."""
    if device.dlpack_device_type() != DLPACK_CUDA:
        return
    if not has_gpu():
        raise TargetError("this module was compiled for CUDA but no CUDA GPU is visible here; "
                          "compile with target='llvm' to run on the CPU")
    if not device.exist:
        raise TargetError(f"there is no CUDA device {device.index} on this machine")


def recover_from_out_of_memory() -> None:
    """Leaves the process as it was before a failed GPU allocation. TVM's CUDA runtime does
    not reset the CUDA runtime's per-thread "last error" after a failed cudaMalloc, and PyTorch
    shares that runtime: its next kernel launch in this thread would report the stale "out of
    memory". TVM's memory pool also keeps what the failed run had allocated."""
    tvm.get_global_func("vm.builtin.memory_manager.clear")()
    for soname in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:  # RTLD_NOLOAD: only the runtime already in the process, never load a second one
            cudart = ctypes.CDLL(soname, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        cudart.cudaGetLastError()
        return
