"""The shipped tables of pre-tuned knobs (``schedules/pretuned-<arch>.json``, TVM's old
TopHub idea): the file format every kernel family's shipped records share.

A table is one JSON object per GPU architecture: a header (``arch``, ``gpu``, ``sparsity``,
``source``, ``date``) and one list of records per kernel family, under the family's section
name (``knobs.SECTION`` in the family's folder: its folder's name). A record is a dict with the family's key
fields, its knobs (``config``) and their time (``time_us``). This module reads, merges and
writes such tables without knowing any family: the family gives its section, how a record is
keyed (``key_of``) and how its knobs are parsed (``parse``). A kernel without a tuning log
takes the record of its key, if the table has one; else its family's heuristic.
"""
from __future__ import annotations

import json
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Optional

# A source checkout or editable install reads the repository's schedules/; a wheel install reads
# the copy setup.py puts under <prefix>/share/escoin-tvm/schedules.
SCHEDULES_DIRS = (Path(__file__).resolve().parents[2] / "schedules",
                  Path(sys.prefix) / "share" / "escoin-tvm" / "schedules")
HEADER_FIELDS = ("arch", "gpu", "sparsity", "source", "date")

KeyOf = Callable[[dict], tuple]


def table_path(arch: str) -> Optional[Path]:
    """The table file of ``arch`` (sm_90a reads sm_90's), or None."""
    name = f"pretuned-{arch.rstrip('a')}.json"
    return next((d / name for d in SCHEDULES_DIRS if (d / name).is_file()), None)


@lru_cache(maxsize=None)
def _table(arch: str) -> dict:
    """The parsed table of ``arch`` ({} without one, or with a warning when it is not JSON)."""
    path = table_path(arch)
    if path is None:
        if arch.startswith("sm_"):  # said once per architecture (the cache)
            shipped = sorted(p.stem.replace("pretuned-", "") for d in SCHEDULES_DIRS
                             for p in d.glob("pretuned-*.json"))
            warnings.warn(f"no pre-tuned knobs for {arch} (shipped: {', '.join(shipped) or 'none'}"
                          "): its GPU kernels use the untuned defaults; a tuning log "
                          "(escoin tune, then tuning_log=) gives them tuned ones")
        return {}
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict):
            raise ValueError("not a JSON object")
        return table
    except ValueError as err:
        warnings.warn(f"ignoring the corrupt pre-tuned schedule table {path}: {err}")
        return {}


@lru_cache(maxsize=None)
def section(arch: str, name: str, key_of: KeyOf, parse: Callable[[dict], object]) -> Dict:
    """{record key: parsed knobs} of section ``name`` of ``arch``'s table; a section with a
    record that does not parse is ignored as a whole, with a warning naming the file."""
    arch = arch.rstrip("a")
    try:
        return {key_of(r): parse(r) for r in _table(arch).get(name, [])}
    except (ValueError, KeyError, TypeError) as err:
        warnings.warn(f"ignoring the corrupt pre-tuned schedule table {table_path(arch)} "
                      f"({name}): {err}")
        return {}


def cache_clear() -> None:
    """Forgets the tables read so far (after a table file changed)."""
    _table.cache_clear()
    section.cache_clear()


def field(value):
    """A record field as JSON keeps it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def frozen(value):
    """A record field as a key part (lists as tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def merge(records, old_table: Optional[Path], name: str, key_of: KeyOf,
          replace: bool = False) -> list:
    """``records`` merged into section ``name`` of ``old_table`` (a schedules/ JSON file, if
    given): for a key both have, the faster one stays, or with ``replace`` the new one (for
    records that beat the table's config re-measured in the same run: times from another run,
    or another timing method, are not comparable)."""
    if old_table is None or not Path(old_table).is_file():
        return list(records)
    merged = {key_of(r): r for r in json.loads(Path(old_table).read_text()).get(name, [])}
    for r in records:
        key = key_of(r)
        if replace or key not in merged or r["time_us"] < merged[key]["time_us"]:
            merged[key] = r
    return list(merged.values())


def table_header(path: Path) -> dict:
    """The header of a table file (``write_table``'s keyword arguments), for rewriting it with
    other records."""
    table = json.loads(Path(path).read_text())
    return {k: table[k] for k in HEADER_FIELDS}


def write_table(path: Path, sections: Dict[str, list], *, arch: str, gpu: str, sparsity: float,
                source: str, date: str) -> None:
    """A table in the format ``section`` reads: ``sections`` ({name: records}) replace those
    sections of the file at ``path``, its other sections are kept; an empty section is left
    out."""
    kept = {}
    if Path(path).is_file():
        old = json.loads(Path(path).read_text())
        kept = {k: v for k, v in old.items()
                if isinstance(v, list) and k not in sections and k not in HEADER_FIELDS}
    table = {"version": 1, "arch": arch, "gpu": gpu, "sparsity": sparsity, "source": source,
             "date": date}
    table.update((name, list(records)) for name, records in {**kept, **sections}.items()
                 if records)
    Path(path).write_text(json.dumps(table, indent=1))
