"""What a tuning job shows while it runs: a progress bar per task (tqdm), its best time so far,
and, kept for the job's warning, the first error of a trial that failed."""
from __future__ import annotations

from typing import Optional, TextIO

from tqdm import tqdm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms


def _best_text(seconds: Optional[float]) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds is not None else "-"


def task_progress(out: Optional[TextIO], index: int, count: int, name: str, done: int,
                  goal: int, best: Optional[float]):
    """MetaSchedule's measure callback for one task: it advances the task's bar (written to
    ``out``; none when ``out`` is None) as trials finish. ``callback.state`` holds the trials
    done, the best time and the first error; ``callback.close()`` ends the bar."""
    bar = tqdm(total=goal, initial=done, desc=f"[{index}/{count}] {name[:28]}", unit="trial",
               file=out, disable=out is None, leave=True, dynamic_ncols=False, ncols=100)
    bar.set_postfix_str(f"best {_best_text(best)}")
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
            bar.set_postfix_str(f"best {_best_text(state['best'])}", refresh=False)
            bar.update(len(results))

    callback = ShowProgress()
    callback.state = state
    callback.close = bar.close
    return callback
