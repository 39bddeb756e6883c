"""Tuning jobs: each Escoin kernel of a model searched by MetaSchedule's evolutionary search
with an XGBoost cost model (``cost_model.py``: one per job, pre-trained on the log's records),
records appended to a tuning log that later runs resume from.

A job tunes one task after another, each until the log holds ``trials`` records for it, so a job
that was stopped (Ctrl-C, a crash, a time limit) continues where it stopped. Measurements run on
the local device, or on the devices registered with a TVM RPC tracker under a key (one
MetaSchedule runner session per device).
"""
from __future__ import annotations

import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, TextIO

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.ir.utils import derived_object

from ..errors import EscoinError, first_line
from ..kernel import untuned_config
from ..target import TargetLike, has_gpu, is_gpu, resolve_target
from .context import tune_context
from .cost_model import job_cost_model
from .evaluator import GraphEvaluator
from .log import TuningLog, mean_seconds
from .space import decode_config, design_spaces, representable, space_generator
from .tasks import Task, extract_tasks


@dataclass
class TaskResult:
    name: str
    layers: List[str]
    trials: int  # records in the log for this task and target
    new_trials: int  # measured by this job
    best_seconds: Optional[float]
    config: Optional[dict]
    tuning_seconds: float = 0.0


@dataclass
class Progress:
    """Progress over the whole job, printed as one updating line per task."""

    out: TextIO
    total_new: int
    started: float = field(default_factory=time.time)
    measured: int = 0

    def line(self, index: int, count: int, task: Task, done: int, goal: int, best) -> None:
        elapsed = time.time() - self.started
        eta = elapsed / self.measured * (self.total_new - self.measured) if self.measured else 0
        best_text = f"{best * 1e6:9.1f} us" if best is not None else "        -   "
        bar = "#" * int(20 * done / max(goal, 1))
        self.out.write(f"\r[{index}/{count}] {task.name[:28]:28s} [{bar:20s}] {done:4d}/{goal} trials"
                       f"  best {best_text}  ETA {_clock(eta)}")
        self.out.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _progress_callback(progress: Progress, index: int, count: int, task: Task, done: int,
                       goal: int, best):
    """The measure callback that prints the progress line; its ``state`` keeps the first
    error of a failed build or run, reported if no trial of the task succeeds."""
    state = {"done": done, "best": best, "error": None}

    @derived_object
    class ShowProgress(ms.measure_callback.PyMeasureCallback):
        def apply(self, _scheduler, _task_id, _candidates, builds, results) -> None:
            for built, result in zip(builds, results):
                failure = built.error_msg or result.error_msg
                if failure and state["error"] is None:
                    state["error"] = str(failure)
                if result.error_msg is None and result.run_secs:
                    seconds = sum(float(t) for t in result.run_secs) / len(result.run_secs)
                    if state["best"] is None or seconds < state["best"]:
                        state["best"] = seconds
            if not results:
                return
            state["done"] += len(results)
            progress.measured += len(results)
            progress.line(index, count, task, state["done"], goal, state["best"])

    callback = ShowProgress()
    callback.state = state
    return callback


def build_kernel(mod, target, _params):
    """The builder's f_build: MetaSchedule's default also imports tvm.s_tir.tensor_intrin,
    which takes about a minute per worker process and is of no use to the Escoin kernels."""
    from tvm.driver import build

    return build(mod, target=target)


def export_kernel(mod) -> str:
    """The builder's f_export: a shared library, linked in the parallel builder workers (the
    default tar is linked at load time, one by one, in the runner)."""
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="escoin-trial-"), "kernel.so")
    mod.export_library(path)
    return path


def _runner(task: Task, target, rpc_tracker: Optional[str], rpc_key: Optional[str],
            number: int, repeat: int):
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
    _check_tracker(config)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                               f_alloc_argument=arguments)


def _check_tracker(config) -> None:
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


def tune(model, example_inputs, *, log, target: TargetLike = "cuda", trials: int = 64,
         sparsity_threshold: Optional[float] = None, **options) -> List[TaskResult]:
    """Tunes every Escoin kernel of ``model`` until ``log`` holds ``trials`` records for each
    (on ``target``); returns one TaskResult per task. ``compile(..., tuning_log=log)`` then
    uses the best records. ``options`` go to ``tune_tasks``."""
    target = resolve_target(target)
    tasks = extract_tasks(model, example_inputs, target, sparsity_threshold)
    if not tasks:
        raise EscoinError("the model has no convolution that runs on an Escoin kernel: nothing to tune")
    return tune_tasks(tasks, log=log, target=target, trials=trials, **options)


