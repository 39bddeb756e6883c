"""Tuning the Escoin template with MetaSchedule: design spaces, tasks, logs and jobs."""
from .job import TaskResult, format_summary, tune, tune_tasks
from .log import TuningLog
from .tasks import Task, extract_tasks

__all__ = ["Task", "TaskResult", "TuningLog", "extract_tasks", "format_summary", "tune", "tune_tasks"]
