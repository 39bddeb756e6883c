"""The job's XGBoost cost model: one for all its tasks, pre-trained on the log's records.

MetaSchedule's XGBModel ranks candidates at random until it holds ``num_warmup_samples`` (100)
measurements, and ``ms.tune_tasks(cost_model="xgb")`` makes a fresh model per call: with a few
dozen trials per kernel, the search never used its cost model. Here one model serves every task
of a job (its training data is grouped per workload and normalised by each group's best time, so
kernels of different shapes share it), it starts from the records the log already holds for the
target (AutoTVM's transfer learning: every task is the same template), and it ranks once it has
``WARMUP_SAMPLES`` measurements.
"""
from __future__ import annotations

import warnings
from collections import defaultdict

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from .context import tune_context
from .log import TuningLog

WARMUP_SAMPLES = 16  # one search round: an XGBoost ranking of 16 points beats a random one


def new_model(warmup: int = WARMUP_SAMPLES) -> ms.cost_model.XGBModel:
    return ms.cost_model.XGBModel(num_warmup_samples=warmup,
                                  num_tuning_cores=ms.utils.cpu_count(logical=False))


def logged_samples(tuning_log: TuningLog, target):
    """{workload: (measure candidates, runner results)} of the log's records for the target,
    and how many records were skipped because their trace no longer replays."""
    by_workload = defaultdict(list)
    for record in tuning_log.all_records(target):
        if record.run_secs:
            by_workload[record.workload].append(record)
    samples, skipped = {}, 0
    for workload, records in by_workload.items():
        candidates, results = [], []
        for record in records:
            sch = s_tir.Schedule(workload.mod)
            try:
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # a trace of an older template: nothing to learn from it
                skipped += 1
                continue
            candidates.append(ms.MeasureCandidate(sch, list(record.args_info)))
            results.append(ms.runner.RunnerResult([float(t) for t in record.run_secs], None))
        if candidates:
            samples[workload] = (candidates, results)
    return samples, skipped


def job_cost_model(tuning_log: TuningLog, target):
    """(model, records it was pre-trained on, kernels they came from)."""
    model = new_model()
    samples, skipped = logged_samples(tuning_log, target)
    for workload, (candidates, results) in samples.items():
        # the feature extractor needs the workload's context (its target)
        model.update(tune_context(workload.mod, target), candidates, results)
    if skipped:
        warnings.warn(f"tuning log {tuning_log.path}: {skipped} records no longer replay in this "
                      "template; the cost model skips them")
    return model, sum(len(c) for c, _ in samples.values()), len(samples)
