"""Tuning logs: a MetaSchedule JSON database (a directory with ``database_workload.json`` and
``database_tuning_record.json``, one JSON value per line, appended as trials finish).

The files are checked before MetaSchedule reads them, because its loader stops the process on a bad
line (a blank one included, as editors and ``cat a b > c`` leave them). Blank lines and a truncated
last line (a job killed while writing) are left out with a warning: a job rewrites its log without
them, a compile reads a cleaned copy and leaves the file as it is. Any other damage is an error
naming the file and line. Records are looked up per workload and per target (``best``); a log
with no record for the compile target is reported, never silently ignored.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import tvm
from tvm.s_tir import meta_schedule as ms

from ..errors import EscoinError, first_line

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
FAILED = 1e9  # MetaSchedule records a failed build or run with run_secs of 1e10


_BEFORE_READING: List[Callable[[], None]] = []


def before_reading(prepare: Callable[[], None]) -> None:
    """Has ``prepare()`` run before any log is read. MetaSchedule replays each record's trace
    on its workload as it reads a log, so whatever a family's traces name (the tensor-core
    family's own tensor intrinsics) must exist by then; the family registers it here, and its
    cost is paid only where a log is read."""
    if prepare not in _BEFORE_READING:
        _BEFORE_READING.append(prepare)


def target_key(target) -> Tuple[str, str]:
    """What a record must share with the compile target: the kind, and the GPU architecture
    (sm_90a and sm_90 are one) or the CPU model."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    kind = str(target.kind.name)
    if kind == "cuda":
        return kind, str(target.attrs.get("arch", "")).rstrip("a")
    return kind, str(target.attrs.get("mcpu", ""))


def describe(key: Tuple[str, str]) -> str:
    return key[0] + (f" {key[1]}" if key[1] else "")


