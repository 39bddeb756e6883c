"""How a tuning trial is timed on a CUDA device: from a CUDA graph, as the benchmarks time.

MetaSchedule's own evaluator (``time_evaluator``) launches the kernel back to back from the host,
which adds a launch latency that varies from run to run to what it measures: at batch 1 an Escoin
kernel runs 5-20 us, and that variation is larger than most of the differences tuning has to rank
(docs/findings.md, "Timing trials").
"""
from __future__ import annotations

from typing import List

DLPACK_CUDA = 2


class GraphEvaluator:
    """MetaSchedule's ``f_run_evaluator`` for the local runner: on a CUDA device (with PyTorch
    built for CUDA), ``number`` calls captured in one CUDA graph, replayed ``repeat`` times
    (``timing.graph_times``); elsewhere MetaSchedule's own evaluator. Pickled to the runner's
    worker process."""

    def __call__(self, rt_mod, device, evaluator_config, repeated_args) -> List[float]:
        from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

        if device.dlpack_device_type() != DLPACK_CUDA or not _torch_cuda():
            return run_evaluator_common(rt_mod, device, evaluator_config, repeated_args)
        from ..support.timing import graph_times

        func = rt_mod[rt_mod.entry_name]
        costs = []
        for args in repeated_args:
            device.sync()
            costs += graph_times(lambda: func(*args), replays=evaluator_config.repeat,
                                 calls=evaluator_config.number, tvm_stream=True)
        return costs


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
