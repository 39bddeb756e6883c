"""Where a tuning job builds and measures its trials: MetaSchedule's local builder (with
Escoin's build and export functions), and a local or RPC runner."""
from __future__ import annotations

import socket
from typing import Optional

from tvm.s_tir import meta_schedule as ms

from ..errors import EscoinError, first_line
from .evaluator import GraphEvaluator
from .tasks import TuningTask


def builder() -> ms.builder.LocalBuilder:
    """MetaSchedule's local builder (parallel workers) with ``build_kernel`` and
    ``export_kernel``."""
    return ms.builder.LocalBuilder(f_build=build_kernel, f_export=export_kernel, timeout_sec=120)


def build_kernel(mod, target, _params):
    """The builder's f_build: the TIR pipeline every escoin-tvm build uses
    (``support.tir_pipeline``: the tensor-core kernels' fragments need it). MetaSchedule's
    default would also import tvm.s_tir.tensor_intrin, which takes about a minute per worker
    process and is of no use to the Escoin kernels."""
    import tvm

    from ..support import tir_pipeline

    with target:
        return tvm.tirx.build(mod, target=target, pipeline=tir_pipeline.NAME)


def export_kernel(mod) -> str:
    """The builder's f_export: a shared library, linked in the parallel builder workers (the
    default tar is linked at load time, one by one, in the runner)."""
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="escoin-trial-"), "kernel.so")
    mod.export_library(path)
    return path


def runner(task: TuningTask, target, rpc_tracker: Optional[str], rpc_key: Optional[str],
            number: int, repeat: int):
    """Where the task's trials are measured: this machine's device (each trial timed from a
    CUDA graph on a GPU: ``evaluator.py``), or the servers of ``rpc_key`` registered with the
    tracker at ``rpc_tracker`` (``HOST:PORT``, checked before the job starts)."""
    evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=0,
                                          enable_cpu_cache_flush=False)
    arguments = task.arguments()
    if rpc_tracker is None:
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator,
                                     f_alloc_argument=arguments, f_run_evaluator=GraphEvaluator())
    host, _, port = rpc_tracker.rpartition(":")
    if not host or not port.isdigit() or not rpc_key:
        raise EscoinError(f"--rpc-tracker must be HOST:PORT with an --rpc-key, got "
                          f"{rpc_tracker!r} and key {rpc_key!r}")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=rpc_key,
                                 session_timeout_sec=120)
    check_tracker(config)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                               f_alloc_argument=arguments)


def check_tracker(config) -> None:
    """Fails early, naming the tracker and key, when no server is there to measure on."""
    where = f"{config.tracker_host}:{config.tracker_port}"
    try:  # TVM's own client retries for minutes; a refused connection is known at once
        socket.create_connection((config.tracker_host, config.tracker_port), timeout=10).close()
        summary = config.connect_tracker().summary()
    except Exception as err:  # socket and TVM errors
        raise EscoinError(f"cannot reach the RPC tracker at {where} ({first_line(err)})") from None
    free = summary.get("queue_info", {}).get(config.tracker_key, {}).get("free", 0)
    servers = [s for s in summary.get("server_info", [])
               if str(s.get("key", "")).split(":")[-1] == config.tracker_key]
    if not free and not servers:
        raise EscoinError(f"the RPC tracker at {where} has no server with key {config.tracker_key!r}")


def rpc_hint(error: str) -> str:
    """A hint for a trial error with a known cause on RPC servers, else ""."""
    # TVM 0.27's rpc_server forks each session from a process that has initialised CUDA
    if "cudaErrorInitializationError" in error:
        return ("\n(a CUDA RPC server must run with --no-fork: python -m tvm.exec.rpc_server "
                "--tracker HOST:PORT --key KEY --no-fork)")
    return ""
