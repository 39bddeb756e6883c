"""Tuning jobs: each Escoin kernel of a model searched by MetaSchedule's evolutionary search
with an XGBoost cost model (``cost_model.py``: one per job, pre-trained on the log's records),
records appended to a tuning log that later runs resume from.

A job tunes one task after another, each until the log holds ``trials`` records for it, so a job
that was stopped (Ctrl-C, a crash, a time limit) continues where it stopped. Measurements run on
the local device, or on the devices registered with a TVM RPC tracker under a key (one
MetaSchedule runner session per device).
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import List, Optional, TextIO

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from ..errors import EscoinError
from ..support.target import TargetLike, has_gpu, is_gpu, resolve_target
from .context import tune_context
from .cost_model import job_cost_model
from .log import TuningLog, mean_seconds
from .progress import task_progress
from .runners import builder as make_builder, rpc_hint, runner as make_runner
from .tasks import TuningTask as Task


@dataclass
class TaskResult:
    name: str
    layers: List[str]
    trials: int  # records in the log for this task and target
    new_trials: int  # measured by this job
    best_seconds: Optional[float]
    config: Optional[dict]
    tuning_seconds: float = 0.0


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
    builder, cost_model = make_builder(), None
    if work_left:
        cost_model, used, kernels = job_cost_model(tuning_log, target)
        if used and out is not None:
            out.write(f"cost model: pre-trained on the log's {used} records of {kernels} kernels\n")
    results = []
    try:
        for index, (task, already) in enumerate(zip(tasks, done), 1):
            started = time.time()
            if already < trials:  # a complete task needs no runner (nor an RPC tracker check)
                runner = make_runner(task, target, rpc_tracker, rpc_key, number, repeat)
                measured = already or _measure_untuned(task, tuning_log, target, builder, runner)
                if measured < trials:
                    callback = task_progress(out, index, len(tasks), task.name, measured, trials,
                                             tuning_log.best_seconds(task.workload, target))
                    try:
                        _tune_task(task, tuning_log, target, trials - measured, trials_per_iter,
                                   seed + index, callback, builder, runner, cost_model)
                    finally:
                        callback.close()
                    _warn_if_all_failed(task, tuning_log, target, callback.state["error"],
                                        rpc_tracker, rpc_key)
            results.append(_result(tuning_log, task, target, already, time.time() - started))
    except KeyboardInterrupt:
        if out is not None:
            out.write(f"\nstopped: the log {tuning_log.path} is valid; run the job again to "
                      "resume\n")
        raise
    return results


def _warn_if_all_failed(task: Task, tuning_log: TuningLog, target, error: Optional[str],
                        rpc_tracker: Optional[str], rpc_key: Optional[str]) -> None:
    """A task none of whose trials built and ran gets a warning with the first error."""
    if error and tuning_log.best_seconds(task.workload, target) is None:
        where = (f"on the RPC servers of key {rpc_key!r} at {rpc_tracker}"
                 if rpc_tracker else "on this machine")
        warnings.warn(f"task {task.name}: none of its trials built and ran {where}; the first "
                      f"error: {_last_lines(error)}{rpc_hint(error) if rpc_tracker else ''}")


def _last_lines(error: str, count: int = 6) -> str:
    """The end of a MetaSchedule error message (a traceback: the cause is at its end)."""
    lines = [line for line in error.strip().splitlines() if line.strip(" ^~")]  # no markers
    return "\n".join(lines[-count:])


def _measure_untuned(task: Task, tuning_log: TuningLog, target, builder, runner) -> int:
    """Measures the knobs an untuned compile would use (pre-tuned or heuristic) as the task's
    first trial: the search's starting point (evolutionary search mutates the best records it
    has), and the record to beat. 32 trials from random points alone lost to the heuristic on
    AlexNet's layers. Returns the records now in the log for the task (0 or 1)."""
    config = task.untuned_config()
    if not task.representable(config):
        return 0
    sch = task.design_spaces(fixed=config)(
        s_tir.Schedule(task.workload))[0]
    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])
    measured = built if built.error_msg is not None else runner.run([ms.runner.RunnerInput(
        built.artifact_path, "cuda" if is_gpu(target) else "cpu", args_info)])[0].result()
    if measured.error_msg is not None:
        warnings.warn(f"task {task.name}: the untuned knobs {config} failed to build or run, "
                      f"the search starts from random points: {_last_lines(measured.error_msg)}"
                      f"{rpc_hint(measured.error_msg)}")
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
        task.workload, target, space_generator=task.space_generator(seed),
        search_strategy=ms.search_strategy.EvolutionarySearch(
            population_size=128, init_min_unmeasured=32, genetic_num_iters=3),
        task_name=task.name, rand_state=seed)


def _result(tuning_log: TuningLog, task: Task, target, before: int, seconds: float) -> TaskResult:
    records = tuning_log.records(task.workload, target)
    trials = tuning_log.trials(task.workload, target)
    config = dict(vars(task.decode(records[0].trace))) if records else None
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