def _checked_lines(path: Path, check) -> Tuple[List[str], List[str]]:
    """The rows of a JSON-lines table, each checked, and what had to be left out to read it:
    blank lines (MetaSchedule's reader crashes the process on them) and a truncated last line
    (a job killed while writing). Any other damage is an EscoinError naming file and line."""
    if not path.exists():
        return [], []
    if not path.is_file():
        raise EscoinError(f"tuning log {path.parent}: {path.name} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise EscoinError(f"tuning log {path} cannot be read ({err.strerror})") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise EscoinError(f"tuning log {path} is not a text file (corrupt log)") from None
    lines = text.split("\n")
    rows, blank, dropped = [], 0, []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            blank += number < len(lines)  # the newline that ends the file makes no blank line
            continue
        try:
            check(json.loads(line))
        except (ValueError, TypeError, IndexError, KeyError) as err:
            if number == len(lines) and not text.endswith("\n"):
                dropped.append(f"dropping the truncated last line {number} (a tuning job was "
                               "stopped while writing it)")
                break
            raise EscoinError(f"tuning log {path}, line {number} is corrupt ({err}); delete the "
                              "line or the log") from None
        rows.append(line)
    if blank:
        dropped.append(f"skipping {blank} blank line(s)")
    return rows, dropped


class TuningLog:
    """A tuning log directory. ``TuningLog(path)`` checks an existing log;
    ``TuningLog(path, create=True)`` also starts an empty one."""

    def __init__(self, path, create: bool = False):
        self.path = Path(path)
        if self.path.is_file():
            raise EscoinError(f"tuning log {self.path} is a file; a tuning log is a directory "
                              f"holding {WORKLOADS} and {RECORDS}")
        if not self.path.is_dir():
            if not create:
                raise EscoinError(f"no tuning log at {self.path}")
            self.path.mkdir(parents=True)
        elif not create and not (self.path / RECORDS).exists():
            raise EscoinError(f"{self.path} is not a tuning log (no {RECORDS} in it)")
        workloads, dropped = _checked_lines(self.path / WORKLOADS, self._check_workload)

        def check_record(row):
            index, (trace, run_secs, target, _args) = row
            if not isinstance(index, int) or not 0 <= index < len(workloads):
                raise ValueError(f"workload index {index} is not in {WORKLOADS}")
            if not isinstance(trace, list) or not isinstance(target, dict):
                raise ValueError("not a MetaSchedule tuning record")
            if run_secs is not None and not all(isinstance(t, (int, float)) for t in run_secs):
                raise ValueError("run times are not numbers")

        records, dropped_records = _checked_lines(self.path / RECORDS, check_record)
        self.size = len(records)
        repairs = {WORKLOADS: (workloads, dropped), RECORDS: (records, dropped_records)}
        readable = self._readable(create, {name: rows for name, (rows, notes) in repairs.items()
                                           if notes})
        for name, (_rows, notes) in repairs.items():
            for note in notes:
                warnings.warn(f"tuning log {self.path / name}: {note}; "
                              + ("the file was rewritten without it" if create else
                                 "read from a cleaned copy, the file is unchanged"))
        for prepare in _BEFORE_READING:
            prepare()
        try:
            self.database = ms.database.JSONDatabase(work_dir=str(readable), allow_missing=True)
        except Exception as err:  # TVM's own reading of the files
            raise EscoinError(f"tuning log {self.path} could not be read by MetaSchedule: "
                              f"{first_line(err)}") from None

    def _readable(self, in_place: bool, cleaned: dict) -> Path:
        """The directory MetaSchedule reads: the log itself, with ``cleaned`` (file name -> its
        valid rows) written back when ``in_place`` (a job appends to the log), else a private
        copy of the log with those files cleaned (reading never changes the user's files)."""
        if not cleaned:
            return self.path
        folder = self.path
        if not in_place:
            folder = Path(tempfile.mkdtemp(prefix="escoin-log-"))
            weakref.finalize(self, shutil.rmtree, str(folder), ignore_errors=True)
            for name in (WORKLOADS, RECORDS):
                if (self.path / name).is_file():
                    shutil.copyfile(self.path / name, folder / name)
        for name, rows in cleaned.items():
            (folder / name).write_text("".join(row + "\n" for row in rows))
        return folder

    @staticmethod
    def _check_workload(row):
        shash, mod = row
        if not isinstance(shash, str) or not isinstance(mod, str):
            raise ValueError("not a MetaSchedule workload entry")

    # ---- queries ----
    def targets(self) -> List[Tuple[str, str]]:
        return sorted({target_key(r.target) for r in self.database.get_all_tuning_records()})

    def _entry(self, mod: tvm.IRModule):
        """The log's Workload for ``mod``, or None (commit_workload of a known workload returns
        it and writes nothing)."""
        return self.database.commit_workload(mod) if self.database.has_workload(mod) else None

    def records(self, mod: tvm.IRModule, target) -> list:
        """This workload's successful records for the target, fastest first."""
        entry = self._entry(mod)
        if entry is None:
            return []
        key = target_key(target)
        records = [r for r in self.database.get_top_k(entry, 1 << 30)
                   if target_key(r.target) == key and r.run_secs
                   and max(float(t) for t in r.run_secs) < FAILED]
        return sorted(records, key=lambda r: mean_seconds(r))

    def best_seconds(self, mod: tvm.IRModule, target) -> Optional[float]:
        records = self.records(mod, target)
        return mean_seconds(records[0]) if records else None

    def all_records(self, target) -> list:
        """Every record for the target, failed ones included (``get_top_k`` leaves them out)."""
        key = target_key(target)
        return [r for r in self.database.get_all_tuning_records() if target_key(r.target) == key]

    def trials(self, mod: tvm.IRModule, target) -> int:
        """Trials already recorded for this workload and target (failed ones included)."""
        entry = self._entry(mod)
        if entry is None:
            return 0
        return sum(r.workload.same_as(entry) for r in self.all_records(target))

    def best(self, workload: tvm.IRModule, target, decode):
        """(config, seconds) of the workload's best record for ``target``, its trace decoded by
        ``decode(trace)`` (the family's, as its task's ``decode``), or None: what MetaSchedule's
        ``Database.query`` answers, with the knobs read back. A family builds the config's
        kernel on the workload's own work (``tuned=True``)."""
        records = self.records(workload, target)
        if not records:
            return None
        try:
            config = decode(records[0].trace)
        except ValueError as err:
            raise EscoinError(f"tuning log {self.path}: {err}") from None
        return config, mean_seconds(records[0])

    def warn_if_foreign(self, target) -> bool:
        """Warns (naming the file) when the log holds records, none of them for ``target``."""
        targets = self.targets()
        if targets and target_key(target) not in targets:
            warnings.warn(f"tuning log {self.path} has no records for target "
                          f"{describe(target_key(target))} (it has "
                          f"{', '.join(describe(t) for t in targets)}): its kernels use the "
                          "default schedules")
            return True
        return False


def mean_seconds(record) -> float:
    return sum(float(t) for t in record.run_secs) / len(record.run_secs)
