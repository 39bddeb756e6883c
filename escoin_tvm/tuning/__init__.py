"""Tuning jobs with MetaSchedule: the log (a MetaSchedule JSON database), the jobs that search a
family's template (``job.py``, over any family's ``TuningTask``), where trials build and run,
and the cost model. Tuning a model's kernels (``relax_integration.py``: its tasks as
``escoin_tvm.compile`` generates them) is imported from there, above the compiler."""
from .job import TaskResult, format_summary, tune_tasks
from .log import TuningLog
from .tasks import TuningTask

__all__ = ["TaskResult", "TuningLog", "TuningTask", "format_summary", "tune_tasks"]