def tune_tasks(tasks: List[Task], *, log, target: TargetLike = "cuda", trials: int = 64,
               trials_per_iter: int = 16, rpc_tracker: Optional[str] = None,
               rpc_key: Optional[str] = None, seed: int = 0, number: int = 10, repeat: int = 3,
               out: Optional[TextIO] = sys.stdout) -> List[TaskResult]:
    """Tunes each task until the log holds ``trials`` records for it on ``target``: measured
    on this machine's device, or through the RPC tracker ``HOST:PORT`` on servers of ``rpc_key``."""
    if trials < 1 or trials_per_iter < 1:
        raise EscoinError(f"trials and trials_per_iter must be >= 1, got {trials}, {trials_per_iter}")
    target = resolve_target(target)
    tuning_log = log if isinstance(log, TuningLog) else TuningLog(log, create=True)
    done = [tuning_log.trials(task.workload, target) for task in tasks]
    work_left = min(done, default=trials) < trials
    if work_left and is_gpu(target) and rpc_tracker is None and not has_gpu():
        raise EscoinError(f"tuning for {target.kind.name} measures the trials on a GPU and this "
                          "machine has none: run the job on a GPU machine, or measure on GPU "
                          "servers through an RPC tracker (--rpc-tracker HOST:PORT --rpc-key KEY)")
    progress = Progress(out or _Null(), sum(max(0, trials - d) for d in done))
    builder = ms.builder.LocalBuilder(f_build=build_kernel, f_export=export_kernel, timeout_sec=120)
    cost_model = None
    if work_left:
        cost_model, used, kernels = job_cost_model(tuning_log, target)
        if used:
            progress.out.write(f"cost model: pre-trained on the log's {used} records of "
                               f"{kernels} kernels\n")
    results = []
    try:
        for index, (task, already) in enumerate(zip(tasks, done), 1):
            started = time.time()
            if already < trials:  # a complete task needs no runner (nor an RPC tracker check)
                runner = _runner(task, target, rpc_tracker, rpc_key, number, repeat)
                measured = already or _measure_untuned(task, tuning_log, target, builder, runner)
                if measured < trials:
                    callback = _progress_callback(progress, index, len(tasks), task, measured, trials,
                                                  tuning_log.best_seconds(task.workload, target))
                    _tune_task(task, tuning_log, target, trials - measured, trials_per_iter,
                               seed + index, callback, builder, runner, cost_model)
                    progress.out.write("\n")
                    error = callback.state["error"]
                    if error and tuning_log.best_seconds(task.workload, target) is None:
                        where = (f"on the RPC servers of key {rpc_key!r} at {rpc_tracker}"
                                 if rpc_tracker else "on this machine")
                        warnings.warn(f"task {task.name}: none of its trials built and ran "
                                      f"{where}; the first error: {_last_lines(error)}"
                                      f"{_rpc_hint(error) if rpc_tracker else ''}")
            results.append(_result(tuning_log, task, target, already, time.time() - started))
    except KeyboardInterrupt:
        progress.out.write(f"\nstopped: the log {tuning_log.path} is valid; run the job again "
                           "to resume\n")
        raise
    return results


def _last_lines(error: str, count: int = 6) -> str:
    """The end of a MetaSchedule error message (a traceback: the cause is at its end)."""
    lines = [line for line in error.strip().splitlines() if line.strip(" ^~")]  # no markers
    return "\n".join(lines[-count:])


def _rpc_hint(error: str) -> str:
    # TVM 0.27's rpc_server forks each session from a process that has initialised CUDA
    if "cudaErrorInitializationError" in error:
        return ("\n(a CUDA RPC server must run with --no-fork: python -m tvm.exec.rpc_server "
                "--tracker HOST:PORT --key KEY --no-fork)")
    return ""


def _measure_untuned(task: Task, tuning_log: TuningLog, target, builder, runner) -> int:
    """Measures the knobs an untuned compile would use (pre-tuned or heuristic) as the task's
    first trial: the search's starting point (evolutionary search mutates the best records it
    has), and the record to beat. 32 trials from random points alone lost to the heuristic on
    AlexNet's layers. Returns the records now in the log for the task (0 or 1)."""
    config = untuned_config(task.spec, target)
    if not representable(task.spec, target, config):
        return 0
    sch = design_spaces(task.spec, target, fixed=config)(s_tir.Schedule(task.workload))[0]
    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])
    measured = built if built.error_msg is not None else runner.run([ms.runner.RunnerInput(
        built.artifact_path, "cuda" if is_gpu(target) else "cpu", args_info)])[0].result()
    if measured.error_msg is not None:
        warnings.warn(f"task {task.name}: the untuned knobs {config} failed to build or run, "
                      f"the search starts from random points: {_last_lines(measured.error_msg)}"
                      f"{_rpc_hint(measured.error_msg)}")
        return 0
    database = tuning_log.database
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, database.commit_workload(task.workload), measured.run_secs, target, args_info))
    return tuning_log.trials(task.workload, target)


def _tune_task(task: Task, tuning_log: TuningLog, target, trials: int, per_iter: int, seed: int,
               callback, builder, runner, cost_model) -> None:
    ms.tune_tasks(tasks=[_context(task, target, seed)], task_weights=[1.0], work_dir=str(tuning_log.path),
                  max_trials_global=trials, num_trials_per_iter=min(per_iter, trials),
                  builder=builder, runner=runner,
                  database=tuning_log.database, cost_model=cost_model,
                  measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback],
                  task_scheduler="round-robin")


def _context(task: Task, target, seed: int) -> ms.TuneContext:
    return tune_context(
        task.workload, target, space_generator=space_generator(task.spec, target, seed),
        search_strategy=ms.search_strategy.EvolutionarySearch(
            population_size=128, init_min_unmeasured=32, genetic_num_iters=3),
        task_name=task.name, rand_state=seed)


def _result(tuning_log: TuningLog, task: Task, target, before: int, seconds: float) -> TaskResult:
    records = tuning_log.records(task.workload, target)
    trials = tuning_log.trials(task.workload, target)
    config = dict(vars(decode_config(records[0].trace, target))) if records else None
    return TaskResult(task.name, task.layers, trials, trials - before,
                      mean_seconds(records[0]) if records else None,
                      config, seconds)


def format_summary(results: List[TaskResult]) -> str:
    header = ["task", "layers", "trials", "new", "best (us)", "tuning (s)", "knobs"]
    rows = [[r.name, str(len(r.layers)), str(r.trials), str(r.new_trials),
             f"{r.best_seconds * 1e6:.1f}" if r.best_seconds is not None else "-",
             f"{r.tuning_seconds:.0f}",
             " ".join(f"{k}={int(v)}" for k, v in (r.config or {}).items())] for r in results]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _Null:
    def write(self, _text):
        pass

    def flush(self):
        pass
